"""Questions asked of trained runs: paired comparisons, gradient signal-to-noise, evaluation sharded across
processes."""
