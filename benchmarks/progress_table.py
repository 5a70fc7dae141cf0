"""Where unfinished runs stand: passes, training hours and the learning curve so far, one markdown row a run.

    python -m benchmarks.progress_table results/full-protocol/in-progress/mnist-l1-iwae-k5 ... [--figure PNG]

Each folder is a run folder or its snapshot (``iwae snapshot``): ``config.json`` and ``metrics.jsonl`` are read, whose
passes' seconds add up to the training time. The curve is ``metrics.jsonl``'s ``test_nll_curve`` (mean
-L_k on the run's fixed spread subset of test images) at each stage's end, with the schedule's passes as columns.
``--figure`` draws the curves against passes, each with the paper's final number for its cell (Table 1) where
it has one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from iwae.experiments.paper_results import TABLE1
from iwae.plots import plot_curves
from iwae.runs.config import passes_text, schedule
from iwae.runs.rundir import read_config, read_log


def row(run: Path) -> dict:
    """One run's passes done and in all, its training seconds (its passes' own), and its curve by stage."""
    config, log = read_config(run), read_log(run)
    stage_ends = []
    for stage in schedule(config):
        stage_ends.append((stage_ends[-1] if stage_ends else 0.0) + stage.passes)
    seconds = sum(r["seconds"] for r in log)  # each pass's training steps, as the checkpoint counts them
    curve = {r["stage"]: r["test_nll_curve"] for r in log if "test_nll_curve" in r}  # logged at each stage's end
    k_n = next(((r["curve_k"], r["curve_n"]) for r in log if "curve_k" in r), (config.curve_k, config.curve_n))
    paper = (config.dataset, config.layers, config.bound, config.k) if config.latent_dims is None else None
    return {"name": run.name, "passes": log[-1]["pass"] if log else 0.0, "total": stage_ends[-1] if stage_ends else 0.0,
            "stage_ends": stage_ends, "train_seconds": seconds, "curve": curve, "curve_k_n": k_n,
            "paper_test_nll": TABLE1[paper][0] if paper in TABLE1 else None}  # fmt: skip


def markdown(rows: list[dict]) -> str:
    """The rows as one table; the columns are the stage ends of the first run's schedule."""
    ends = rows[0]["stage_ends"]
    k, n = rows[0]["curve_k_n"]
    head = ", ".join(passes_text(p) for p in ends)
    lines = [f"| run | passes | training hours | test NLL (L_{k}, {n} images) after passes {head} |",
             "| --- | ---: | ---: | --- |"]  # fmt: skip
    for r in rows:
        points = [r["curve"].get(stage) for stage in range(len(ends))]
        shown = ", ".join(f"{v:.2f}" for v in points if v is not None) or "-"
        hours = f"{r['train_seconds'] / 3600:.1f}"
        lines.append(f"| {r['name']} | {passes_text(r['passes'])} of {passes_text(r['total'])} | {hours} | {shown} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders or their snapshots")
    parser.add_argument("--figure", type=Path, help="PNG of the learning curves so far, with the paper's numbers")
    args = parser.parse_args(argv)
    rows = [row(run) for run in args.runs]
    print(markdown(rows), end="")
    if args.figure:
        k, n = rows[0]["curve_k_n"]
        series = [
            {"label": f"{r['name']} ({passes_text(r['passes'])} passes)",
             "points": [(r["stage_ends"][stage], v) for stage, v in sorted(r["curve"].items())],
             "reference": r["paper_test_nll"], "reference_passes": r["total"]}
            for r in rows if r["curve"]
        ]  # fmt: skip
        plot_curves(series, args.figure, f"test NLL (L_{k}, {n} images) so far; dotted: the paper's final L_5000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
