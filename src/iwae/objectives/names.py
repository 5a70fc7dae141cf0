"""The names of the bounds and the estimators, and the parameters each bound declares, importable without torch:
the command line's choices and options, and the run config's fields.

:mod:`iwae.objectives.registry` declares each bound and estimator (``BOUNDS``, ``ESTIMATORS_BY_NAME``) in this
order; a test checks that the two agree. A bound's parameter (MIWAE's m, CIWAE's beta, the Rényi bound's alpha) is
declared once, here, in :data:`PARAMS` with its default, range and help, and named in :data:`BOUND_PARAMS`: from
there it becomes a field of :class:`iwae.runs.config.TrainConfig`, an option of ``iwae train``, a keyword of
:class:`iwae.objectives.Objective`, ``iwae.objective`` and ``iwae.make_train_step``, and is checked once.
"""

from __future__ import annotations

import argparse
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["KINDS", "ESTIMATORS", "Param", "PARAMS", "BOUND_PARAMS", "declare_params", "as_count"]

T = TypeVar("T", bound=type)

KINDS: tuple[str, ...] = ("vae", "iwae", "miwae", "ciwae", "piwae", "vr")
ESTIMATORS: tuple[str, ...] = ("reparam", "sample-one", "stl", "dreg", "rws", "rws-dreg")


def as_count(value: object) -> int | None:
    """``value`` as a positive int (an int-like NumPy or 0-d tensor value too), or None for anything else: a bool,
    a float, zero or less."""
    if isinstance(value, bool):
        return None
    try:
        count = operator.index(value)
    except TypeError:
        return None
    return count if count >= 1 else None


@dataclass(frozen=True)
class Param:
    """A bound's parameter: its default, whether it counts (an integer), and its range ``low <= v < high`` (or
    ``<= high`` with ``high_closed``)."""

    default: float
    help: str
    integer: bool = False
    low: float = -math.inf
    high: float = math.inf
    high_closed: bool = True

    def problem(self, name: str, value: object) -> str | None:
        """What is wrong with ``value`` for this parameter, or None."""
        what = "an integer" if self.integer else "a number"
        if self.high == math.inf:
            where = f"{what} >= {self.low:g}"
        else:
            where = f"{what} in [{self.low:g}, {self.high:g}{']' if self.high_closed else ')'}"
        number = isinstance(value, int if self.integer else (int, float)) and not isinstance(value, bool)
        below = number and (value <= self.high if self.high_closed else value < self.high)
        if not (number and math.isfinite(value) and value >= self.low and below):
            return f"{name} must be {where}, got {value!r}"
        return None

    def parser(self, name: str) -> Callable[[str], int | float]:
        """The command line's type for this parameter: the text as an int or a float, checked by :meth:`problem`
        (an ``argparse.ArgumentTypeError`` naming what is wrong, so that the option is named with it)."""

        def parse(text: str) -> int | float:
            try:
                value = int(text) if self.integer else float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {'an integer' if self.integer else 'a number'}, got "
                                                 f"{text!r}") from None  # fmt: skip
            if (problem := self.problem(name, value)) is not None:
                raise argparse.ArgumentTypeError(problem)
            return value

        return parse


PARAMS: dict[str, Param] = {
    "m": Param(1, "outer samples for miwae/piwae", integer=True, low=1),
    "beta": Param(0.5, "ELBO weight for ciwae", low=0.0, high=1.0),
    "alpha": Param(
        0.5,
        "alpha of the Rényi bound vr: 0 is L_k (iwae), towards 1 the k-sample ELBO",
        low=0.0,
        high=1.0,
        high_closed=False,
    ),  # fmt: skip
}

# The parameters each bound reads; the others are not part of its objective.
BOUND_PARAMS: dict[str, tuple[str, ...]] = {
    "vae": (), "iwae": (), "miwae": ("m",), "ciwae": ("beta",), "piwae": ("m",), "vr": ("alpha",),
}  # fmt: skip


def declare_params(field: Callable[[str, Param], Any]) -> Callable[[T], T]:
    """A class decorator, applied before ``@dataclass``, that adds one attribute per :data:`PARAMS` entry, in its
    order, annotated int or float, with ``field(name, param)`` as its default: how :class:`iwae.runs.config.TrainConfig`
    and :class:`iwae.objectives.Objective` get every bound's parameters from this one declaration."""

    def add(cls: T) -> T:
        for name, param in PARAMS.items():
            cls.__annotations__[name] = "int" if param.integer else "float"
            setattr(cls, name, field(name, param))
        return cls

    return add
