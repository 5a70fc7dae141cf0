"""The exact log-likelihood of a 2-D latent model on MNIST, against the importance-sampled bounds L_1, L_50, L_5000.

    python -m benchmarks.exact_ll RUN --n 500 --out results/fidelity/exact.json

For a run with one stochastic layer of 2 units (``iwae train --latent-dims 2 ...``), log p(x) = log of the integral
of p(x | h) N(h; 0, I) over h is computed on a uniform 2-D grid (trapezoid rule, float64), on a base grid, a grid
of half its spacing and a grid 1.5 times as wide: the changes they make show the integral's accuracy. The same
``n`` test images (spread evenly through the test set, binarized once) are scored by ``iwae.log_likelihood`` with
k = 1, 50 and 5000. Theorem 1 of the paper: L_1 <= L_50 <= L_5000 <= log p(x) in expectation. Writes the JSON and a
markdown table beside it.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import report
from benchmarks.peer_nll import machine
from iwae.evaluate import log_likelihood
from iwae.models.model import IWAE
from iwae.runs.config import TrainConfig, schedule
from iwae.runs.evaluate_run import eval_images
from iwae.runs.rundir import load_run

KS = (1, 50, 5000)


@torch.no_grad()
def exact_log_px(model: IWAE, x: torch.Tensor, half_width: float, n: int, chunk: int = 4096) -> torch.Tensor:
    """log p(x) per row of ``x`` for a model with latent_dims [2] and a Bernoulli visible layer, float64.

    The integral over h in [-half_width, half_width]^2 on an n x n grid, trapezoid weights; log p(x | h) for every
    grid point and image at once: x . logits - sum(softplus(logits)).
    """
    if model.latent_dims != [2] or model.likelihood != "bernoulli":
        raise ValueError(f"exact integration needs one Bernoulli-visible layer of 2 latent units, got {model.config}")
    visible = copy.deepcopy(model.decoder[-1]).double()
    axis = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    log_w1 = torch.full((n,), math.log(axis[1] - axis[0]), dtype=torch.float64)
    log_w1[[0, -1]] -= math.log(2)  # trapezoid end points
    grid = torch.cartesian_prod(axis, axis)  # (n*n, 2)
    log_w = (log_w1[:, None] + log_w1[None, :]).reshape(-1) - 0.5 * grid.square().sum(1) - math.log(2 * math.pi)
    xd = x.double()
    total = torch.full((x.shape[0],), -math.inf, dtype=torch.float64)
    for start in range(0, grid.shape[0], chunk):
        logits = visible(grid[start : start + chunk])  # (G, 784)
        log_px_h = logits @ xd.T - F.softplus(logits).sum(1, keepdim=True)  # (G, B)
        total = torch.logaddexp(total, torch.logsumexp(log_px_h + log_w[start : start + chunk, None], 0))
    return total


def published_images(name: str, n: int) -> tuple[IWAE, TrainConfig, torch.Tensor]:
    """A published model (:mod:`iwae.pretrained`) on the CPU in eval mode, its config, and the first ``n`` images of
    its test evaluation (:func:`iwae.runs.evaluate_run.eval_images`), with torch on one thread."""
    import iwae

    torch.set_num_threads(1)
    model, config, _ = iwae.pretrained.load(name)
    return model.cpu().eval(), config, eval_images(config, "test", n, torch.device("cpu"), config.seed)


def grid_check(model: IWAE, x: torch.Tensor, half_width: float, n: int) -> tuple[torch.Tensor, dict]:
    """log p(x) on the base grid, and the largest per-image change from halving its spacing or widening it 1.5x."""
    start = time.monotonic()
    base = exact_log_px(model, x, half_width, n)
    finer = exact_log_px(model, x, half_width, 2 * n - 1)
    wider = exact_log_px(model, x, 1.5 * half_width, round(1.5 * (n - 1)) + 1)  # same spacing
    check = {
        "half_width": half_width, "points_per_axis": n, "spacing": 2 * half_width / (n - 1),
        "max_change_finer": (finer - base).abs().max().item(), "mean_change_finer": (finer - base).mean().item(),
        "max_change_wider": (wider - base).abs().max().item(), "mean_change_wider": (wider - base).mean().item(),
        "seconds": time.monotonic() - start,
    }  # fmt: skip
    return finer, check


def compare(model: IWAE, x: torch.Tensor, log_px: torch.Tensor, seed: int) -> dict:
    """L_k for each k of :data:`KS` on ``x``: means, standard errors, and gaps to log p(x) paired per image."""
    n, out = x.shape[0], {}
    for i, k in enumerate(KS):
        gen = torch.Generator().manual_seed(seed + i)
        ll = log_likelihood(model, x, k, generator=gen).double()
        gap = log_px - ll
        out[f"L_{k}"] = {
            "mean": ll.mean().item(), "sem": ll.std().item() / n**0.5, "gap": gap.mean().item(),
            "gap_sem": gap.std().item() / n**0.5, "above_log_px": int((gap < 0).sum()),
        }  # fmt: skip
    return out


def markdown(result: dict) -> str:
    """The table of results/fidelity/exact.md, every number from ``result``."""
    g, ex = result["grid"], result["log_px"]
    rows = [f"| L_{k} | {v['mean']:.3f} ± {v['sem']:.3f} | {v['gap']:.4f} ± {v['gap_sem']:.4f} | {v['above_log_px']} |"
            for k, v in ((k, result["bounds"][f"L_{k}"]) for k in KS)]  # fmt: skip
    order = " <= ".join(f"L_{k}" for k in KS) + " <= log p(x)"
    return "\n".join([
        f"# Exact log p(x) against L_k, 2-D latent model on MNIST ({result['n']} test images)",
        "",
        f"Run: `{result['run']}` ({result['run_passes']:g} passes of training: a short schedule). log p(x) by "
        f"numerical integration over [-{g['half_width']:g}, {g['half_width']:g}]^2 on a grid of spacing "
        f"{g['spacing'] / 2:.4g} ({2 * g['points_per_axis'] - 1} points per axis). Against the grid of twice that "
        f"spacing ({g['points_per_axis']} points), log p(x) changes by at most {g['max_change_finer']:.2g} nats on any "
        f"image; widening that grid 1.5x at the same spacing changes it by at most {g['max_change_wider']:.2g}.",
        "",
        f"Mean log p(x) = {ex['mean']:.3f} ± {ex['sem']:.3f} (s.e. over images).",
        "",
        "| bound | mean (nats) | mean gap log p(x) - L_k (paired s.e.) | images with L_k > log p(x) |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
        f"Theorem 1's ordering {order} on average: **{'holds' if result['ordering_holds'] else 'does not hold'}**.",
        "",
        *report.provenance(result),
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run folder of a model with --latent-dims 2")
    parser.add_argument("--n", type=int, default=500, help="test images, spread through the test set (500)")
    parser.add_argument("--half-width", type=float, default=6.0, help="the base grid covers [-W, W]^2 (6)")
    parser.add_argument("--points", type=int, default=601, help="points per axis of the base grid (601)")
    parser.add_argument("--out", type=Path, help=report.OUT_HELP)
    args = parser.parse_args()
    report.check_out(parser, args.out)
    torch.set_num_threads(1)
    config, model, position = load_run(args.run)
    model = model.cpu().eval()
    x = eval_images(config, "test", args.n, torch.device("cpu"), config.seed)
    log_px, grid = grid_check(model, x, args.half_width, args.points)
    bounds = compare(model, x, log_px, seed=config.seed)
    means = [bounds[f"L_{k}"]["mean"] for k in KS] + [log_px.mean().item()]
    out = f" --out {args.out}" if args.out else ""
    result = {
        "command": f"python -m benchmarks.exact_ll {args.run} --n {args.n} --half-width {args.half_width:g} "
        f"--points {args.points}{out}",
        "run": str(args.run), "run_passes": sum(s.passes for s in schedule(config)), "n": x.shape[0],
        "log_px": {"mean": log_px.mean().item(), "sem": log_px.std().item() / x.shape[0] ** 0.5},
        "grid": grid, "bounds": bounds, "ordering_holds": all(a <= b for a, b in zip(means, means[1:])),
        "machine": machine(), "date": date.today().isoformat(),
    }  # fmt: skip
    report.publish(result, markdown(result), args.out)


if __name__ == "__main__":
    main()
