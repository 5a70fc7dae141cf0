"""The reproduction report over runs trained with several seeds (RUN/seed-<S>/) beside plain run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iwae.experiments.claims import ONE_SEED, WITHIN_SPREAD, check_claims
from iwae.experiments.paper_results import TABLE1
from iwae.experiments.plan import Schedule, table_key
from iwae.experiments.report import write_report
from iwae.experiments.runner import read_seed_metrics, seed_dirs
from iwae.experiments.seeds import combine, fmt_nll, mean_curve


def _write_run(run_dir: Path, nll: float, active: list[int], evaluated: bool = True) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    if evaluated:
        metrics = {"k": 5, "test_nll": nll, "train_nll": nll - 0.7, "test_nll_pruned": nll + 0.01,
                   "active_units": active}  # fmt: skip
        (run_dir / "metrics.json").write_text(json.dumps(metrics))


def _fake_seeds(root: Path, name: str, nlls: list[float], actives: list[list[int]], first: int = 0) -> None:
    for seed, (nll, active) in enumerate(zip(nlls, actives), first):
        _write_run(root / name / f"seed-{seed}", nll, active)


def test_seed_dirs_finds_a_run_folder_or_its_seed_folders_in_seed_order(tmp_path):
    _write_run(tmp_path / "plain", 90.0, [10])
    assert seed_dirs(tmp_path / "plain") == [tmp_path / "plain"]
    for seed in (10, 2, 1):
        _write_run(tmp_path / "seeded" / f"seed-{seed}", 90.0 + seed, [10], evaluated=seed != 2)
    (tmp_path / "seeded" / "seed-3").mkdir()  # not (yet) a run folder
    (tmp_path / "seeded" / "seed-x").mkdir()
    assert [d.name for d in seed_dirs(tmp_path / "seeded")] == ["seed-1", "seed-2", "seed-10"]
    assert [m["test_nll"] for m in read_seed_metrics(tmp_path / "seeded")] == [91.0, 100.0]
    assert seed_dirs(tmp_path / "missing") == [] and read_seed_metrics(tmp_path / "missing") == []


def test_a_cell_of_seeds_holds_their_mean_and_spread_and_one_seed_reads_as_before():
    cell = combine([{"k": 5, "test_nll": 90.0, "active_units": [10, 3]},
                    {"k": 5, "test_nll": 91.0, "active_units": [11, 3]},
                    {"k": 5, "test_nll": 92.5, "active_units": [12, 3]}], [0, 1, 4])  # fmt: skip
    assert cell["k"] == 5 and cell["seeds"] == [0, 1, 4] and cell["test_nll_seeds"] == [90.0, 91.0, 92.5]
    assert cell["test_nll"] == pytest.approx(91.1666667) and cell["test_nll_sd"] == pytest.approx(1.2583057)  # ddof=1
    assert cell["active_units"] == [11.0, 3] and cell["active_units_seeds"][2] == [12, 3]
    assert fmt_nll(cell, 90.0) == "91.17 ± 1.26 (n=3) (90.00, +1.17)"
    # each unit's A_u per seed only; training seconds by machine averaged machine by machine; machines named once
    a, b = "AMD EPYC, 2 cores", "Intel Xeon, 2 cores"
    cell = combine([{"train_seconds": 30.0, "train_machines": {a: 30.0}, "eval_machine": a, "activity": [[0.5, 0.0]]},
                    {"train_seconds": 50.0, "train_machines": {a: 10.0, b: 40.0}, "eval_machine": b,
                     "activity": [[0.2, 0.9]]}], [0, 1])  # fmt: skip
    assert cell["train_machines"] == {a: 20.0, b: 20.0} and cell["train_seconds"] == 40.0
    assert cell["eval_machine"] == f"{a}; {b}" and "activity" not in cell
    assert cell["activity_seeds"] == [[[0.5, 0.0]], [[0.2, 0.9]]]
    one = combine([{"test_nll": 90.0, "active_units": [10]}], [7])
    assert fmt_nll(one, 90.5) == "90.00 (90.50, -0.50)" and "test_nll_sd" not in one and one["seeds"] == [7]
    assert fmt_nll(None, 90.5) == "–"


def test_mean_curve_averages_the_passes_every_seed_reached():
    curves = [[(1.0, 10.0), (2.0, 8.0)], [(1.0, 12.0), (2.0, 6.0), (3.0, 5.0)], []]
    assert mean_curve(curves) == [(1.0, 11.0), (2.0, 7.0)]
    assert mean_curve([[(2.0, 8.0), (1.0, 9.0)]]) == [(2.0, 8.0), (1.0, 9.0)] and mean_curve([]) == []


def _mnist_table(root: Path, spread: float, plain: tuple[str, ...] = ()) -> None:
    """The paper's MNIST Table 1 plus one nat, each run with three seeds at -spread, 0, +spread around it (the
    runs named in ``plain``: one plain run folder). The 1-layer runs have seeds 0-2, the 2-layer runs seeds 3-5, so
    comparisons across depths are unpaired and those within a depth paired."""
    done = set()
    for (dataset, layers, obj, k), (nll, active) in TABLE1.items():
        name = table_key(dataset, layers, obj, k)
        if dataset != "mnist" or name in done:
            continue
        done.add(name)
        if name in plain:
            _write_run(root / name, nll + 1.0, active)
        else:
            _fake_seeds(root, name, [nll + 1.0 - spread, nll + 1.0, nll + 1.0 + spread],
                        [active, [a + 1 for a in active], [a + 2 for a in active]], 3 * (layers - 1))  # fmt: skip
        if name == "mnist-l1-iwae-k5":  # learning curves, one per seed: drawn as their mean
            for seed, run_dir in enumerate(seed_dirs(root / name)):
                lines = [{"pass": p, "test_nll_curve": 100.0 + seed - p} for p in (1.0, 3.0)]
                (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_report_shows_mean_and_sd_of_seeds_beside_a_plain_run(tmp_path):
    _mnist_table(tmp_path / "runs", 0.01, plain=("mnist-l2-vae-k50",))
    report = write_report(tmp_path, ["table1"], Schedule(stages=3, pass_scale=0.1), "c", ("mnist",)).read_text()
    row = "| 2 | 50 | 85.78 (84.78, +1.00) | 17+5 (17+5) | 83.90 ± 0.01 (n=3) (82.90, +1.00) | 27+8 (26+7) |"
    assert row + " 85.08 | 83.20 ± 0.01 |" in report
    assert "| mnist-l1-k1 | 87.76 ± 0.01 (n=3) | 87.77 | +0.010 |" in report
    assert "the mean over its n seeds ± their sample standard deviation" in report
    assert "**mnist-l1-k1, seed-0**: ![samples](runs/mnist-l1-k1/seed-0/samples.png)" in report
    assert "**mnist-l2-vae-k50**: ![samples](runs/mnist-l2-vae-k50/samples.png)" in report
    assert (tmp_path / "curves-mnist.png").is_file()
    results = json.loads((tmp_path / "results.json").read_text())
    cell = results["runs"]["mnist-l2-iwae-k50"]
    assert cell["test_nll"] == pytest.approx(83.90) and cell["test_nll_sd"] == pytest.approx(0.01)
    assert cell["seeds"] == [3, 4, 5] and cell["test_nll_seeds"] == pytest.approx([83.89, 83.90, 83.91])
    assert cell["active_units"] == [27.0, 8.0]
    assert not {"seeds", "test_nll_seeds", "test_nll_sd"} & set(results["runs"]["mnist-l2-vae-k50"])
    # a small spread: every claim between seeded runs holds and states its difference ± SE; the one resting on
    # the plain run (one seed) is undecided
    assert len(results["claims"]) == 14
    assert all(c["holds"] is (True if c["measured"] else None) for c in results["claims"])
    assert [c["where"] for c in results["claims"] if not c["measured"]] == ["2 layers", "2 layers, k=50", "VAE, k=50"]
    assert "IWAE, k=50: two layers beat one: **holds** (2 layers 83.90 vs 1 layer 85.78; difference -1.88 ± 0.01" in (
        report
    )
    # one plain run (seed 0, the schedule's) against three seeds: compared on seed 0
    assert (
        "VAE, k=50: two layers beat one: **undecided: one seed, no measure of its noise** (2 layers 85.78 vs 1 layer "
        "87.34 (on seed 0, which every run compared holds))." in report
    )
    assert "spread_rule" in results


def test_a_large_spread_leaves_claims_within_the_seeds_spread(tmp_path):
    _mnist_table(tmp_path / "runs", 3.0)
    report = write_report(tmp_path, ["table1"], Schedule(stages=3, pass_scale=0.1), "c", ("mnist",)).read_text()
    assert f"IWAE, k=50: two layers beat one: **{WITHIN_SPREAD}** (2 layers 83.90 vs 1 layer 85.78; difference " \
           "-1.88 ± 2.45 nats)." in report  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    layers = [c for c in results["claims"] if c["claim"] == "two layers beat one"]
    assert len(layers) == 6 and all(c["holds"] is None for c in layers)
    units = [c for c in results["claims"] if c["claim"].startswith("IWAE has more")]
    assert all(c["holds"] is True for c in units)  # the seeds' units differ by 1 and 2: a small spread


def _cells(one: list[float], two: list[float], paired: bool = False) -> dict:
    """The 1- and 2-layer VAE k=50 cells; their seeds 0, 1, ... and 10, 11, ... (or the same, ``paired``)."""
    cells: dict = {key: None for key in [(n, k, o) for n in (1, 2) for k in (1, 5, 50) for o in ("vae", "iwae")]}
    cells[(1, 50, "vae")] = combine([{"test_nll": v, "active_units": [20]} for v in one], list(range(len(one))))
    seeds = list(range(0 if paired else 10, len(two) + (0 if paired else 10)))
    cells[(2, 50, "vae")] = combine([{"test_nll": v, "active_units": [20, 5]} for v in two], seeds)
    return cells


@pytest.mark.parametrize(
    ("one", "two", "holds", "evidence"),
    [
        ([87.0, 87.1, 86.9], [86.0, 86.1, 85.9], True, "2 layers 86.00 vs 1 layer 87.00; difference -1.00 ± 0.08 nats"),
        ([88.0, 87.0, 86.0], [87.5, 85.0, 85.5], None, "2 layers 86.00 vs 1 layer 87.00; difference -1.00 ± 0.96 nats"),
        (
            [86.0, 86.1, 85.9],
            [87.0, 87.1, 86.9],
            False,
            "2 layers 87.00 vs 1 layer 86.00; difference +1.00 ± 0.08 nats",
        ),
        ([87.0], [86.0], "one seed", "2 layers 86.00 vs 1 layer 87.00"),  # no measure of its noise: undecided
        ([87.0], [88.0, 85.0, 85.0], "one seed", "2 layers 86.00 vs 1 layer 87.00"),  # one side of one seed
    ],
)
def test_two_layers_beat_one_with_the_seeds_spread_in_view(one, two, holds, evidence):
    (claim,) = check_claims("mnist", _cells(one, two))
    verdict = {True: "holds", False: "does not hold", None: WITHIN_SPREAD, "one seed": ONE_SEED}[holds]
    holds = None if holds == "one seed" else holds
    assert claim.holds is holds and claim.evidence == evidence
    assert claim.markdown() == f"- VAE, k=50: two layers beat one: **{verdict}** ({evidence})."
    assert claim.as_dict()["holds"] is holds


def test_runs_of_the_same_seeds_are_compared_seed_by_seed():
    """Each seed's runs share the evaluation's images and noise: a spread common to both cells cancels."""
    one, two = [88.0, 87.0, 86.0], [87.1, 85.9, 85.0]  # per seed: -0.9, -1.1, -1.0
    (unpaired,) = check_claims("mnist", _cells(one, two))
    assert unpaired.holds is None and unpaired.evidence.endswith("difference -1.00 ± 0.84 nats")
    (paired,) = check_claims("mnist", _cells(one, two, paired=True))
    assert paired.holds is True and paired.evidence.endswith("difference -1.00 ± 0.06 nats")


def test_one_seed_per_run_reads_as_the_plain_layout(tmp_path):
    """`--seeds 0` alone: the same tables, claims and pruned-units table as plain run folders; results.json adds
    the seed, no standard deviation."""
    for layout in ("plain", "seeded"):
        for (dataset, layers, obj, k), (nll, active) in TABLE1.items():
            run = tmp_path / layout / "runs" / table_key(dataset, layers, obj, k)
            if dataset == "mnist" and not run.exists():
                _write_run(run if layout == "plain" else run / "seed-0", nll + 1.0, active)
    reports = [write_report(tmp_path / layout, ["table1"], Schedule(stages=3, pass_scale=0.1), "c", ("mnist",))
               .read_text().split("## Appendix C and E")[0] for layout in ("plain", "seeded")]  # fmt: skip
    assert (
        reports[0] == reports[1]
        and "±" not in reports[0]
        and "| 1 | 50 | 87.35 (86.35, +1.00) | 20 (20) |" in (reports[0])
    )
    cell = json.loads((tmp_path / "seeded" / "results.json").read_text())["runs"]["mnist-l1-k1"]
    assert cell["seeds"] == [0] and cell["test_nll_seeds"] == [87.76] and "test_nll_sd" not in cell
    assert cell["active_units"] == [19]
