"""Does the Pareto k-hat of the importance weights say where L_k is wrong? Checked against the exact log p(x) of real
test images under the published 2-D latent model.

    python -m benchmarks.khat_exact [--model mnist-2d-iwae-k5] [--n 500] [--ks 1000,5000]
        [--out benchmarks/results/khat_exact.json]

The model's two latent units are integrated exactly (``benchmarks.exact_ll``, as ``benchmarks.ais_exact`` does, on the
same images: the first ``n`` of the model's evaluation). For each k, :func:`iwae.analysis.diagnostics.
weight_diagnostics` gives each image's L_k (the run's own ``nll`` stream, as ``iwae diagnose``) with the k-hat of its
weights; the images are grouped by k-hat (at most 0.5; up to the threshold; above it), and each group's gap to
log p(x) is reported: where L_k misses a posterior mode, does k-hat flag the image?
"""

from __future__ import annotations

import argparse
import math
import shlex
import time
from datetime import date
from pathlib import Path

import torch

from benchmarks import report
from benchmarks.exact_ll import exact_log_px, published_images
from iwae.analysis.diagnostics import khat_threshold, weight_diagnostics
from iwae.runs.evaluate_run import stream
from iwae.util.machine import describe

RESULTS = Path(__file__).parent / "results"
MISSED = 1.0  # nats below log p(x): a posterior mode the proposal missed


def groups(log_px: torch.Tensor, ll: torch.Tensor, khat: torch.Tensor, threshold: float) -> list[dict]:
    """Per k-hat group (at most 0.5, up to ``threshold``, above it): its images, their mean gap log p(x) - L_k with
    its standard error, median gap, and the images more than :data:`MISSED` nats below log p(x)."""
    gap = log_px - ll.double()
    low = min(0.5, threshold)  # (below k = 100 the threshold is under 0.5: no middle group)
    rows = []
    middle = [(f"{low:.2f} < k-hat <= {threshold:.2f}", (khat > low) & (khat <= threshold))] if low < threshold else []
    for name, keep in [(f"k-hat <= {low:.2f}", khat <= low), *middle, (f"k-hat > {threshold:.2f}", khat > threshold)]:
        g = gap[keep]
        n = g.numel()
        rows.append({"group": name, "images": n, "gap": g.mean().item() if n else None,
                     "gap_sem": (g.std() / n**0.5).item() if n > 1 else None,
                     "median_gap": g.median().item() if n else None, "missed": int((g > MISSED).sum())})  # fmt: skip
    return rows


def auc(score: torch.Tensor, positive: torch.Tensor) -> float | None:
    """The probability that ``score`` ranks a positive image above a negative one (ties count half): the area under
    the ROC curve of ``score`` as a detector of ``positive``."""
    pos, neg = score[positive].double(), score[~positive].double()
    if not pos.numel() or not neg.numel():
        return None
    above = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    return above.mean().item()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mnist-2d-iwae-k5", help="a published model with 2 latent units")
    p.add_argument("--n", type=int, default=500, help="test images (default 500, as benchmarks.ais_exact)")
    p.add_argument("--ks", default="1000,5000", help="importance samples, comma-separated (default 1000,5000)")
    p.add_argument("--points", type=int, default=801, help="grid points per axis over [-6, 6] (default 801)")
    p.add_argument("--out", type=Path, default=RESULTS / "khat_exact.json", help=report.OUT_HELP)
    args = p.parse_args(argv)
    report.check_out(p, args.out)
    model, config, x = published_images(args.model, args.n)
    cpu = torch.device("cpu")
    log_px = exact_log_px(model, x, 6.0, args.points)
    runs = []
    for k in map(int, args.ks.split(",")):
        start = time.perf_counter()
        d = weight_diagnostics(model, x, k, generator=stream(config, cpu, "test", "nll"))
        threshold = khat_threshold(k)
        missed = (log_px - d.ll.double()) > MISSED
        flagged = d.khat > threshold
        runs.append({"k": k, "threshold": threshold, "seconds": time.perf_counter() - start,
                     "groups": groups(log_px, d.ll, d.khat, threshold), "missed": int(missed.sum()),
                     "missed_flagged": int((missed & flagged).sum()), "flagged": int(flagged.sum()),
                     "missed_se_over_half": int((missed & (d.stderr > 0.5)).sum()),
                     # the standard error, flagging as many images as k-hat does (its largest)
                     "missed_se_top": int(missed[d.stderr.argsort(descending=True)[: int(flagged.sum())]].sum()),
                     "auc_khat": auc(d.khat, missed), "auc_stderr": auc(d.stderr.double(), missed),
                     "khat": [v if math.isfinite(v) else None for v in d.khat.tolist()], "ll": d.ll.tolist(),
                     "ess": d.ess.tolist()})  # fmt: skip
    command = "python -m benchmarks.khat_exact " + shlex.join(argv if argv is not None else [])
    result = {"command": command.strip(), "model": args.model, "n": x.shape[0], "points": args.points,
              "machine": describe(), "date": date.today().isoformat(), "runs": runs,
              "log_px": log_px.tolist()}  # fmt: skip
    report.publish(result, markdown(result), args.out)
    return 0


def _num(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(result: dict) -> str:
    lines = [
        f"# Pareto k-hat against the exact log p(x): {result['model']}, {result['n']} test images",
        "",
        f"log p(x) by integration over [-6, 6]^2 ({result['points']} points per axis); each image's L_k and the Pareto "
        "k-hat of its k weights from `iwae.analysis.diagnostics.weight_diagnostics` (the model's evaluation stream, as "
        "`iwae diagnose`). Gap: log p(x) - L_k, averaged over the group's images with its standard error; 'missed': "
        f"images more than {MISSED:g} nat below log p(x) (a posterior mode the recognition model's proposal missed).",
        "",
        "| k | group | images | mean gap | median gap | missed |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for run in result["runs"]:
        for g in run["groups"]:
            gap = "-" if g["gap"] is None else f"{g['gap']:.3f} ± {_num(g['gap_sem'], 3)}"
            lines.append(f"| {run['k']} | {g['group']} | {g['images']} | {gap} | {_num(g['median_gap'], 4)} | "
                         f"{g['missed']} |")  # fmt: skip
    lines.append("")
    for run in result["runs"]:
        lines.append(f"- k = {run['k']:,}: k-hat flags {run['flagged']} of {result['n']} images as unreliable (above "
                     f"{run['threshold']:.2f}), {run['missed_flagged']} of the {run['missed']} that L_k misses by more "
                     f"than a nat among them. The delta-method standard error exceeds 0.5 nats on "
                     f"{run['missed_se_over_half']} of those {run['missed']}, and its {run['flagged']} largest hold "
                     f"{run['missed_se_top']} of them. As detectors of those images (the area under the ROC curve, "
                     f"1 a perfect ranking, 0.5 none): k-hat {_num(run['auc_khat'], 3)}, the standard error "
                     f"{_num(run['auc_stderr'], 3)} ({run['seconds']:.0f} s).")  # fmt: skip
    lines += ["", "The standard error is read from the same weights and cannot exceed sqrt((k - 1) / k), under a "
              "nat, whatever the gap; k-hat has thresholds of its own (0.5: infinite variance; 0.7: unreliable), "
              "at which most flagged images are still within a nat of log p(x): a cautious flag."]  # fmt: skip
    return "\n".join([*lines, "", *report.provenance(result)])


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
