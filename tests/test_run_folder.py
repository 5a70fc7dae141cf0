"""The run folder (iwae.runs.rundir): atomic files, the metrics log cut back on resume, status."""

from __future__ import annotations

import json

import pytest
import torch

from iwae.runs import rundir
from iwae.runs.config import TrainConfig


def test_status_new_partial_done(tmp_path):
    run = tmp_path / "run"
    assert rundir.status(run) == "new"
    rundir.create(run, TrainConfig(k=5))
    assert rundir.status(run) == "partial" and rundir.read_config(run) == TrainConfig(k=5)
    (run / rundir.METRICS_NAME).write_text("{}")
    assert rundir.status(run) == "done"


def test_create_writes_config_atomically_and_refuses_an_existing_run(tmp_path):
    run = tmp_path / "run"
    rundir.create(run, TrainConfig())
    assert [p.name for p in run.iterdir()] == [rundir.CONFIG_NAME]  # no temporary files left
    assert json.loads((run / rundir.CONFIG_NAME).read_text())["k"] == 50
    with pytest.raises(rundir.RunError, match="already holds a run; continue it with `iwae resume"):
        rundir.create(run, TrainConfig())
    with pytest.raises(rundir.RunError, match=r"elsewhere: no such folder; name a run folder"):
        rundir.read_config(tmp_path / "elsewhere")


def test_metrics_log_is_cut_back_to_the_checkpoint_on_resume(tmp_path):
    assert rundir.read_log(tmp_path) == []
    for i in range(4):
        rundir.append_log(tmp_path, {"pass": i})
    with open(tmp_path / rundir.LOG_NAME, "a") as f:
        f.write('{"pass": 4')  # a line cut short by a kill
    rundir.truncate_log(tmp_path, 2)
    assert rundir.read_log(tmp_path) == [{"pass": 0}, {"pass": 1}]
    rundir.append_log(tmp_path, {"pass": 2})
    assert [r["pass"] for r in rundir.read_log(tmp_path)] == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == [rundir.LOG_NAME]  # no temporary files left


def test_a_run_starting_over_gets_an_empty_metrics_log(tmp_path):
    rundir.truncate_log(tmp_path, 0)
    assert (tmp_path / rundir.LOG_NAME).read_text() == "" and rundir.read_log(tmp_path) == []


def test_status_of_a_stopped_run_says_its_passes_and_the_training_time_left_at_its_pace(tmp_path):
    """`iwae status`: passes done of the schedule's, and the time left at the pace of the last passes logged (their
    own seconds, whatever else the process did between them)."""
    from iwae.experiments.status import PACE_PASSES, run_states
    from iwae.runs.config import passes_text

    assert (passes_text(3280.0), passes_text(9.84)) == ("3,280", "9.84")  # whole passes without decimals

    run = tmp_path / "run"
    rundir.create(run, TrainConfig(stages=3))  # 1 + 3 + 9 = 13 passes
    (state,) = run_states(run)
    assert state.detail == f"0 of 13 passes (0%); continue: iwae resume {run}"  # nothing logged: no pace
    for p in range(1, PACE_PASSES + 3):  # the early passes slower: only the last PACE_PASSES set the pace
        rundir.append_log(run, {"pass": p / 2, "seconds": 9000.0 if p <= 2 else 1800.0, "train_bound": -100.0})
    (state,) = run_states(run)
    done = (PACE_PASSES + 2) / 2  # 11 passes, 20 half-passes of 1,800 s: 3,600 s a pass, 2 passes left
    assert state.detail == f"11 of 13 passes ({done / 13:.0%}); about 2.0 h of training left at " \
        f"3600.0 s a pass; continue: iwae resume {run}"  # fmt: skip


def test_passes_at_a_position_count_the_stages_before_it_and_the_steps_into_it():
    from iwae.runs.config import passes_at, steps_per_pass

    config = TrainConfig(stages=3)  # 1 + 3 + 9 passes over MNIST's 59,600 training images (400 held out)
    per_pass = steps_per_pass(config)
    assert per_pass == 2980
    assert [passes_at(config, 0, 0), passes_at(config, 1, 0), passes_at(config, 3, 0)] == [0, 1, 13]
    assert passes_at(config, 2, per_pass * 2 + 298) == 6.1 and passes_at(config, 0, 20) == 20 / per_pass


def test_status_gives_the_last_learning_curve_point_and_a_rise_above_the_best(tmp_path):
    """The curve's last test NLL; where it lies above the best point before it by more than its standard error (the
    run stopped improving, or diverges), that best too."""
    from iwae.experiments.status import run_states

    run = tmp_path / "run"
    rundir.create(run, TrainConfig(stages=3))
    curve = {1: (110.0, 1.0), 4: (99.5, 1.0), 5: None, 13: (100.2, 1.0)}
    for p, point in curve.items():
        record = {"pass": float(p), "seconds": 10.0, "train_bound": -100.0}
        if point is not None:
            record |= {"test_nll_curve": point[0], "test_nll_curve_sem": point[1]}
        rundir.append_log(run, record)
        if p == 4:
            assert "; test NLL 99.50 after 4 passes (curve); continue" in run_states(run)[0].detail
    assert "; test NLL 100.20 after 13 passes (curve); continue" in run_states(run)[0].detail  # within its error
    rundir.append_log(run, {"pass": 14.0, "seconds": 10.0, "test_nll_curve": 101.0, "test_nll_curve_sem": 1.0})
    assert "; test NLL 101.00 after 14 passes (curve), up from 99.50 after 4 passes; continue" in (
        run_states(run)[0].detail)  # fmt: skip
    rundir.append_log(run, {"pass": 15.0, "seconds": 10.0, "test_nll_curve": float("nan")})
    assert "; test NLL nan after 15 passes (curve), up from 99.50 after 4 passes" in run_states(run)[0].detail


def test_status_says_one_pass_and_skips_a_non_finite_best(tmp_path):
    from iwae.experiments.status import run_states

    run = tmp_path / "run"
    rundir.create(run, TrainConfig(stages=3))
    rundir.append_log(run, {"pass": 1.0, "seconds": 10.0, "test_nll_curve": float("nan")})
    assert "; test NLL nan after 1 pass (curve); continue" in run_states(run)[0].detail
    for p, value in ((2.0, 99.0), (3.0, 99.5)):  # the rise within 0 (no standard error recorded) is one
        rundir.append_log(run, {"pass": p, "seconds": 10.0, "test_nll_curve": value})
    assert "; test NLL 99.50 after 3 passes (curve), up from 99.00 after 2 passes" in run_states(run)[0].detail


def test_a_noise_stream_of_another_device_type_is_refused_naming_the_device_to_resume_on():
    """A CUDA generator's state (16 bytes: seed and offset) cannot continue a CPU generator's stream: one clear
    error, not torch's."""
    from iwae.runs.training_state import Generators

    gens = Generators.seeded(0, torch.device("cpu"), scheme=2)
    saved = gens.states()
    gens.restore(saved)  # its own states: fine
    with pytest.raises(
        rundir.RunError, match="drew its noise on a CUDA device.*resume it on a machine with a GPU .--device cuda."
    ):
        gens.restore({**saved, "rng_device": torch.zeros(16, dtype=torch.uint8)})


def test_a_run_of_a_bound_this_installation_lacks_names_its_config_and_the_likely_cause(tmp_path):
    rundir.create(tmp_path, TrainConfig())
    values = json.loads((tmp_path / rundir.CONFIG_NAME).read_text())
    (tmp_path / rundir.CONFIG_NAME).write_text(json.dumps({**values, "bound": "vr-max"}))  # a fork's bound
    with pytest.raises(rundir.RunError, match=f"{tmp_path / rundir.CONFIG_NAME}: unknown bound 'vr-max'; choose one "
                       r"of .* \(edited by hand, or made by another version of iwae or a fork\?\)"):  # fmt: skip
        rundir.read_config(tmp_path)


def test_a_run_that_starts_over_loses_what_described_its_old_model_and_keeps_the_rest(tmp_path):
    from iwae.runs import rundir

    gone = ["metrics.json", "samples.png", "active_units.png", "training.png", "test_ll.json",
            "eval-test-k20-n50.json", "eval-train-k20-n50-nll.progress.safetensors", "diagnostics-test-k20-n50.json",
            "diagnostics-test-k20-n50.png", "ais-test-s500-c16-n100.json",
            "ais-test-s5-c2-n3-prior.progress.safetensors", "bdmc-s100-c8-n100.json", "compare-a-b-test-k20-n50.json",
            "samples-n100-seed0.png"]  # fmt: skip
    kept = ["config.json", "checkpoint.safetensors", "metrics.jsonl", "notes.txt", "samples-of-mine.png"]
    for name in gone + kept:
        (tmp_path / name).write_text("x")
    rundir.clear_results(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
