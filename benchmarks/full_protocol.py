"""The paper's full protocol (3,280 passes): Table 1's cells on the whole test set, beside the paper, the 364-pass
prefix and the short schedule; the claims of the paper these cells decide, paired; the learning curves in one figure.

    python -m benchmarks.full_protocol FOLDER [FOLDER ...] --reproduction results/reproduction \
        --prefix results/fidelity/prefix.json --out results/full-protocol/results.json

Each FOLDER is a finished run or its export (``iwae export``: config, metrics, learning curve and the per-image
``test_ll.json``, which is all this reads). A claim compares two cells by the paired difference of their per-image
L_5000 (:func:`iwae.analysis.compare.paired_records`: runs of one seed are scored on the same images with the same
noise), so its standard error is the evaluation's alone; the spread between training seeds is shown beside it as
the reproduction's seeds measured it at the short schedule. Writes the JSON, a markdown report beside it (``.md``)
and the curves (``-curves.png``).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

import torch

from benchmarks import report
from benchmarks.prefix_report import curve_lines, summarize
from iwae.analysis.compare import paired_records
from iwae.experiments.paper_results import TABLE1
from iwae.plots import plot_curves
from iwae.runs.config import passes_text
from iwae.runs.evaluate_run import evaluation_sizes, machines_text, read_per_image
from iwae.runs.rundir import read_config
from iwae.util.atomic import write_json, write_text

GOAL = 0.3  # nats: a cell meets the goal within this of the paper's number, or below it

# (what the paper found, cell A, cell B): each decided by NLL(A) - NLL(B), the paper's own difference beside it.
CLAIMS = (
    ("IWAE k=5 beats the VAE k=5", "mnist-l1-vae-k5", "mnist-l1-iwae-k5"),
    ("the VAE gains little from k=5", "mnist-l1-k1", "mnist-l1-vae-k5"),
    ("IWAE k=5 beats k=1", "mnist-l1-k1", "mnist-l1-iwae-k5"),
)
_PAPER = {"mnist-l1-k1": ("iwae", 1), "mnist-l1-vae-k5": ("vae", 5), "mnist-l1-iwae-k5": ("iwae", 5)}


def cell(run: Path, reproduction: dict, prefix: dict) -> dict:
    """One cell: :func:`benchmarks.prefix_report.summarize`'s numbers, the training set's, the pruned NLL, the
    paper's active units, the same configuration after the prefix (if it ran), whether it meets :data:`GOAL`, and
    the machines that trained and evaluated it."""
    row = summarize(run, reproduction)
    metrics = json.loads((run / "metrics.json").read_text())
    short = reproduction["runs"][row["name"]]
    paper_key = ("mnist", 1, *_PAPER[row["name"]]) if row["name"] in _PAPER else None
    long = next((p for p in prefix.get("runs", []) if p["name"] == row["name"]), None)
    row.update(
        train_nll=metrics["train_nll"], train_nll_sem=metrics["train_nll_sem"],
        train_n=evaluation_sizes(read_config(run))[1], test_nll_pruned=metrics.get("test_nll_pruned"),
        paper_active_units=TABLE1[paper_key][1] if paper_key else None,
        prefix_passes=long["passes"] if long else None, prefix_test_nll=long["test_nll"] if long else None,
        prefix_test_nll_sem=long["test_nll_sem"] if long else None,
        prefix_eval=(long.get("eval_k"), long.get("eval_n")) if long else None,
        prefix_active_units=long.get("active_units") if long else None,
        short_eval=(short.get("eval_k"), short.get("eval_n")),
        train_machines=metrics.get("train_machines"), eval_machine=metrics.get("eval_machine"),
        eval_seconds=metrics.get("eval_seconds"),  # absent from runs evaluated before it was recorded
        to_paper=row["test_nll"] - row["paper_test_nll"], meets_goal=row["test_nll"] - row["paper_test_nll"] <= GOAL,
        weights=weight_diagnostics(run, row["eval_k"], row["eval_n"], row["passes"]),
    )  # fmt: skip
    return row


def weight_diagnostics(run: Path, k: int, n: int, passes: float) -> dict | None:
    """The summary of ``iwae diagnose`` on the images and samples of the cell's test NLL, where the folder holds it
    (``diagnostics-test-k<k>-n<n>.json``) for the model scored (after the same passes), else None."""
    path = run / f"diagnostics-test-k{k}-n{n}.json"
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    if d.get("passes") is None or abs(d["passes"] - passes) > 1e-6:  # a diagnosis of the model at another pass
        return None
    keys = ("khat_median", "khat_over_half", "khat_unreliable", "khat_threshold", "ess_median", "recorded")
    return {key: d[key] for key in keys}


def claims(records: dict[str, dict], reproduction: dict) -> list[dict]:
    """Each of :data:`CLAIMS` whose two cells are given: NLL(A) - NLL(B) paired over the test images, the paper's
    difference, a reading of ours against it, and the spread that one training seed per cell leaves out of the
    standard error: the sd of a difference between two runs of one seed each, from the reproduction's seeds at
    its short schedule (``seed_spread``; None where it trained one seed)."""
    out = []
    for statement, a, b in CLAIMS:
        paper = TABLE1[("mnist", 1, *_PAPER[a])][0] - TABLE1[("mnist", 1, *_PAPER[b])][0]
        sds = [reproduction["runs"].get(name, {}).get("test_nll_sd") for name in (a, b)]
        claim = {"claim": statement, "a": a, "b": b, "paper": paper, "difference": None,
                 "seed_spread": None if None in sds else math.hypot(*sds)}  # fmt: skip
        if a in records and b in records:
            d = paired_records(records[a], records[b])
            claim.update(difference=d, reading=_reading(d, paper))
        out.append(claim)
    return out


def _reading(d: dict[str, float], paper: float) -> str:
    """Ours against the paper's difference: the same sign beyond twice the evaluation's standard error, the other
    sign beyond it, or neither."""
    if abs(d["mean"]) <= 2 * d["sem"]:
        return "no difference beyond twice the evaluation's standard error"
    same = (d["mean"] > 0) == (paper > 0)
    return f"{'as the paper' if same else 'opposite to the paper'}: {d['mean'] - paper:+.2f} nats from its difference"


def _nll(value: float | None, sem: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if sem is None else f"{value:.2f} ± {sem:.2f}"


def _units(per_layer: list[int] | None) -> str:
    return "-" if per_layer is None else "+".join(map(str, per_layer))


def _scored(k_n: tuple[int | None, int | None] | None, before: str = "") -> str:
    """`` (before; L_k, n images)``: how a number was scored, where its record says."""
    said = [before] if before else []
    if k_n and None not in k_n:
        said.append(f"L_{k_n[0]}, {k_n[1]:,} images")
    return f" ({'; '.join(said)})" if said else ""


def machine_lines(rows: list[dict]) -> list[str]:
    """Where each cell trained (its hours by machine, ``metrics.json``'s ``train_machines``) and was evaluated."""
    lines = ["", "Machines (a run resumed on another machine lists each, with its share of the training time):", ""]
    for r in rows:
        where = machines_text({k: r[k] for k in ("train_machines", "train_seconds")})
        took = "" if r.get("eval_seconds") is None else f" in {r['eval_seconds'] / 3600:.1f} hours"
        lines.append(
            f"- {r['name']}: trained on {where}; evaluated on {r['eval_machine'] or 'a machine not recorded'}{took}."
        )
    return lines


def markdown(rows: list[dict], found: list[dict], command: str) -> str:
    meta = report.machine(torch.device("cpu"))
    lines = [
        "# The paper's full protocol: Table 1's cells",
        "",
        f"- command: `{command}`",
        f"- written: {meta['date']}; {meta['cpu']}, {meta['cores']} cores; torch {meta['torch']} (each cell's training "
        "and evaluating machines: below)",
        "",
        "Test and train NLL: the mean of -L_k over the images scored (k and images beside it), ± its standard error "
        "over images.",
        f"Goal: within {GOAL} nats of the paper's number, or below it.",
        "",
        "Beside each cell, the same configuration (and seed) trained on the paper's first 6 stages (364 passes) and on "
        "the short schedule of the reproduction; those were scored on fewer test images, as said beside them. Active "
        "units: at 3,280 passes, at 364, and the paper's.",
        "",
        "| cell | passes | test NLL | paper | to the paper | goal | 364 passes | short schedule "
        "| train NLL | pruned test NLL | active units: 3,280 / 364 (paper) | training hours |",
        "| --- | ---: | ---: | ---: | ---: | :---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        short_passes = f"{passes_text(r['short_passes'])} passes"
        lines.append(
            f"| {r['name']} | {passes_text(r['passes'])} "
            f"| {_nll(r['test_nll'], r['test_nll_sem'])}{_scored((r['eval_k'], r['eval_n']))} "
            f"| {r['paper_test_nll']:.2f} | {r['to_paper']:+.2f} | "
            f"{'met' if r['meets_goal'] else 'missed'} "
            f"| {_nll(r['prefix_test_nll'], r['prefix_test_nll_sem'])}{_scored(r['prefix_eval'])} "
            f"| {r['short_test_nll']:.2f}{_scored(r['short_eval'], short_passes)} "
            f"| {_nll(r['train_nll'], r['train_nll_sem'])}{_scored((r['eval_k'], r['train_n']))} "
            f"| {_nll(r['test_nll_pruned'])} "
            f"| {_units(r['active_units'])} / {_units(r['prefix_active_units'])} ({_units(r['paper_active_units'])}) "
            f"| {r['train_seconds'] / 3600:.1f} |"
        )
    lines += [
        "",
        "The paper's claims these cells decide: NLL(A) - NLL(B), paired over the same test images and importance "
        "samples, with the evaluation's standard error. Each cell is one training seed, so that error leaves out the "
        "spread between seeds; the last column gives that spread as the short schedule measured it (the sd of a "
        "difference between two runs of one seed each).",
        "",
        "| claim | A | B | NLL(A) - NLL(B) | paper | reading | seeds' spread (short schedule) |",
        "| --- | --- | --- | ---: | ---: | --- | ---: |",
    ]
    for c in found:
        d, spread = c["difference"], c["seed_spread"]
        ours = "pending" if d is None else f"{d['mean']:.3f} ± {d['sem']:.3f}"
        lines.append(f"| {c['claim']} | {c['a']} | {c['b']} | {ours} | {c['paper']:.2f} | {c.get('reading', '-')} "
                     f"| {'-' if spread is None else f'{spread:.2f}'} |")  # fmt: skip
    return "\n".join(lines + weight_lines(rows) + machine_lines(rows) + curve_lines(rows)) + "\n"


def weight_lines(rows: list[dict]) -> list[str]:
    """How far each test NLL can be trusted: the Pareto k-hat and effective sample size of its images' importance
    weights (:mod:`iwae.analysis.diagnostics`), where the cell's folder holds ``iwae diagnose``'s summary."""
    lines = ["", "The importance weights behind each test NLL (`iwae diagnose FOLDER --n N` with the cell's own k and "
             "images): the share of images whose weights' Pareto k-hat is above 0.5 (infinite variance) and above the "
             "threshold of unreliability, the median k-hat, and the median effective sample size.", "",
             "| cell | k-hat > 0.5 | k-hat > threshold | median k-hat | median ESS | the recorded L_k |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    for r in rows:
        w = r.get("weights")
        if w is None:
            lines.append(f"| {r['name']} | not diagnosed: `iwae diagnose FOLDER --n {r['eval_n']}` | | | | |")
            continue
        recorded = w["recorded"]
        replayed = "not compared" if recorded is None else "replayed exactly" if recorded == 0 else (
            f"within {recorded:.2g} (other samples)")  # fmt: skip
        median = "inf" if w["khat_median"] is None else f"{w['khat_median']:.2f}"
        lines.append(f"| {r['name']} | {100 * w['khat_over_half']:.1f}% | {100 * w['khat_unreliable']:.1f}% (above "
                     f"{w['khat_threshold']:.2f}) | {median} | {w['ess_median']:,.0f} of {r['eval_k']:,} "
                     f"| {replayed} |")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished full-protocol runs, or their exports")
    parser.add_argument("--reproduction", type=Path, required=True, help="folder of a reproduction's results.json")
    parser.add_argument("--prefix", type=Path, required=True, help="benchmarks.prefix_report's JSON")
    parser.add_argument("--out", type=Path, required=True, help="JSON to write (markdown and figure beside it)")
    args = parser.parse_args(argv)
    reproduction = json.loads((args.reproduction / "results.json").read_text())
    prefix = json.loads(args.prefix.read_text())
    rows = [cell(run, reproduction, prefix) for run in args.runs]
    names = [r["name"] for r in rows]
    if len(set(names)) < len(names):
        parser.error(f"two folders hold the same cell: {', '.join(names)}")
    found = claims({r["name"]: read_per_image(run) for r, run in zip(rows, args.runs)}, reproduction)
    command = "python -m benchmarks.full_protocol " + shlex.join(argv if argv is not None else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"command": command, "goal": GOAL, "cells": rows, "claims": found})
    write_text(args.out.with_suffix(".md"), markdown(rows, found, command))
    series = [
        {"label": f"{r['name']} ({passes_text(r['passes'])} passes)", "points": r["curve"],
         "reference": r["paper_test_nll"], "reference_passes": 3280}
        for r in rows
    ]  # fmt: skip
    plot_curves(series, args.out.with_name(args.out.stem + "-curves.png"), "test NLL against passes; dotted: paper")
    print(markdown(rows, found, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
