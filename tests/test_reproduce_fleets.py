"""`iwae reproduce --seeds --fleet`: runs per seed, packed into fleets where a fleet pays, fleets resumed as fleets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iwae.cli import main
from iwae.experiments.fleets import MAX_FLEET, pack, with_seeds
from iwae.experiments.plan import RunSpec, Schedule, plan
from iwae.fleets.fleet_train import MANIFEST_NAME
from iwae.runs.config import TrainConfig


def _spec(name: str, **changes) -> RunSpec:
    return RunSpec(name, TrainConfig(**changes))


def test_with_seeds_names_runs_and_their_sources_by_seed():
    specs = with_seeds(plan("table2", Schedule(), "ROOT"), [3, 4])
    names = [s.name for s in specs]
    assert "mnist-l1-k1/seed-3" in names and "mnist-l1-iwae-then-vae-k1/seed-4" in names and len(names) == 8
    cont = next(s for s in specs if s.name == "mnist-l1-vae-then-iwae-k50/seed-4")
    assert cont.config.seed == 4 and cont.config.init_from == "ROOT/mnist-l1-k1/seed-4"
    assert cont.after == ("mnist-l1-k1/seed-4",)


def test_pack_groups_compatible_new_runs_without_dependencies(tmp_path):
    specs = [
        _spec("a/seed-0", k=5, bound="iwae", seed=0), _spec("a/seed-1", k=5, bound="iwae", seed=1),
        _spec("b/seed-0", k=5, bound="vae", dataset="omniglot"),  # VAE and IWAE, two data sets: one fleet
        _spec("c/seed-0", k=50), _spec("c/seed-1", k=50, seed=1),
        _spec("d/seed-0", k=5, layers=2), _spec("e/seed-0", k=5, bound="miwae", m=2),  # alone in their kind
        RunSpec("f/seed-0", TrainConfig(k=5), after=("a/seed-0",)),  # depends on another run: alone
    ]  # fmt: skip
    units = pack(specs, tmp_path, "stacked")
    fleets = [[s.name for s in u.specs] for u in units if u.manifest is not None]
    assert fleets == [["a/seed-0", "a/seed-1", "b/seed-0"], ["c/seed-0", "c/seed-1"]]
    assert units[0].manifest == tmp_path / "fleets" / "a_seed-0.json"
    assert sorted(u.name for u in units if u.manifest is None) == ["d/seed-0", "e/seed-0", "f/seed-0"]
    assert [len(u.specs) for u in pack(specs, tmp_path, "auto", on_gpu=True) if u.manifest] == [3, 2]
    # on a CPU a fleet is no faster than its runs alone: auto packs nothing there, and off never does
    assert all(u.manifest is None for u in pack(specs, tmp_path, "auto") + pack(specs, tmp_path, "off"))
    many = [_spec(f"g/seed-{s}", k=1, seed=s) for s in range(MAX_FLEET + 2)]
    assert [len(u.specs) for u in pack(many, tmp_path, "loop")] == [MAX_FLEET, 2]


def test_pack_resumes_a_fleet_begun_earlier_and_leaves_lone_partial_runs_alone(tmp_path):
    (tmp_path / "fleets").mkdir()
    (tmp_path / "fleets" / "x.json").write_text(json.dumps({"runs": ["../a/seed-0", "../a/seed-1"], "step": 7,
                                                            "mode": "stacked"}))  # fmt: skip
    (tmp_path / "b" / "seed-0").mkdir(parents=True)
    (tmp_path / "b" / "seed-0" / "config.json").write_text("{}")  # partial, of no fleet
    specs = [_spec("a/seed-1", k=1, seed=1), _spec("b/seed-0", k=1), _spec("b/seed-1", k=1, seed=1)]
    units = pack(specs, tmp_path, "stacked")
    assert units[0].name == "x" and [s.name for s in units[0].specs] == ["a/seed-1"]
    assert units[0].members == ("a/seed-0", "a/seed-1")
    assert sorted(u.name for u in units[1:]) == ["b/seed-0", "b/seed-1"] and all(u.manifest is None for u in units[1:])


@pytest.mark.slow
def test_reproduce_with_seeds_trains_fleets_and_reports_the_spread(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["reproduce", "posteriors", "--out", str(out), "--stages", "1", "--pass-scale", "0.005", "--eval-k", "5",
            "--eval-n", "10", "--curve-k", "0", "--jobs", "2", "--data-dir", data_dir, "--seeds", "0,1",
            "--fleet", "stacked"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "mnist-2d-vae_seed-0: started (a fleet of 2 runs: mnist-2d-vae/seed-0, mnist-2d-vae/seed-1)" in printed
    manifests = sorted(p.name for p in (out / "runs" / "fleets").glob("*.json"))
    assert manifests == ["mnist-2d-iwae-k50_seed-0.json", "mnist-2d-iwae-k5_seed-0.json", "mnist-2d-vae_seed-0.json"]
    for run in ("mnist-2d-vae", "mnist-2d-iwae-k5", "mnist-2d-iwae-k50"):
        for seed in (0, 1):
            assert (out / "runs" / run / f"seed-{seed}" / "metrics.json").is_file()
    assert (out / "posteriors.png").is_file()
    assert main(args) == 0
    assert capsys.readouterr().out.count("already done, skipped") == 6
    assert not list(Path(out).rglob(MANIFEST_NAME))  # reproduce's fleets keep their manifests in runs/fleets


def test_status_lists_the_seed_folders_of_a_reproduction(tmp_path):
    from iwae.experiments.status import format_states, run_folders, run_states

    for run in ("a/seed-10", "a/seed-2", "b", "c/seed-0"):
        (tmp_path / "runs" / run).mkdir(parents=True)
        (tmp_path / "runs" / run / "requested-config.json").write_text("{}")
    (tmp_path / "runs" / "a" / "seed-x").mkdir()  # no run here
    names = [p.relative_to(tmp_path / "runs").as_posix() for p in run_folders(tmp_path)]
    assert names == ["a/seed-2", "a/seed-10", "b", "c/seed-0"]
    listing = format_states(run_states(tmp_path))
    assert "a/seed-10" in listing and "c/seed-0" in listing and "\nb " in listing
    (tmp_path / "snapshot").mkdir()  # a run folder beside runs/ (`iwae snapshot RUN --out snapshot`) is listed too
    (tmp_path / "snapshot" / "config.json").write_text("{}")
    assert [p.relative_to(tmp_path).as_posix() for p in run_folders(tmp_path)][-2:] == ["runs/c/seed-0", "snapshot"]
