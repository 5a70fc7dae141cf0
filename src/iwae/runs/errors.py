"""The error of a run folder, shared by the modules that make, read and continue runs (one line on the command line)."""

from __future__ import annotations

__all__ = ["RunError"]


class RunError(RuntimeError):
    """A run folder that cannot be created, read or continued."""
