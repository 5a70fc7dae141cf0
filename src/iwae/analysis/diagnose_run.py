"""A saved run's L_k with the diagnostics of its importance weights (:mod:`iwae.analysis.diagnostics`,
``iwae diagnose``): per image, the effective sample size and the Pareto k-hat of the weights behind its estimate.

The images and the weights are those of the run's own evaluation (:func:`iwae.runs.evaluate_run.eval_split`: n
spread through the split, binarized by its stream; the split's ``nll`` stream, on the threads ``metrics.json`` was
measured on), so with the run's ``eval_k`` and ``eval_n`` on the test split the L_k are those of its
``test_ll.json`` exactly, and the result says so. Written to ``diagnostics-<split>-k<k>-n<n>.json`` (the summary and
the per-image values) and ``.png`` (k-hat's histogram, and k-hat against L_k) in the run folder.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from iwae.analysis.diagnostics import khat_threshold, weight_diagnostics
from iwae.runs.evaluate_run import (
    check_split,
    code_version,
    eval_split,
    eval_threads,
    read_per_image,
    scored_passes,
    stream,
    summarize,
)
from iwae.runs.rundir import load_run
from iwae.util.atomic import write_json
from iwae.util.cpu import flush_subnormals

__all__ = ["diagnose_run"]


def diagnose_run(
    run_dir: str | Path,
    k: int | None = None,
    split: str = "test",
    n: int | None = 1000,
    *,
    data_dir: str | None = None,
    threads: int | None = None,
    device: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The run's NLL on n images of ``split`` (default: 1,000; None: all) with k importance samples (default its
    ``eval_k``), and its weights' diagnostics: the median and the shares of images whose k-hat passes 0.5 (infinite
    variance) and :func:`~iwae.analysis.diagnostics.khat_threshold` (unreliable), the ESS's median and least, and
    the per-image values (k-hat's infinities as None, counted in ``khat_flat`` and ``khat_beyond_range``);
    ``recorded``: the largest difference from the run's ``test_ll.json`` where the two score the same images at the
    same k on the same streams (0 when the samples are the same too: another device or code draws others), else
    None; ``passes`` and ``code``: the model's and the code's. Written to the run folder (module docstring) and
    returned."""
    from iwae.plots import plot_weight_diagnostics

    check_split(split)
    config, model, position = load_run(run_dir, data_dir, device)
    if (k or config.eval_k) < 10:
        raise ValueError(f"the weights' tail needs k >= 10 importance samples, got k = {k or config.eval_k}"
                         + ("" if k else " (the run's eval k): give --k"))  # fmt: skip
    k = k or config.eval_k
    dev = next(model.parameters()).device
    index, x = eval_split(config, split, n, dev, config.seed)
    began = time.monotonic()
    with flush_subnormals(config.flush_denormal), eval_threads(run_dir, dev, threads):
        d = weight_diagnostics(model, x, k, generator=stream(config, dev, split, "nll"), progress=progress,
                               desc=f"{split}, L_{k} and its weights, {x.shape[0]} images",
                               flush_denormal=config.flush_denormal)  # fmt: skip
    seconds = time.monotonic() - began
    limit = khat_threshold(k)
    khat, ess = d.khat.cpu(), d.ess.cpu()
    result = {
        "split": split, "eval_k": k, **summarize(d.ll), "khat_median": _finite(khat.median().item()),
        "khat_over_half": (khat > 0.5).double().mean().item(), "khat_threshold": limit,
        "khat_unreliable": (khat > limit).double().mean().item(), "ess_median": ess.median().item(),
        "ess_min": ess.min().item(), "recorded": _recorded_difference(run_dir, config, split, k, index, d.ll),
        # k-hat's infinities (null per image): a flat tail (-inf), a tail beyond float64's range (+inf)
        "khat_flat": int((khat == -math.inf).sum()), "khat_beyond_range": int((khat == math.inf).sum()),
        "passes": scored_passes(Path(run_dir), config, position), "code": code_version(), "seconds": seconds,
        "index": index.tolist(), "ll": d.ll.double().tolist(), "ess": ess.tolist(),
        "khat": [_finite(v) for v in khat.tolist()],
    }  # fmt: skip
    name = f"diagnostics-{split}-k{k}-n{x.shape[0]}"
    title = f"{Path(run_dir).name}: {split}, L_{k}, {x.shape[0]} images"
    plot_weight_diagnostics(khat, d.ll.cpu(), limit, Path(run_dir) / f"{name}.png", title)
    write_json(Path(run_dir) / f"{name}.json", {**result, "file": f"{name}.json"})
    return {**result, "file": f"{name}.json"}


def _finite(value: float) -> float | None:
    """``value``, or None (JSON's null) for an infinity."""
    return value if math.isfinite(value) else None


def _recorded_difference(
    run_dir: str | Path, config: Any, split: str, k: int, index: torch.Tensor, ll: torch.Tensor
) -> float | None:
    """The largest |L_k - recorded L_k| where ``test_ll.json`` holds these images at this k on these streams."""
    if split != "test":
        return None
    try:
        record = read_per_image(run_dir)
    except (FileNotFoundError, ValueError):
        return None
    same = (record["eval_k"], record["seed"], record["streams"], record["index"]) == (
        k, config.seed, config.streams, index.tolist()
    )  # fmt: skip
    if not same:
        return None
    return (ll.double().cpu() - torch.tensor(record["ll"], dtype=torch.float64)).abs().max().item()
