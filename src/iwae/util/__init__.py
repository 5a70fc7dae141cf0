"""Foundations every layer may use: atomic file writes, the CPU's subnormal-float setting, the random streams, the
machine's description."""
