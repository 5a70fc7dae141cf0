"""report.md and results.json: our numbers beside the paper's, the schedule used, the figures, the claims checked."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np

from iwae.data.resources import locate
from iwae.experiments.claims import CRITERIA, SPREAD_RULE, Claim, check_claims
from iwae.experiments.head_to_head import estimators_section
from iwae.experiments.paper_results import TABLE1, TABLE2, TABLE3
from iwae.experiments.plan import ESTIMATOR_RUNS, Schedule, table_key
from iwae.experiments.runner import read_metrics, seed_dirs, seed_number
from iwae.experiments.seeds import SEEDS_NOTE, combine, fmt_active, fmt_nll, fmt_value, mean_curve, n_seeds, restrict
from iwae.plots import plot_curves
from iwae.runs.evaluate_run import read_per_image
from iwae.runs.rundir import METRICS_NAME, PER_IMAGE_NAME, read_config, read_log, with_data_dir
from iwae.util import machine
from iwae.util.atomic import write_json, write_text

__all__ = ["read_cell", "write_report", "rewrite_report"]

PAPER_PASSES = 3280  # the paper's schedule: 3^i passes for i = 0..7 (Section 5.1)


def _evaluated(path: Path) -> list[Path]:
    """The evaluated run folders of one plan run: itself, or its evaluated ``seed-<S>`` folders."""
    return [d for d in seed_dirs(path) if (d / METRICS_NAME).is_file()]


def read_cell(path: Path) -> dict | None:
    """One plan run's metrics: its ``metrics.json``, or its evaluated seeds' combined
    (:func:`~iwae.experiments.seeds.combine`); None before any is evaluated."""
    dirs = _evaluated(path)
    if dirs == [path]:
        return read_metrics(path)
    metrics = [m for d in dirs if (m := read_metrics(d)) is not None]
    return combine(metrics, [seed_number(d) or 0 for d in dirs]) if metrics else None


def _cells(root: Path, table: dict, dataset: str) -> dict:
    out = {}
    for layers in (1, 2):
        for k in (1, 5, 50):
            for obj in ("vae", "iwae"):
                m = read_cell(root / table_key(dataset, layers, obj, k))
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
                row.append(fmt_nll(m, paper and paper[0]))
                row.append(fmt_active(m, paper and paper[1]))
            if with_train:
                row += [
                    fmt_value(m, "train_nll", False) if m else "–"
                    for m, _ in (cells[(layers, k, o)] for o in ("vae", "iwae"))
                ]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def _claims(root: Path, table: dict, dataset: str, seed: int) -> list[Claim]:
    """The paper's qualitative claims, checked on our numbers (only where every run they need is done)."""
    return check_claims(dataset, {key: m for key, (m, _) in _cells(root, table, dataset).items()}, plain_seed=seed)


def _criteria() -> list[str]:
    return [
        "## The paper's claims: criteria",
        "",
        "Each qualitative claim of the paper is checked by a rule taken from the paper's own Table 1:",
        "",
        *(f"- {name}: {rule}." for name, rule in CRITERIA.items()),
        f"- Seeds: {SPREAD_RULE}.",
        "",
    ]


def _claims_md(found: list[Claim], collected: list[Claim]) -> list[str]:
    """The claims as a markdown list (nothing if none could be checked); also appended to ``collected``."""
    collected += found
    if not found:
        return []
    return ["Qualitative claims of the paper on these numbers (criteria at the top):", "",
            *(c.markdown() for c in found), ""]  # fmt: skip


def _figures(root: Path, names: list[str]) -> list[str]:
    """Each run's samples and histogram of log A_u (a run with seeds: its first evaluated seed's)."""
    lines = []
    for name in names:
        if dirs := _evaluated(root / name):
            where = dirs[0].relative_to(root).as_posix()
            label = name if dirs[0] == root / name else f"{name}, {dirs[0].name}"
            lines.append(f"**{label}**: ![samples](runs/{where}/samples.png) ![log A_u](runs/{where}/active_units.png)")
    return lines


def _table2_md(root: Path, schedule: Schedule) -> list[str]:
    lines = [f"## Table 2: continued training ({schedule.describe()})", "",
             "| experiment | first stage | NLL (paper) | active (paper) | second stage | NLL (paper) "
             "| active (paper) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, row in TABLE2.items():
        first = read_cell(root / table_key("mnist", 1, *row["first"]))
        second_dir = root / f"mnist-l1-{name}-k{row['second'][1]}"
        second, start = read_cell(second_dir), _start_seed(second_dir)
        label = f"{row['first'][0]} k={row['first'][1]}"
        if first and start is not None and start in first.get("seeds", []):  # the seed the second stage starts from
            first, label = restrict(first, [start]), f"{label}, seed {start} (the second stage's start)"
        cells = [
            name,
            label,
            fmt_nll(first, row["before"][0]),
            fmt_active(first, row["before"][1]),
            f"{row['second'][0]} k={row['second'][1]}",
            fmt_nll(second, row["after"][0]),
            fmt_active(second, row["after"][1]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _start_seed(run: Path) -> int | None:
    """The seed of the run folder a run started from (``init_from`` ending in ``seed-S``), if any."""
    path = run / "config.json"
    init = json.loads(path.read_text()).get("init_from") if path.is_file() else None
    return seed_number(Path(init)) if init else None


def _pruned_md(runs: dict[str, dict]) -> list[str]:
    lines = ["## Appendix C: inactive units removed", ""]
    lines += ["| run | test NLL | with inactive units removed | change |", "| --- | --- | --- | --- |"]
    for name, m in runs.items():
        if m.get("test_nll_pruned") is not None and "-2d-" not in name:
            change = m["test_nll_pruned"] - m["test_nll"]
            lines.append(f"| {name} | {fmt_value(m)} | {m['test_nll_pruned']:.2f} | {change:+.3f} |")
    return [*lines, "", "The paper: removing inactive units changes the test NLL by less than 0.06 nats.", ""]


def _made_md(command: str) -> list[str]:
    return [
        "## How this was made",
        "",
        f"- Command: `{command}`",
        f"- Report written: {date.today().isoformat()}; machine: {machine.describe()}, numpy {np.__version__}",
        "- Evaluation: binarization and importance samples from generators seeded by the run's seed, so "
        "`iwae evaluate` reproduces every number; `results.json` holds them all.",
    ]


def _table_section(root: Path, table: dict, title: str, dataset: str, schedule: Schedule, claims: list) -> list[str]:
    """A table of NLLs and active units, the claims it checks (also appended to ``claims``), its learning curves."""
    rebuilt = dataset == "omniglot" and _rebuilt_omniglot(root)
    title += " (rebuilt 28x28: indicative)" if rebuilt else ""
    lines = [f"## {title} ({schedule.describe()})", ""]
    if rebuilt:
        lines += [OMNIGLOT_REBUILT, ""]
    lines += [*_table_md(root, table, dataset, True), ""]
    found = _claims(root, table, dataset, schedule.seed)
    return lines + _claims_md(found, claims) + _curves_md(root, table, dataset, title)


OMNIGLOT_REBUILT = (
    "**Rebuilt Omniglot, indicative numbers.** These runs read the original 105x105 archives, downsampled here to "
    "28x28 by exact area averaging, not the paper's `chardata.mat` (other downsampling, other drawings, 8,115 test "
    "images instead of 8,070): the ours-minus-paper differences below and the paper's lines in the figure set "
    "numbers on different data side by side, so they are indicative, not comparable to the nat."
)


def _rebuilt_omniglot(root: Path) -> bool:
    """Whether the Omniglot runs under ``root`` read the rebuilt archives: as their ``metrics.json`` records it
    (``data_files``), else (runs evaluated before it was recorded) as their data directory holds no
    ``chardata.mat`` (or no data at all)."""
    configs = sorted(root.glob("omniglot-*/config.json")) + sorted(root.glob("omniglot-*/seed-*/config.json"))
    if not configs:
        return False
    recorded = [read_metrics(c.parent) for c in configs]
    files = [m["data_files"] for m in recorded if m and "data_files" in m]
    if files:
        return any("omniglot/chardata.mat" not in f for f in files)
    config = with_data_dir(read_config(configs[0].parent))
    found = locate("omniglot", Path(config.data_dir)) or {}
    return "omniglot/chardata.mat" not in found


def _curve(run_dir: Path) -> list[tuple[float, float]]:
    return [(r["pass"], r["test_nll_curve"]) for r in read_log(run_dir) if "test_nll_curve" in r]


def _curves_md(root: Path, table: dict, dataset: str, title: str) -> list[str]:
    """The table's runs in one figure, ``curves-<dataset>.png`` beside report.md: each run's test-NLL curve (or,
    for a run that logged none, its final NLL alone) against passes, with the paper's final number."""
    series, seen = [], set()
    for layers in (1, 2):
        for k in (1, 5, 50):
            for obj in ("vae", "iwae"):
                name = table_key(dataset, layers, obj, k)
                if name in seen or (m := read_cell(root / name)) is None:
                    continue  # at k = 1 the VAE and IWAE are one run
                seen.add(name)
                points = mean_curve([_curve(d) for d in _evaluated(root / name)])
                if not points and "passes" in m:
                    points = [(m["passes"], m["test_nll"])]
                paper = table.get((dataset, layers, obj, k))
                label = "k=1 (VAE = IWAE)" if k == 1 else f"{obj.upper()} k={k}"
                label += f" (mean of {n_seeds(m)} seeds)" if n_seeds(m) > 1 else ""
                series.append({"label": label, "panel": f"{layers} stochastic layer(s)", "points": points,
                               "reference": paper and paper[0], "reference_passes": PAPER_PASSES})  # fmt: skip
    series = [item for item in series if item["points"]]
    if not series:
        return []
    figure = f"curves-{dataset}.png"
    plot_curves(series, root.parent / figure, f"{title}: test NLL against passes")
    return [f"Test NLL against passes (log axis): each run's learning curve (`test_nll_curve`, at the end of every "
            "stage), or its final NLL alone where the run logged no curve; dotted lines and stars: the paper's "
            f"final numbers, after its {PAPER_PASSES:,} passes.", "", f"![learning curves]({figure})", ""]  # fmt: skip


def _tables_md(
    root: Path, experiments: list[str], schedule: Schedule, datasets: tuple[str, ...], claims: list
) -> list[str]:
    lines: list[str] = []
    if "table1" in experiments:
        for dataset in datasets:
            lines += _table_section(root, TABLE1, f"Table 1: {dataset}", dataset, schedule, claims)
    if "table2" in experiments:
        lines += _table2_md(root, schedule)
    if "table3" in experiments:
        lines += _table_section(root, TABLE3, "Table 3: fixed binarization", "binarized-mnist", schedule, claims)
    return lines


def _records(path: Path) -> dict[int, dict]:
    """The per-image test records of a plan run's evaluated folders, by seed."""
    found = [read_per_image(d) for d in _evaluated(path) if (d / PER_IMAGE_NAME).is_file()]
    return {r["seed"]: r for r in found}


def _settings(path: Path) -> dict | None:
    dirs = _evaluated(path)
    return read_config(dirs[0]).__dict__ if dirs else None


def _estimators_md(root: Path, results: dict) -> list[str]:
    lines, entry = estimators_section(root, list(ESTIMATOR_RUNS), read_cell, _records, _settings)
    if entry:
        results["estimators"] = entry
    return lines


def write_report(
    out: Path, experiments: list[str], schedule: Schedule, command: str, datasets: tuple[str, ...]
) -> Path:
    """Write out/report.md and out/results.json (atomically) from the run folders under out/runs."""
    root = out / "runs"
    runs = {d.name: m for d in (sorted(root.glob("*")) if root.exists() else []) if (m := read_cell(d))}
    seeded = any(n_seeds(m) > 1 for m in runs.values())
    claims: list[Claim] = []
    tables = _tables_md(root, experiments, schedule, datasets, claims)
    results: dict = {"schedule": dict(schedule.__dict__), "command": command, "runs": runs}
    if "estimators" in experiments:
        tables += _estimators_md(root, results)
    paper = any(e != "estimators" for e in experiments)
    lines = [
        "# Reproduction of Burda, Grosse & Salakhutdinov (2016), *Importance Weighted Autoencoders*"
        if paper
        else "# Gradient estimators and multi-sample bounds for the IWAE model of Burda et al. (2016)",
        "",
        f"Schedule: **{schedule.describe()}**.",
        "",
        ("Cells read *ours (paper, ours minus paper)*. " if paper else "")
        + "NLL in nats, lower is better; active units per layer."
        + (f" {SEEDS_NOTE}" if seeded else ""),
        "",
        *(_criteria() if claims else []),
        *tables,
    ]
    if any(e in experiments for e in ("table1", "table3")):
        lines += _pruned_md(runs)
    if "posteriors" in experiments and (out / "posteriors.png").is_file():
        lines += ["## Appendix C: true posteriors (heat maps) and samples of q (dots), 2-D latent", "",
                  "![posteriors](posteriors.png)", ""]  # fmt: skip
    figures = "samples (Bernoulli means) and histograms of log A_u"
    lines += [f"## Appendix C and E: {figures}" if paper else f"## {figures[0].upper()}{figures[1:]}", ""]
    lines += [*_figures(root, sorted(runs)), "", *_made_md(command)]
    results["experiments"], results["datasets"] = list(experiments), list(datasets)
    if claims:
        results["criteria"] = CRITERIA
        if seeded:
            results["spread_rule"] = SPREAD_RULE
        results["claims"] = [c.as_dict() for c in claims]
    write_text(out / "report.md", "\n".join(lines) + "\n")
    write_json(out / "results.json", results)
    return out / "report.md"


def rewrite_report(out: Path) -> Path:
    """Rewrite out/report.md and out/results.json from the run folders alone (no run trained; of the figures only
    the learning curves are redrawn), with the experiments, data sets, schedule and command recorded in
    out/results.json."""
    recorded = json.loads((out / "results.json").read_text())
    schedule = Schedule(**recorded["schedule"])
    return write_report(out, recorded["experiments"], schedule, recorded["command"], tuple(recorded["datasets"]))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m iwae.experiments.report",
        description="Rewrite DIR/report.md and DIR/results.json from DIR's run folders after a change of the report "
        "code (no run is trained).",
    )
    parser.add_argument("dir", type=Path, help="a folder made by `iwae reproduce` (it holds results.json)")
    folder = parser.parse_args().dir
    if not (folder / "results.json").is_file():
        parser.error(f"{folder} holds no results.json: name a folder made by `iwae reproduce`")
    print(f"wrote {rewrite_report(folder)}")
