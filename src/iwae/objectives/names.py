"""The names of the bounds and the estimators, importable without torch: the command line's choices.

:mod:`iwae.objectives.registry` declares each of them (``BOUNDS``, ``ESTIMATORS_BY_NAME``) in this order; a test
checks that the two agree.
"""

__all__ = ["KINDS", "ESTIMATORS"]

KINDS: tuple[str, ...] = ("vae", "iwae", "miwae", "ciwae", "piwae")
ESTIMATORS: tuple[str, ...] = ("reparam", "sample-one", "stl", "dreg")
