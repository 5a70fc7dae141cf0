"""A training run: its config, its folder and checkpoint, the train step and loop, its evaluation, loading and
sharing."""
