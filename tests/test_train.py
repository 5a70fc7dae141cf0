"""Training runs end to end: a tiny run, resume after an interruption (identical numbers), divergence, evaluation."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY, read_json
from safetensors.torch import load_file

import iwae.fleets.fleet
import iwae.runs.train
from iwae.runs import rundir
from iwae.runs.checkpoint import CheckpointError, load_checkpoint
from iwae.runs.config import TrainConfig, schedule
from iwae.runs.evaluate_run import evaluate_run


def _log_without_timings(run_dir) -> list[dict]:
    timings = ("seconds", "examples_per_s", "curve_seconds")
    return [{k: v for k, v in r.items() if k not in timings} for r in rundir.read_log(run_dir)]


def _same_checkpoints(a, b):
    ta, tb = load_file(str(a / "checkpoint.safetensors")), load_file(str(b / "checkpoint.safetensors"))
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


def _wrap_steps(monkeypatch, wrap):
    """Make the trainer's step call ``wrap(n, step, x)``, n counting steps from 1 across the whole run."""
    real = iwae.fleets.fleet.build_step
    calls = {"n": 0}

    def make(*args, **kwargs):
        step = real(*args, **kwargs)

        def wrapped(x):
            calls["n"] += 1
            return wrap(calls["n"], step, x)

        return wrapped

    monkeypatch.setattr(iwae.fleets.fleet, "build_step", make)


def _stop_after_checkpoint(config, run_dir, when) -> dict:
    """Train ``config`` into ``run_dir`` until the first checkpoint whose position satisfies ``when``, written, then
    stop as Ctrl-C does; that position is returned."""
    real, saved = rundir.save_state, {}

    def save(run_dir, model, optimizer, position, tensors, pending=False):
        real(run_dir, model, optimizer, position, tensors, pending=pending)
        if when(position):
            saved.update(position)
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(iwae.runs.train.rundir, "save_state", save)
        iwae.runs.train.train(config, run_dir, progress=False)
    return saved


def test_paper_schedule():
    stages = schedule(TrainConfig())
    assert [s.passes for s in stages] == [1, 3, 9, 27, 81, 243, 729, 2187] and sum(s.passes for s in stages) == 3280
    assert stages[0].lr == pytest.approx(1e-3) and stages[7].lr == pytest.approx(1e-4)
    assert stages[3].lr == pytest.approx(1e-3 * 10 ** (-3 / 7))
    ref = schedule(TrainConfig(lr_variant="reference"))
    assert [round(s.lr, 6) for s in ref] == [1e-3, 7.2e-4, 5.2e-4, 3.7e-4, 2.7e-4, 1.9e-4, 1.4e-4, 1e-4]
    assert TrainConfig(lr_variant="reference").adam_betas == (0.99, 0.999)
    assert [s.passes for s in schedule(TrainConfig(stages=3, pass_scale=0.5))] == [0.5, 1.5, 4.5]


def test_tiny_run_end_to_end(tiny_run, tiny_config):
    """``tiny_run`` is the folder of ``train_and_evaluate(run, tiny_config)`` (tests/conftest.py)."""
    run = tiny_run
    metrics = read_json(run / "metrics.json")
    for key in ("test_nll", "train_nll", "eval_k", "active_units", "test_nll_pruned", "train_seconds"):
        assert key in metrics
    assert 60 < metrics["test_nll"] < 300 and len(metrics["active_units"]) == 1
    # A_u of each unit, whose count above the threshold is active_units; the training time by machine
    threshold = metrics["active_threshold"]
    assert [sum(a > threshold for a in layer) for layer in metrics["activity"]] == metrics["active_units"]
    assert [len(layer) for layer in metrics["activity"]] == [50]  # the paper's 1-layer architecture
    (machine,) = metrics["train_machines"]  # all of it on this machine, as evaluated
    assert machine == metrics["eval_machine"] and metrics["train_machines"][machine] == metrics["train_seconds"]
    for name in ("samples.png", "active_units.png", "training.png", "config.json", "metrics.json"):
        assert (run / name).is_file()
    log = rundir.read_log(run)
    assert [r["stage"] for r in log] == [0, 1]
    assert log[-1]["pass"] == pytest.approx(0.08, abs=1e-3)  # 0.02 + 0.06 passes
    # evaluate is deterministic and writes its own file
    a = evaluate_run(run, k=10, n=30, progress=False)
    b = evaluate_run(run, k=10, n=30, progress=False)
    assert a.pop("seconds") > 0 and b.pop("seconds") > 0  # its time, which differs
    assert a == b and (run / "eval-test-k10-n30.json").is_file()
    assert a["passes"] == metrics["passes"] == log[-1]["pass"]  # the passes of the model scored: all of them
    with pytest.raises(rundir.RunError, match=r"already holds a finished run .*`iwae resume .* --re-evaluate`"):
        iwae.runs.train.train(tiny_config, run, progress=False)


def train_stopped_at(monkeypatch, config, run_dir, n: int = 130) -> None:
    """Train ``config`` into ``run_dir`` until a Ctrl-C at step ``n`` (130 of TINY: mid-pass in stage 2, the last
    checkpoint at step 100, so the checkpoint holds stage 1, step 50), then leave the steps as they were."""
    real = iwae.fleets.fleet.build_step

    def interrupt(i, step, x):
        if i == n:
            raise KeyboardInterrupt
        return step(x)

    _wrap_steps(monkeypatch, interrupt)
    with pytest.raises(KeyboardInterrupt):
        iwae.runs.train.train(config, run_dir, progress=False)
    monkeypatch.setattr(iwae.fleets.fleet, "build_step", real)


def test_resume_after_interruption_gives_identical_numbers(tiny_run, tiny_config, tmp_path, monkeypatch):
    """``tiny_run`` is the uninterrupted run of ``tiny_config``."""
    config = tiny_config
    train_stopped_at(monkeypatch, config, tmp_path / "broken")
    state, _ = load_checkpoint(tmp_path / "broken" / "checkpoint.safetensors", rundir.build_model(config))
    assert (state["stage"], state["step"]) == (1, 50)
    monkeypatch.setattr(iwae.runs.loop, "describe_machine", lambda device: "another machine")  # resumed elsewhere
    iwae.runs.train.resume(tmp_path / "broken", progress=False)
    _same_checkpoints(tiny_run, tmp_path / "broken")
    assert _log_without_timings(tmp_path / "broken") == _log_without_timings(tiny_run)
    # its training time by machine, through a stop, a resume and a stage's end: each part on its own machine
    state, _ = load_checkpoint(tmp_path / "broken" / "checkpoint.safetensors", rundir.build_model(config))
    from iwae.util.machine import describe

    assert set(state["train_machines"]) == {describe(), "another machine"}
    assert sum(state["train_machines"].values()) == pytest.approx(state["train_seconds"], abs=1e-9)


@pytest.mark.slow
def test_resume_after_kill_9_gives_identical_numbers(data_dir, tmp_path):
    """A real process killed with SIGKILL mid-run resumes to the uninterrupted result."""
    cfg = {**TINY, "stages": 3, "data_dir": data_dir}
    config = TrainConfig(**cfg)
    iwae.runs.train.train(config, tmp_path / "straight", progress=False)
    code = (
        "import sys, iwae.runs.train as t; from iwae.runs.config import TrainConfig; "
        f"t.train(TrainConfig(**{cfg!r}), sys.argv[1], progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "killed")])
    ckpt = tmp_path / "killed" / "checkpoint.safetensors"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # at once: the run, three stages long, is still training
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at, _ = load_checkpoint(ckpt, rundir.build_model(config))
    end, _ = load_checkpoint(tmp_path / "straight" / "checkpoint.safetensors", rundir.build_model(config))
    assert (killed_at["stage"], killed_at["step"]) != (end["stage"], end["step"]), "killed after the last checkpoint"
    iwae.runs.train.resume(tmp_path / "killed", progress=False)
    _same_checkpoints(tmp_path / "straight", tmp_path / "killed")


def test_learning_curve_is_logged_at_each_stage_end(tiny_run, tiny_config):
    log = rundir.read_log(tiny_run)
    ends = [i for i, r in enumerate(log) if i + 1 == len(log) or log[i + 1]["stage"] != r["stage"]]
    assert [i for i, r in enumerate(log) if "test_nll_curve" in r] == ends and len(ends) == tiny_config.stages
    for i in ends:
        assert (log[i]["curve_k"], log[i]["curve_n"]) == (tiny_config.curve_k, tiny_config.curve_n)
        assert 60 < log[i]["test_nll_curve"] < 600 and log[i]["test_nll_curve_sem"] > 0 and log[i]["curve_seconds"] > 0
    assert log[ends[-1]]["test_nll_curve"] < log[ends[0]]["test_nll_curve"]  # the model learns


def test_learning_curve_leaves_training_unchanged(tiny_run, tiny_config, tmp_path):
    """The curve draws from its own stream: without it the run trains to the very same checkpoint."""
    iwae.runs.train.train(tiny_config.replace(curve_k=0), tmp_path / "no-curve", progress=False)
    _same_checkpoints(tiny_run, tmp_path / "no-curve")
    assert not any("test_nll_curve" in r for r in rundir.read_log(tmp_path / "no-curve"))
    strip = ("test_nll_curve", "test_nll_curve_sem", "curve_k", "curve_n", "curve_seconds")
    with_curve = [{k: v for k, v in r.items() if k not in strip} for r in _log_without_timings(tiny_run)]
    assert with_curve == _log_without_timings(tmp_path / "no-curve")


def test_kill_between_curve_point_and_stage_checkpoint_neither_loses_nor_doubles_it(
    tiny_run, tiny_config, tmp_path, monkeypatch
):
    """The stage's last line (with its curve point) is written, then the run dies before the stage-end checkpoint."""
    real = rundir.save_state

    def die_at_stage_end(run_dir, model, optimizer, position, tensors, pending=False):
        if (position["stage"], position["step"]) == (1, 0):
            raise KeyboardInterrupt
        real(run_dir, model, optimizer, position, tensors, pending=pending)

    monkeypatch.setattr(iwae.runs.train.rundir, "save_state", die_at_stage_end)
    with pytest.raises(KeyboardInterrupt):
        iwae.runs.train.train(tiny_config, tmp_path / "broken", progress=False)
    assert "test_nll_curve" in rundir.read_log(tmp_path / "broken")[-1]  # written before the checkpoint
    monkeypatch.setattr(iwae.runs.train.rundir, "save_state", real)
    iwae.runs.train.resume(tmp_path / "broken", progress=False)
    _same_checkpoints(tiny_run, tmp_path / "broken")
    assert _log_without_timings(tmp_path / "broken") == _log_without_timings(tiny_run)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path, monkeypatch):
    def poison(n, step, x):
        loss = step(x)
        return loss * float("nan") if n >= 75 else loss

    _wrap_steps(monkeypatch, poison)
    config = tiny_config
    with pytest.raises(iwae.runs.train.TrainingDiverged, match="non-finite in stage 2, step 50"):
        iwae.runs.train.train(config, tmp_path / "run", progress=False)
    state, _ = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors", rundir.build_model(config))
    assert (state["stage"], state["step"]) == (1, 0)  # the end of stage 1: the last finite state


def test_truncated_or_foreign_checkpoint_is_refused(tmp_path):
    model = rundir.build_model(TrainConfig())
    opt = iwae.make_optimizer(model)
    path = tmp_path / "checkpoint.safetensors"
    iwae.runs.checkpoint.save_checkpoint(path, model, opt, {"stage": 0}, {})
    assert load_checkpoint(path, model, opt)[0]["stage"] == 0
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="unreadable or truncated checkpoint"):
        load_checkpoint(path, model)
    with torch.no_grad():
        model.encoder[0].mean.bias[0] = float("nan")
    iwae.runs.checkpoint.save_checkpoint(path, model, opt, {"stage": 0}, {})
    with pytest.raises(CheckpointError, match="non-finite values"):
        load_checkpoint(path, model)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]  # no temporary files left


class _Writer:
    """A stand-in for torch.utils.tensorboard.SummaryWriter that records what it is given."""

    logged: list[tuple[str, float, object]] = []

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir

    def add_scalar(self, tag: str, value: float, step: object) -> None:
        _Writer.logged.append((tag, value, step))

    def close(self) -> None:
        pass

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.mark.slow  # seconds: the default run stays under 3 minutes
def test_tensorboard_logs_by_integer_training_step_with_the_rate_and_the_final_evaluation(
    tiny_config, tmp_path, monkeypatch
):
    import types

    from iwae.runs.train import train_and_evaluate

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=_Writer))
    _Writer.logged = []
    metrics = train_and_evaluate(tmp_path / "run", tiny_config.replace(tensorboard=True), progress=False)
    steps = {tag: [s for t, _, s in _Writer.logged if t == tag] for tag, _, _ in _Writer.logged}
    per_pass = 2980  # 59,600 training images in minibatches of 20
    log = rundir.read_log(tmp_path / "run")
    assert steps["train/bound"] == [round(r["pass"] * per_pass) for r in log]  # integers, not fractional passes
    assert all(isinstance(s, int) for s in steps["train/bound"]) and len(set(steps["train/bound"])) == len(log)
    assert [v for t, v, _ in _Writer.logged if t == "train/lr"] == [r["lr"] for r in log]
    final = {t: v for t, v, _ in _Writer.logged if t.startswith("final/")}
    assert final == {"final/test_nll": metrics["test_nll"], "final/train_nll": metrics["train_nll"],
                     "final/test_nll_pruned": metrics["test_nll_pruned"],
                     "final/active_units": sum(metrics["active_units"])}  # fmt: skip


def test_tensorboard_missing_is_refused_before_the_folder_becomes_a_run(tiny_config, tmp_path, monkeypatch, capsys):
    from iwae.cli import main

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails: the package is absent
    monkeypatch.setattr("iwae.cli.commands.config_from_args", lambda args, path: tiny_config.replace(tensorboard=True))
    run = tmp_path / "tb0"
    assert main(["train", "--out", str(run), "--quiet"]) == 1
    assert "pip install 'iwae[tensorboard]'" in capsys.readouterr().err and not run.exists()  # the retry is free


def test_non_finite_parameters_after_a_finite_loss_are_never_checkpointed(tiny_config, tmp_path, monkeypatch):
    """A step whose loss is finite may leave non-finite parameters (its gradient was not): at the stage end that
    follows, the run stops before its curve point and its checkpoint, and the last good checkpoint still loads."""
    real, models = iwae.fleets.fleet.build_step, []

    def make(model, *args, **kwargs):
        models.append(model)
        return real(model, *args, **kwargs)

    def poison_at_stage_end(n, step, x):
        loss = step(x)
        if n == 60:  # stage 1's last step (0.02 of 2,980 steps)
            with torch.no_grad():
                next(models[0].parameters())[0] = float("nan")
        return loss

    monkeypatch.setattr(iwae.fleets.fleet, "build_step", make)
    _wrap_steps(monkeypatch, poison_at_stage_end)
    with pytest.raises(iwae.runs.train.TrainingDiverged, match="parameters became non-finite in stage 1, step 60"):
        iwae.runs.train.train(tiny_config, tmp_path / "run", progress=False)
    state, _ = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors", rundir.build_model(tiny_config))
    assert (state["stage"], state["step"]) == (0, 50)  # the last check before: finite, and it loads
    assert all("test_nll_curve" not in line for line in rundir.read_log(tmp_path / "run"))


@pytest.mark.slow
def test_a_run_resumed_after_two_stages_logs_the_passes_of_one_never_stopped(tiny_config, tmp_path):
    """A pass is counted from steps, so a run resumed in its third stage logs the very same ``pass`` values (a sum
    of fractional stage lengths and one division differ in their last bit)."""
    # 74, 224 and 670 steps: 74/2980 + 224/2980 + 670/2980 is not 298/2980 + 670/2980 in float64's last bit
    config = tiny_config.replace(stages=3, pass_scale=0.025, curve_n=0)
    iwae.runs.train.train(config, tmp_path / "whole", progress=False)
    _stop_after_checkpoint(config, tmp_path / "resumed", lambda p: p["stage"] == 2 and p["step"] >= 100)
    iwae.runs.train.resume(tmp_path / "resumed", progress=False)
    assert _log_without_timings(tmp_path / "resumed") == _log_without_timings(tmp_path / "whole")
    assert rundir.read_log(tmp_path / "whole")[-1]["pass"] != round(rundir.read_log(tmp_path / "whole")[-1]["pass"])


def test_a_log_that_lost_lines_is_said_and_the_run_goes_on_counting_what_is_there(tiny_config, tiny_run, tmp_path):
    _stop_after_checkpoint(tiny_config, tmp_path / "run", lambda p: (p["stage"], p["step"]) == (1, 0))
    log = tmp_path / "run" / "metrics.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-1]))  # the machine crashed before stage 1's last line reached the disk
    with pytest.warns(UserWarning, match="holds 0 lines but the checkpoint counts 1: the lines of 1 pass"):
        iwae.runs.train.resume(tmp_path / "run", progress=False)
    assert _log_without_timings(tmp_path / "run") == _log_without_timings(tiny_run)[1:]  # the rest as it was
    _same_checkpoints(tiny_run, tmp_path / "run")


def test_a_pass_resumed_in_its_middle_counts_the_seconds_it_had_taken(tiny_config, tmp_path):
    saved = _stop_after_checkpoint(tiny_config, tmp_path / "run", lambda p: (p["stage"], p["step"]) == (0, 50))
    iwae.runs.train.resume(tmp_path / "run", progress=False)
    assert saved["pass_seconds"] > 0
    assert rundir.read_log(tmp_path / "run")[0]["seconds"] >= saved["pass_seconds"]  # its first 50 steps' time too
