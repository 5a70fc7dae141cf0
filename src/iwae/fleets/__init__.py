"""Fleets: many runs of one architecture trained by one step, with per-run Adam rows and two-phase checkpoints."""
