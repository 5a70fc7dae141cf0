"""The estimators experiment's table: each objective's test NLL over seeds, and its paired difference from IWAE.

Runs of one seed are scored on the same test images with the same importance-sample stream (their evaluation
streams depend on the seed alone), so their per-image L_k (each run's ``test_ll.json``) pair exactly. For a run X
and the reference R (IWAE, Eq. 14): per seed s, d_s = NLL_X - NLL_R = mean over images of (L_R - L_X), with the
standard error of that mean over images (evaluation noise); over the seeds, the mean of d_s and its standard error
sd(d_s) / sqrt(n), which also holds the spread between trainings. A difference is read as one when it is at least
twice its standard error over three seeds or more; with fewer it is "undecided".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from itertools import combinations
from pathlib import Path
from typing import Any

from iwae.analysis.compare import paired_records

__all__ = ["REFERENCE", "MIN_SEEDS", "paired_over_seeds", "reading", "estimators_section"]

REFERENCE = "mnist-l1-iwae-k5"  # the run every other is compared with: the IWAE bound, reparameterised (Eq. 14)
MIN_SEEDS = 3  # a difference is read from 3 seeds or more (seed-to-seed spread measured), else undecided


def paired_over_seeds(ref: dict[int, dict], other: dict[int, dict]) -> dict[str, Any] | None:
    """The paired difference NLL(other) - NLL(ref) per seed both have (records by seed), and over those seeds:
    their mean and its standard error (sd / sqrt(n), None with one seed). None when no seed is shared."""
    seeds = sorted(set(ref) & set(other))
    if not seeds:
        return None
    per_seed = [paired_records(other[s], ref[s]) for s in seeds]  # NLL(other) - NLL(ref)
    means = [p["mean"] for p in per_seed]
    return {
        "seeds": seeds, "per_seed": per_seed, "mean": statistics.fmean(means),
        "sem": statistics.stdev(means) / math.sqrt(len(means)) if len(means) > 1 else None,
    }  # fmt: skip


def reading(diff: dict[str, Any]) -> str:
    """ "lower"/"higher" NLL than the reference where the mean is at least two standard errors from 0 over
    :data:`MIN_SEEDS` seeds or more; else "within noise", or "undecided" with too few seeds."""
    if len(diff["seeds"]) < MIN_SEEDS or diff["sem"] is None:
        return f"undecided: {len(diff['seeds'])} seed(s), fewer than {MIN_SEEDS}"
    if abs(diff["mean"]) < 2 * diff["sem"]:
        return "within noise (< 2 s.e.)"
    return "lower NLL (better)" if diff["mean"] < 0 else "higher NLL (worse)"


def _label(config: dict) -> str:
    bound = f"VR α={config['alpha']:g}" if config["bound"] == "vr" else config["bound"].upper()
    return f"{bound}, {config['estimator']}"


def estimators_section(
    root: Path,
    names: list[str],
    read_cell: Callable[[Path], dict | None],
    records: Callable[[Path], dict[int, dict]],
    configs: Callable[[Path], dict | None],
) -> tuple[list[str], dict[str, Any]]:
    """Markdown lines and the results.json entry of the estimators experiment for the plan runs ``names`` under
    ``root``: ``read_cell`` gives a run's (seed-combined) metrics, ``records`` its per-image records by seed,
    ``configs`` its settings (objective, estimator, alpha)."""
    cells = {n: read_cell(root / n) for n in names}
    recs = {n: records(root / n) for n in names}
    done = [n for n in names if cells[n] is not None]
    lines = ["## Gradient estimators and bounds, 1-layer MNIST, k = 5 (beyond the paper)", ""]
    if not done:
        return [*lines, "No run evaluated yet.", ""], {}
    lines += [
        "Every run: the same model, schedule, data and seeds; only the objective differs. Δ = NLL(run) - NLL(IWAE, "
        "reparam) on the same test images with the same importance samples, per seed, then its mean over the seeds "
        "± the standard error of that mean (sd over seeds / √n: training noise included). "
        f"A Δ is read where it is at least two standard errors from 0 over {MIN_SEEDS} seeds or more.",
        "",
        "| run | bound, estimator | test NLL (mean ± sd over seeds) | active units | Δ vs IWAE (± s.e.) | "
        "Δ per seed (± s.e. over images) | reading |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    entry: dict[str, Any] = {"reference": REFERENCE, "runs": {}, "pairs": {}}
    for n in done:
        cell, config = cells[n], configs(root / n) or {}
        sd = f" ± {cell['test_nll_sd']:.2f}" if "test_nll_sd" in cell else ""
        row: dict[str, Any] = {"test_nll": cell["test_nll"], "seeds": cell.get("seeds", [config.get("seed")])}
        diff = paired_over_seeds(recs[REFERENCE], recs[n]) if n != REFERENCE and REFERENCE in recs else None
        delta = per_seed = read = ""
        if diff is not None:
            row["vs_reference"] = diff
            se = f" ± {diff['sem']:.2f}" if diff["sem"] is not None else ""
            delta, read = f"{diff['mean']:+.2f}{se}", reading(diff)
            per_seed = ", ".join(f"{p['mean']:+.2f} ± {p['sem']:.2f}" for p in diff["per_seed"])
        active = cell.get("active_units")
        units = "/".join(f"{u:.0f}" if u == int(u) else f"{u:.1f}" for u in active) if isinstance(active, list) else ""
        label = _label(config) if config else ""
        n_seeds = len(row["seeds"])
        lines.append(f"| {n} | {label} | {cell['test_nll']:.2f}{sd} (n={n_seeds}) | {units} | {delta} | {per_seed} "
                     f"| {read} |")  # fmt: skip
        entry["runs"][n] = row
    for a, b in combinations(done, 2):
        if (diff := paired_over_seeds(recs[a], recs[b])) is not None:
            entry["pairs"][f"{b} - {a}"] = diff
    lines += ["", "Every pair's difference, per seed and over the seeds, is in results.json (`estimators.pairs`).", ""]
    return lines, entry
