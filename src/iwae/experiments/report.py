"""report.md and results.json: our numbers beside the paper's, the schedule used, the figures, the claims checked."""

from __future__ import annotations

import json
import platform
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch

from iwae.experiments.paper_results import TABLE1, TABLE2, TABLE3
from iwae.experiments.plan import Schedule, table_key
from iwae.experiments.runner import read_metrics

__all__ = ["write_report"]


def _fmt_nll(ours: float | None, paper: float | None) -> str:
    if ours is None:
        return "–"
    if paper is None:
        return f"{ours:.2f}"
    return f"{ours:.2f} ({paper:.2f}, {ours - paper:+.2f})"


def _fmt_active(ours: list[int] | None, paper: list[int] | None) -> str:
    if ours is None:
        return "–"
    text = "+".join(map(str, ours))
    return f"{text} ({'+'.join(map(str, paper))})" if paper else text


def _cells(root: Path, table: dict, dataset: str) -> dict:
    out = {}
    for layers in (1, 2):
        for k in (1, 5, 50):
            for obj in ("vae", "iwae"):
                m = read_metrics(root / table_key(dataset, layers, obj, k))
                paper = table.get((dataset, layers, obj, k))
                out[(layers, k, obj)] = (m, paper)
    return out


def _table_md(root: Path, table: dict, dataset: str, with_train: bool) -> list[str]:
    cells = _cells(root, table, dataset)
    head = "| layers | k | VAE NLL (paper, diff) | VAE active (paper) | IWAE NLL (paper, diff) | IWAE active (paper) |"
    lines = [head, "| --- | --- | --- | --- | --- | --- |"]
    if with_train:
        lines = [head + " VAE train NLL | IWAE train NLL |", "| --- " * 8 + "|"]
    for layers in (1, 2):
        for k in (1, 5, 50):
            row = [str(layers), str(k)]
            for obj in ("vae", "iwae"):
                m, paper = cells[(layers, k, obj)]
                row.append(_fmt_nll(m and m["test_nll"], paper and paper[0]))
                row.append(_fmt_active(m and m["active_units"], paper and paper[1]))
            if with_train:
                row += [
                    f"{m['train_nll']:.2f}" if m else "–" for m, _ in (cells[(layers, k, o)] for o in ("vae", "iwae"))
                ]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def _claims(root: Path, table: dict, dataset: str) -> list[str]:
    """The paper's qualitative claims, checked on our numbers (only where every run they need is done)."""
    c = {key: m for key, (m, _) in _cells(root, table, dataset).items()}
    out = []
    for layers in (1, 2):
        vals = [c[(layers, k, o)] for k in (1, 50) for o in ("vae", "iwae")]
        if all(vals):
            gain_iwae = c[(layers, 1, "iwae")]["test_nll"] - c[(layers, 50, "iwae")]["test_nll"]
            gain_vae = c[(layers, 1, "vae")]["test_nll"] - c[(layers, 50, "vae")]["test_nll"]
            verdict = "holds" if gain_iwae > max(gain_vae, 0) else "does not hold"
            out.append(
                f"- {layers} layer(s): IWAE improves with k while VAE barely does: **{verdict}** (k=1 -> 50 gains "
                f"IWAE {gain_iwae:+.2f} nats, VAE {gain_vae:+.2f} nats)."
            )
        for k in (5, 50):
            v, i = c[(layers, k, "vae")], c[(layers, k, "iwae")]
            if v and i:
                verdict = "holds" if sum(i["active_units"]) > sum(v["active_units"]) else "does not hold"
                out.append(
                    f"- {layers} layer(s), k={k}: IWAE has more active units than VAE: **{verdict}** "
                    f"({'+'.join(map(str, i['active_units']))} vs {'+'.join(map(str, v['active_units']))})."
                )
    for k in (1, 5, 50):
        for obj in ("vae", "iwae"):
            one, two = c[(1, k, obj)], c[(2, k, obj)]
            if one and two:
                verdict = "holds" if two["test_nll"] < one["test_nll"] else "does not hold"
                out.append(
                    f"- {obj.upper()} k={k}: two layers beat one: **{verdict}** ({two['test_nll']:.2f} vs "
                    f"{one['test_nll']:.2f})."
                )
    return out


def _figures(root: Path, names: list[str]) -> list[str]:
    lines = []
    for name in names:
        if (root / name / "metrics.json").is_file():
            lines.append(f"**{name}**: ![samples](runs/{name}/samples.png) ![log A_u](runs/{name}/active_units.png)")
    return lines


def write_report(
    out: Path, experiments: list[str], schedule: Schedule, command: str, datasets: tuple[str, ...]
) -> Path:
    """Write out/report.md and out/results.json from the run folders under out/runs."""
    root = out / "runs"
    lines = [
        "# Reproduction of Burda, Grosse & Salakhutdinov (2016), *Importance Weighted Autoencoders*",
        "",
        f"Schedule: **{schedule.describe()}**.",
        "",
        "Cells read *ours (paper, ours minus paper)*. NLL in nats, lower is better; active units per layer.",
        "",
    ]
    results: dict = {"schedule": schedule.__dict__, "command": command, "runs": {}}
    for run_dir in sorted(root.glob("*")) if root.exists() else []:
        m = read_metrics(run_dir)
        if m:
            results["runs"][run_dir.name] = m
    if "table1" in experiments:
        for dataset in datasets:
            lines += [f"## Table 1: {dataset} ({schedule.describe()})", "", *_table_md(root, TABLE1, dataset, True), ""]
            claims = _claims(root, TABLE1, dataset)
            if claims:
                lines += ["Qualitative claims of the paper on these numbers:", "", *claims, ""]
    if "table2" in experiments:
        lines += [f"## Table 2: continued training ({schedule.describe()})", "",
                  "| experiment | first stage | NLL | active | second stage | NLL (paper) | active (paper) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for name, row in TABLE2.items():
            first = read_metrics(root / table_key("mnist", 1, *row["first"]))
            second_name = f"mnist-l1-{name}-k{row['second'][1]}"
            second = read_metrics(root / second_name)
            cells = [
                name,
                f"{row['first'][0]} k={row['first'][1]}",
                _fmt_nll(first and first["test_nll"], row["before"][0]),
                _fmt_active(first and first["active_units"], row["before"][1]),
                f"{row['second'][0]} k={row['second'][1]}",
                _fmt_nll(second and second["test_nll"], row["after"][0]),
                _fmt_active(second and second["active_units"], row["after"][1]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if "table3" in experiments:
        lines += [f"## Table 3: fixed binarization ({schedule.describe()})", "",
                  *_table_md(root, TABLE3, "binarized-mnist", True), ""]  # fmt: skip
    if any(e in experiments for e in ("table1", "table3")):
        lines += ["## Appendix C: inactive units removed", ""]
        lines += ["| run | test NLL | with inactive units removed | change |", "| --- | --- | --- | --- |"]
        for name, m in results["runs"].items():
            if "test_nll_pruned" in m and "-2d-" not in name:
                change = m["test_nll_pruned"] - m["test_nll"]
                lines.append(f"| {name} | {m['test_nll']:.2f} | {m['test_nll_pruned']:.2f} | {change:+.3f} |")
        lines += ["", "The paper: removing inactive units changes the test NLL by less than 0.06 nats.", ""]
    if "posteriors" in experiments and (out / "posteriors.png").is_file():
        lines += ["## Appendix C: true posteriors (heat maps) and samples of q (dots), 2-D latent", "",
                  "![posteriors](posteriors.png)", ""]  # fmt: skip
    lines += ["## Appendix C and E: samples (Bernoulli means) and histograms of log A_u", ""]
    lines += _figures(root, sorted(results["runs"]))
    lines += [
        "",
        "## How this was made",
        "",
        f"- Command: `{command}`",
        f"- Date: {date.today().isoformat()}; machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"torch {torch.__version__} ({'CUDA ' + torch.version.cuda if torch.cuda.is_available() else 'CPU'}), "
        f"numpy {np.__version__}, Python {sys.version.split()[0]}",
        "- Evaluation: binarization and importance samples from generators seeded by the run's seed, so "
        "`iwae evaluate` reproduces every number; `results.json` holds them all.",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return out / "report.md"
