"""A plan run trained with several seeds (`RUN/seed-<S>/`, `iwae reproduce --seeds`) as one cell of the report.

A cell is a run's ``metrics.json`` as it was, or, for the seed folders, the seeds' metrics combined: every number
their mean (a value all seeds share kept as it is; the training seconds by machine, machine by machine; the
machines that evaluated them, each named once), so that a reader of one run's metrics reads a cell alike, and
beside it ``seeds``, ``test_nll_seeds`` and ``train_nll_seeds`` (one value per seed, in seed order),
``active_units_seeds`` and ``activity_seeds`` (each unit's A_u: a unit of one seed is no unit of another, so these
are not averaged), and with two seeds or more ``test_nll_sd`` and ``train_nll_sd``, the sample standard
deviations (ddof=1). Pure functions: no torch, no files.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = [
    "SEEDS_NOTE",
    "combine",
    "fmt_active",
    "fmt_nll",
    "fmt_value",
    "mean_curve",
    "n_seeds",
    "restrict",
    "unit_totals",
    "units_text",
]

SEEDS_NOTE = (
    "Where a run was trained with several seeds, ours is the mean over its n seeds ± their sample standard "
    "deviation (active units: the mean per layer)."
)
SPREAD_KEYS = ("test_nll", "train_nll")  # the numbers a cell keeps per seed, with their standard deviation
PER_SEED_KEYS = ("active_units", "activity")  # kept per seed (``<key>_seeds``) beside or instead of a mean


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mean_value(values: list) -> object:
    """The seeds' common value, else the mean of numbers (per position for lists, per key for dicts of numbers, a
    key a seed lacks counting 0 there), else the distinct strings joined, else the first seed's."""
    if all(v == values[0] for v in values):
        return values[0]
    if all(_is_number(v) for v in values):
        return statistics.fmean(values)
    if all(isinstance(v, list) and len(v) == len(values[0]) and all(map(_is_number, v)) for v in values):
        return [statistics.fmean(column) for column in zip(*values)]
    if all(isinstance(v, dict) and all(map(_is_number, v.values())) for v in values):
        keys = dict.fromkeys(key for v in values for key in v)
        return {key: statistics.fmean(v.get(key, 0.0) for v in values) for key in keys}
    if all(isinstance(v, str) for v in values):
        return "; ".join(dict.fromkeys(values))
    return values[0]


def combine(metrics: Sequence[dict], seeds: Sequence[int]) -> dict:
    """One cell from the ``metrics.json`` of its evaluated seeds (in the order of ``seeds``)."""
    keys = list(dict.fromkeys(key for m in metrics for key in m))
    out = {key: _mean_value([m[key] for m in metrics if key in m]) for key in keys}
    out["seeds"] = list(seeds)
    for key in SPREAD_KEYS:
        values = [m[key] for m in metrics if key in m]
        if values:
            out[f"{key}_seeds"] = values
            if len(values) > 1:
                out[f"{key}_sd"] = statistics.stdev(values)
    for key in PER_SEED_KEYS:
        if all(key in m for m in metrics):
            out[f"{key}_seeds"] = [m[key] for m in metrics]
    out.pop("activity", None)  # per unit: kept per seed only
    return out


def n_seeds(cell: dict) -> int:
    """How many evaluated seeds a cell holds (1 for a plain run folder)."""
    return len(cell.get("seeds", [None]))


def unit_totals(cell: dict) -> list[int]:
    """The total number of active units of each seed of a cell."""
    return [sum(units) for units in cell.get("active_units_seeds", [cell["active_units"]])]


def fmt_value(cell: dict, key: str = "test_nll", with_n: bool = True) -> str:
    """``87.76``, or with several seeds ``87.76 ± 0.12 (n=3)`` (mean ± sample standard deviation)."""
    text = f"{cell[key]:.2f}"
    if f"{key}_sd" not in cell:
        return text
    return f"{text} ± {cell[f'{key}_sd']:.2f}" + (f" (n={len(cell[f'{key}_seeds'])})" if with_n else "")


def fmt_nll(cell: dict | None, paper: float | None) -> str:
    """A table's NLL cell: ours (paper, ours minus paper), "–" before the run is evaluated."""
    if cell is None or cell.get("test_nll") is None:
        return "–"
    if paper is None:
        return fmt_value(cell)
    return f"{fmt_value(cell)} ({paper:.2f}, {cell['test_nll'] - paper:+.2f})"


def units_text(cell: dict) -> str:
    """Active units per layer, ``17+5``; with several seeds their means, to one decimal where not whole
    (``17.3+5``)."""
    return "+".join(_count(v) for v in cell["active_units"])


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def fmt_active(cell: dict | None, paper: list[int] | None) -> str:
    """A table's active-units cell: ours (paper)."""
    if cell is None or cell.get("active_units") is None:
        return "–"
    text = units_text(cell)
    return f"{text} ({'+'.join(map(str, paper))})" if paper else text


def mean_curve(curves: Sequence[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """The seeds' learning curves (passes, NLL) averaged at the passes they all reached; one curve as it is."""
    curves = [c for c in curves if c]
    if len(curves) <= 1:
        return list(curves[0]) if curves else []
    by_pass = [dict(c) for c in curves]
    common = [p for p in dict.fromkeys(p for p, _ in curves[0]) if all(p in d for d in by_pass)]
    return [(p, statistics.fmean(d[p] for d in by_pass)) for p in common]


def restrict(cell: dict, seeds: Sequence[int]) -> dict:
    """A seeded cell on some of its seeds only: its per-seed values, means and standard deviations recomputed."""
    idx = [cell["seeds"].index(seed) for seed in seeds]
    out = {**cell, "seeds": list(seeds)}
    for key in SPREAD_KEYS:
        out.pop(f"{key}_sd", None)
        if f"{key}_seeds" in cell:
            values = [cell[f"{key}_seeds"][i] for i in idx]
            out[f"{key}_seeds"], out[key] = values, statistics.fmean(values)
            if len(values) > 1:
                out[f"{key}_sd"] = statistics.stdev(values)
    if "active_units_seeds" in cell:
        units = [cell["active_units_seeds"][i] for i in idx]
        out["active_units_seeds"] = units
        out["active_units"] = units[0] if len(units) == 1 else [statistics.fmean(col) for col in zip(*units)]
    return out
