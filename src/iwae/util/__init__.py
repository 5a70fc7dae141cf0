"""Foundations every layer may use: atomic file writes, the CPU's subnormal-float setting, the random streams, a
model's modes, the import of code of one's own, the machine's description, the nearest name to a mistyped one."""
