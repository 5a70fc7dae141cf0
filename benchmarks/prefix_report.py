"""The paper's schedule, first stages at full length, beside the committed short schedule and the paper.

    python -m benchmarks.prefix_report RUN [RUN ...] --reproduction results/reproduction \
        --out results/fidelity/prefix.json

For each run folder (trained on stages 0..N-1 of the paper's schedule, not scaled): its final test NLL
(``metrics.json``), its learning curve (the test NLL logged at the end of every stage), the same configuration's
test NLL after the short schedule committed in the reproduction's ``results.json`` (of the run's seed where it
trained several), the paper's Table 1 number, and the share of the gap to the paper that the longer schedule
closed, (short - long) / (short - paper). Writes the JSON, a markdown table beside it (``.md``) and the curves
(``-curves.png``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from benchmarks import report
from iwae.experiments.paper_results import TABLE1
from iwae.experiments.plan import table_key
from iwae.plots import plot_curves
from iwae.runs.rundir import read_config, read_log
from iwae.util.atomic import write_json, write_text


def _same_seed(cell: dict, seed: int) -> dict:
    """A reproduction cell's numbers for the run's own seed where it trained several (its means otherwise)."""
    if "seeds" in cell and seed in cell["seeds"]:
        return {**cell, "test_nll": cell["test_nll_seeds"][cell["seeds"].index(seed)]}
    return cell


def summarize(run: Path, reproduction: dict) -> dict:
    """One run's numbers beside the short schedule's and the paper's."""
    config = read_config(run)
    metrics = json.loads((run / "metrics.json").read_text())
    layers = len(config.latent_dims) if config.latent_dims else config.layers
    name = table_key(config.dataset, layers, config.bound, config.k)
    short = _same_seed(reproduction["runs"][name], config.seed)
    paper = TABLE1[(config.dataset, layers, "iwae" if config.k == 1 else config.bound, config.k)][0]
    curve = [(r["pass"], r["test_nll_curve"]) for r in read_log(run) if "test_nll_curve" in r]
    return {
        "run": str(run), "name": name, "stages": config.stages, "passes": metrics["passes"],
        "test_nll": metrics["test_nll"], "test_nll_sem": metrics["test_nll_sem"],
        "eval_k": metrics["eval_k"], "eval_n": metrics["eval_n"], "active_units": metrics["active_units"],
        "train_seconds": metrics["train_seconds"], "curve": curve, "curve_k": config.curve_k,
        "curve_n": config.curve_n, "short_passes": short["passes"], "short_test_nll": short["test_nll"],
        "paper_test_nll": paper,
        "gap_closed": (short["test_nll"] - metrics["test_nll"]) / (short["test_nll"] - paper),
    }  # fmt: skip


def markdown(rows: list[dict], command: str) -> str:
    meta = report.machine(torch.device("cpu"))
    lines = [
        "# The paper's schedule, first stages at full length",
        "",
        f"- command: `{command}`",
        f"- date: {meta['date']}; {meta['cpu']}, {meta['cores']} cores; torch {meta['torch']}; one thread per run",
        "",
        "| run | passes | test NLL, -L_k (k, images) | short schedule (passes) | paper | gap to the paper closed |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['passes']:.0f} | {r['test_nll']:.2f} ± {r['test_nll_sem']:.2f} "
            f"({r['eval_k']}, {r['eval_n']}) | {r['short_test_nll']:.2f} ({r['short_passes']:.2f}) | "
            f"{r['paper_test_nll']:.2f} | {100 * r['gap_closed']:.0f}% |"
        )
    return "\n".join(lines + curve_lines(rows)) + "\n"


def curve_lines(rows: list[dict]) -> list[str]:
    """The learning curves of :func:`summarize`'s rows, a markdown list."""
    lines = ["", "Learning curves (test NLL, -L_k on a fixed spread subset at the end of every stage):", ""]
    for r in rows:
        points = ", ".join(f"{p:.0f}: {v:.2f}" for p, v in r["curve"])
        lines.append(f"- {r['name']} (L_{r['curve_k']}, {r['curve_n']} images), passes: NLL: {points}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders trained on a prefix of the paper's schedule")
    parser.add_argument("--reproduction", type=Path, required=True, help="folder of a reproduction's results.json")
    parser.add_argument("--out", type=Path, required=True, help="JSON to write (markdown and figure beside it)")
    args = parser.parse_args(argv)
    reproduction = json.loads((args.reproduction / "results.json").read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = [summarize(run, reproduction) for run in args.runs]
    command = "python -m benchmarks.prefix_report " + shlex.join(argv if argv is not None else sys.argv[1:])
    write_json(args.out, {"command": command, "runs": rows})
    write_text(args.out.with_suffix(".md"), markdown(rows, command))
    series = []
    for r in rows:  # one panel per run: its curve, the paper's final number (dotted) and the short schedule's point
        series += [
            {"label": f"{r['passes']:.0f} passes", "points": r["curve"], "panel": r["name"],
             "reference": r["paper_test_nll"], "reference_passes": 3280},
            {"label": "short schedule", "points": [(r["short_passes"], r["short_test_nll"])], "panel": r["name"]},
        ]  # fmt: skip
    plot_curves(series, args.out.with_name(args.out.stem + "-curves.png"), "test NLL against passes; dotted: paper")
    print(markdown(rows, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
