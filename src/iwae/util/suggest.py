"""The nearest of the names one meant, for the "did you mean" of an error (a mistyped choice, option or key)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["nearest"]


def nearest(text: str, names: Iterable[str], cutoff: float = 0.5) -> str | None:
    """The name of ``names`` most like ``text`` (difflib's ratio at least ``cutoff``), or None."""
    found = difflib.get_close_matches(text, [str(n) for n in names], n=1, cutoff=cutoff)
    return found[0] if found else None
