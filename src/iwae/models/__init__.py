"""The model and its maths: the IWAE's networks and log-weights, the conditionals, pruning, the fused CPU kernels,
and the protocol a model of your own follows."""
