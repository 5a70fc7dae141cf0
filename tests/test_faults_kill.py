"""kill -9 at random moments of a short run (a training step, a checkpoint half written or written but not yet
renamed, a log line, the final evaluation, a figure or ``metrics.json`` not yet renamed): every killed run,
continued, reaches the uninterrupted run's exact numbers.

Each moment is the n-th event of the run; a forked copy of this process runs ``iwae train``'s function and sends
itself SIGKILL at that event, so the kill lands exactly there, in a real process that gets no chance to clean up.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TINY
from safetensors import safe_open
from test_faults import _same_run

import iwae.data
import iwae.fleets.fleet
import iwae.runs.checkpoint
import iwae.runs.evaluate_run
import iwae.runs.train
from iwae.cli import main
from iwae.experiments.status import run_states
from iwae.runs import rundir
from iwae.runs.config import TrainConfig, passes_text, steps_per_pass
from iwae.util import atomic

# 120 training steps in two stages, a checkpoint mid-stage and at each stage's end, a small evaluation.
SHORT = {**TINY, "pass_scale": 0.01, "eval_n": 20}


def _hook(setattr: Callable, event: Callable[[str], None]) -> None:
    """Call ``event(kind)`` before each training step, checkpoint write, log line, evaluation and rename."""
    make_step, save_file, append_log = iwae.fleets.fleet.build_step, iwae.runs.checkpoint.save_file, rundir.append_log
    log_likelihood, replace = iwae.runs.evaluate_run.log_likelihood, atomic.os.replace

    def make(*args, **kwargs):
        step = make_step(*args, **kwargs)
        return lambda x: (event("step"), step(x))[1]

    def save(tensors, filename, metadata=None):
        event("checkpoint")  # a kill here leaves a half-written temporary file (written by `event`)
        save_file(tensors, filename, metadata=metadata)

    setattr(iwae.fleets.fleet, "build_step", make)  # the step of a run (a fleet of one) and of a looping fleet
    setattr(iwae.runs.checkpoint, "save_file", save)
    setattr(rundir, "append_log", lambda *a: (event("log"), append_log(*a))[1])
    setattr(iwae.runs.evaluate_run, "log_likelihood", lambda *a, **k: (event("evaluate"), log_likelihood(*a, **k))[1])
    setattr(atomic.os, "replace", lambda src, dst: (event("rename"), replace(src, dst))[1])


def _killed_at(moment: int, run: Path, config: TrainConfig) -> None:
    """Run ``config`` into ``run`` in a forked process that SIGKILLs itself at event number ``moment``."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            count = iter(range(1, moment + 1))

            def event(kind: str) -> None:
                if next(count, None) == moment:
                    if kind == "checkpoint":
                        (run / ".checkpoint.safetensors-half.tmp").write_bytes(b"\0" * 100)
                    os.kill(os.getpid(), signal.SIGKILL)

            _hook(setattr, event)
            iwae.runs.train.train_and_evaluate(run, config, progress=False)
        finally:
            os._exit(3)  # not killed: the moment lay beyond the run's end
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"moment {moment}: not killed"


def _moments(events: list[str], n: int, rng: random.Random) -> set[int]:
    """``n`` random event numbers (from 1): one of each kind first, the rarest kinds first, then any."""
    kinds = ("checkpoint", "rename", "evaluate", "log", "step")
    chosen = {rng.choice([i for i, e in enumerate(events, 1) if e == kind]) for kind in kinds[:n]}
    rest = [i for i in range(1, len(events) + 1) if i not in chosen]
    return chosen | set(rng.sample(rest, n - len(chosen)))


def _kill_and_continue(n: int, data_dir: str, tmp_path: Path, monkeypatch) -> None:
    config = TrainConfig(**{**SHORT, "data_dir": data_dir})
    monkeypatch.setattr(iwae.data, "load", functools.cache(iwae.data.load))  # read MNIST once, not in every run
    events: list[str] = []
    with monkeypatch.context() as m:
        _hook(m.setattr, events.append)
        iwae.runs.train.train_and_evaluate(tmp_path / "straight", config, progress=False)
    assert {"step", "checkpoint", "log", "evaluate", "rename"} <= set(events)
    moments = sorted(_moments(events, n, random.Random(0)))
    for moment in moments:
        run = tmp_path / f"killed-{moment}-{events[moment - 1]}"
        _killed_at(moment, run, config)
        # `iwae resume RUN`, or `iwae train` again if the kill came before config.json was in place
        iwae.runs.train.train_and_evaluate(run, None if rundir.status(run) == "partial" else config, progress=False)
        _same_run(tmp_path / "straight", run)


@pytest.mark.slow  # seconds of subprocesses; the single run's Ctrl-C test stays in the default run
def test_kill_9_at_a_few_moments_resumes_to_the_same_numbers(data_dir, tmp_path, monkeypatch):
    _kill_and_continue(3, data_dir, tmp_path, monkeypatch)


@pytest.mark.slow
def test_kill_9_at_20_moments_resumes_to_the_same_numbers(data_dir, tmp_path, monkeypatch):
    _kill_and_continue(20, data_dir, tmp_path, monkeypatch)


def _interrupted_at(step: int, run: Path, config: TrainConfig, signals: int) -> int:
    """Run ``config`` into ``run`` in a forked process that sends itself ``signals`` SIGINTs during training step
    number ``step``; the child's exit code (130: stopped by KeyboardInterrupt)."""
    pid = os.fork()
    if pid == 0:
        code = 3  # not interrupted
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, however pytest was started
        try:
            count = iter(range(1, step + 1))

            def event(kind: str) -> None:
                if kind == "step" and next(count, None) == step:
                    for _ in range(signals):
                        os.kill(os.getpid(), signal.SIGINT)

            _hook(setattr, event)
            iwae.runs.train.train_and_evaluate(run, config, progress=False)
        except KeyboardInterrupt:
            code = 130
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_ctrl_c_checkpoints_the_step_under_way_and_resume_loses_nothing(data_dir, tmp_path, monkeypatch, capsys):
    config = TrainConfig(**{**SHORT, "data_dir": data_dir, "checkpoint_minutes": 60.0})  # no timed checkpoint
    monkeypatch.setattr(iwae.data, "load", functools.cache(iwae.data.load))
    iwae.runs.train.train_and_evaluate(tmp_path / "straight", config, progress=False)
    run = tmp_path / "interrupted"
    assert _interrupted_at(20, run, config, signals=1) == 130
    with safe_open(str(run / rundir.CHECKPOINT_NAME), framework="pt") as f:
        position = json.loads(f.metadata()["state"])
    assert (position["stage"], position["step"]) == (0, 20)  # the step under way finished, then checkpointed
    (state,) = run_states(run)  # `iwae status RUN`: where it stopped and how to go on
    assert state.state == "stopped" and state.detail.endswith(f"; continue: iwae resume {run}")
    assert state.detail.startswith(f"{passes_text(20 / steps_per_pass(config))} of ")  # the checkpoint's, mid-pass
    copy = Path(shutil.copytree(run, tmp_path / "copy"))  # (evaluated apart: the run itself is compared below)
    assert main(["evaluate", str(copy), "--k", "2", "--n", "4", "--quiet"]) == 0  # the model mid-training, said so
    assert f"{copy} (unfinished: after {passes_text(20 / steps_per_pass(config))} of 0.04 passes): test NLL" in (
        capsys.readouterr().out)  # fmt: skip
    assert json.loads((copy / "eval-test-k2-n4.json").read_text())["passes"] == 20 / steps_per_pass(config)
    iwae.runs.train.train_and_evaluate(run, None, progress=False)
    _same_run(tmp_path / "straight", run)
    assert rundir.read_log(run)[-1]["pass"] < 0.04  # 30 + 89 steps of 2,980 a pass: the stages rounded to steps
    assert main(["evaluate", str(run), "--k", "2", "--n", "4", "--quiet"]) == 0
    assert "unfinished" not in capsys.readouterr().out  # trained to the end of its schedule, as rounded
    # a second Ctrl-C stops at once: no checkpoint of that step
    again = tmp_path / "twice"
    assert _interrupted_at(20, again, config, signals=2) == 130
    assert not (again / rundir.CHECKPOINT_NAME).exists()
