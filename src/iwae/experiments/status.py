"""``iwae status DIR``: which runs are done, running, queued, failed or stopped, for local and Slurm runs alike.

A run's state comes from its folder and from whatever works in it:

- done: the run is evaluated (``metrics.json``, :func:`iwae.runs.rundir.status`);
- running or queued: its Slurm job (``slurm-job.json``) is in Slurm's queue, running or waiting; or, locally, a
  process holds the folder's ``.lock`` (running), or the ``iwae reproduce`` that holds the reproduction's lock will
  still start it (queued);
- failed: its Slurm job ended and left the run unfinished, or the local child process said so in ``log.txt``;
  the last lines of the job's log are shown;
- stopped (created, unfinished, nothing working on it: ``iwae resume`` continues it), trained (every pass trained,
  not evaluated as it asked: ``iwae resume RUN --eval`` evaluates it), exported (``iwae export``'s weights alone) or
  new.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import NamedTuple

from iwae.experiments.runner import FAILED_LINE, REQUESTED_NAME
from iwae.experiments.slurm import JOB_NAME, queue_states
from iwae.runs.config import passes_at, passes_text, total_passes
from iwae.runs.eval_progress import describe_saved
from iwae.runs.evaluate_run import evaluation_sizes
from iwae.runs.rundir import (
    CONFIG_NAME,
    LOCK_NAME,
    RunError,
    checkpoint_position,
    is_exported,
    read_config,
    read_log,
    status,
)

__all__ = ["RunState", "run_folders", "run_states", "format_states"]

LOG_LINES = 8  # of a failed run's log
PACE_PASSES = 20  # the time left is estimated at the pace of this many last passes


class RunState(NamedTuple):
    """A run folder's state, what runs it (a Slurm job id, a PID) and, for a failure, its log's last lines."""

    path: Path
    state: str
    detail: str = ""
    log_tail: tuple[str, ...] = ()


def run_folders(folder: Path) -> list[Path]:
    """The run folders of ``folder``: itself if it is one, else those in ``folder/runs`` and in ``folder``, and the
    ``seed-<S>`` run folders in those (``--seeds``)."""
    if not folder.is_dir():
        raise ValueError(
            f"{folder} is not a folder: name a run folder, a reproduction's --out folder or a folder of runs"
        )
    if _is_run(folder):
        return [folder]
    runs = []
    for parent in [folder / "runs"] * (folder / "runs").is_dir() + [folder]:
        for p in sorted(p for p in parent.iterdir() if p.is_dir()):
            runs += [p] if _is_run(p) else sorted((s for s in p.glob("seed-*") if _is_run(s)), key=_seed_order)
    if not runs:
        raise ValueError(f"{folder} holds no run folder (made by `iwae train` or `iwae reproduce`)")
    return runs


def _seed_order(path: Path) -> tuple[int, str]:
    number = path.name.removeprefix("seed-")
    return (int(number), "") if number.isdigit() else (-1, path.name)


def _name(path: Path) -> str:
    """A run's name in the listing: its folder's, with the plan run's for a seed folder (``mnist-l1-k1/seed-2``)."""
    return f"{path.parent.name}/{path.name}" if path.name.startswith("seed-") else path.name


def _is_run(path: Path) -> bool:
    """Whether ``path`` is a run folder, or one that a reproduction has planned."""
    return any((path / name).is_file() for name in (CONFIG_NAME, REQUESTED_NAME, JOB_NAME))


def _lock_holder(folder: Path) -> int | None:
    """The PID holding ``folder/.lock`` (an flock listed in /proc/locks), or None."""
    lock = folder / LOCK_NAME
    try:
        inode = lock.stat().st_ino
        held = any(line.split()[5].endswith(f":{inode}") for line in Path("/proc/locks").read_text().splitlines()
                   if line.split()[1] == "FLOCK")  # fmt: skip
        pid = int(lock.read_text().strip() or 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid if held and pid else None


def _tail(path: Path) -> tuple[str, ...]:
    try:
        return tuple(path.read_text(errors="replace").rstrip().splitlines()[-LOG_LINES:])
    except OSError:
        return ()


def _state(run: Path, queue: dict[str, str], reproducing: bool) -> RunState:
    if is_exported(run):
        return RunState(run, "exported", "a model's weights alone: iwae evaluate, sample and compare take it")
    if status(run) == "done":
        return RunState(run, "done")
    job = json.loads((run / JOB_NAME).read_text()) if (run / JOB_NAME).is_file() else None
    if job and job["job_id"] in queue:
        state = "running" if queue[job["job_id"]] in ("RUNNING", "COMPLETING") else "queued"
        return RunState(run, state, f"Slurm job {job['job_id']}, {queue[job['job_id']].lower()}")
    if (pid := _lock_holder(run)) is not None:
        return RunState(run, "running", f"PID {pid}{_progress(run)}")
    if job:
        return RunState(run, "failed", f"Slurm job {job['job_id']} ended; {job['stderr']}", _tail(Path(job["stderr"])))
    log = _tail(run / "log.txt")
    if log and log[-1].startswith(FAILED_LINE):
        return RunState(run, "failed", str(run / "log.txt"), log)
    if reproducing:
        return RunState(run, "queued", "waits for `iwae reproduce`")
    if status(run) == "partial":
        if _trained_without_evaluation(run):
            return RunState(run, "trained", f"not evaluated (--no-eval); evaluate it: iwae resume {run} --eval")
        return RunState(
            run,
            "stopped",
            f"{_progress(run, stopped=True).removeprefix(', ')}; continue: iwae resume {run}".lstrip("; "),
        )
    return RunState(run, "new")


def _trained_without_evaluation(run: Path) -> bool:
    """Whether the run asked for no final evaluation (``--no-eval``) and has trained every pass of its schedule."""
    try:
        log, config = read_log(run), read_config(run)
    except (OSError, ValueError, RunError):
        return False
    return not config.evaluate and bool(log) and log[-1]["pass"] >= total_passes(config)


def _progress(run: Path, *, stopped: bool = False) -> str:
    """``, P of T passes`` (P from the last line of metrics.jsonl, or for a ``stopped`` run from its checkpoint,
    where ``iwae resume`` goes on from, mid-pass too; T from the run's schedule), or nothing."""
    try:
        log, config = read_log(run), read_config(run)
        total = total_passes(config)
    except (OSError, ValueError, RunError):
        return ""
    done = log[-1]["pass"] if log else 0.0
    if stopped and (position := checkpoint_position(run)) is not None:
        done = passes_at(config, position["stage"], position["step"])
        log = log[: position.get("log_lines", len(log))]  # (the lines beyond it, resume cuts: not its pace or curve)
    scored = describe_saved(run, config.eval_k, evaluation_sizes(config)) if done >= total else ""
    saved = f"; final evaluation so far: {scored}" if scored else ""
    share = f"{min(done / total, 1.0):.0%}"
    return f", {passes_text(done)} of {passes_text(total)} passes ({share}){_time_left(log, total)}{_curve(log)}{saved}"


def _curve(log: list[dict]) -> str:
    """``; test NLL V after P passes (curve)``, the last learning-curve point, and, where it lies above the best
    point before it by more than its own standard error over images (a conservative threshold: the two share their
    images and noise), or is not finite (a diverged run), that best; or nothing."""
    points = [r for r in log if r.get("test_nll_curve") is not None]
    if not points:
        return ""
    last = points[-1]
    text = f"; test NLL {last['test_nll_curve']:.2f} after {_passes(last['pass'])} (curve)"
    finite = [r for r in points[:-1] if math.isfinite(r["test_nll_curve"])]
    if finite:
        best = min(finite, key=lambda r: r["test_nll_curve"])
        sem = last.get("test_nll_curve_sem")
        margin = sem if isinstance(sem, float) and math.isfinite(sem) else 0.0
        if not last["test_nll_curve"] - best["test_nll_curve"] <= margin:  # (NaN too)
            text += f", up from {best['test_nll_curve']:.2f} after {_passes(best['pass'])}"
    return text


def _passes(n: float) -> str:
    return f"{passes_text(n)} pass{'' if n == 1 else 'es'}"


def _time_left(log: list[dict], total: float) -> str:
    """``; about T of training left at S s a pass``, at the pace of the last :data:`PACE_PASSES` passes logged (the
    training steps' own time: not the curve points, the checkpoints or the final evaluation), or nothing."""
    recent = log[-PACE_PASSES:]
    if not recent or total <= log[-1]["pass"]:
        return ""
    span = log[-1]["pass"] - (log[-len(recent) - 1]["pass"] if len(log) > len(recent) else 0.0)
    per_pass = sum(r["seconds"] for r in recent) / span
    left = (total - log[-1]["pass"]) * per_pass
    when = f"{left / 3600:.1f} h" if left >= 3600 else f"{left / 60:.0f} min" if left >= 60 else f"{left:.0f} s"
    return f"; about {when} of training left at {per_pass:.1f} s a pass"


def run_states(folder: str | Path) -> list[RunState]:
    """The state of every run folder of ``folder`` (:func:`run_folders`)."""
    runs = run_folders(Path(folder))
    jobs = [json.loads((r / JOB_NAME).read_text())["job_id"] for r in runs if (r / JOB_NAME).is_file()]
    queue = queue_states(jobs) if jobs else {}
    under = next((p for p in runs[0].parents if p.name == "runs"), None)  # a reproduction's DIR/runs
    reproduction = under.parent if under is not None else None
    reproducing = reproduction is not None and _lock_holder(reproduction) not in (None, os.getpid())
    return [_state(run, queue, reproducing and under in run.parents) for run in runs]  # (not a folder beside runs/)


def format_states(states: list[RunState]) -> str:
    """One line per run (a failure's log lines below it), then the count of each state."""
    lines = []
    for s in states:
        lines.append(f"{_name(s.path):32s} {s.state:8s} {s.detail}".rstrip())
        lines += [f"    | {line}" for line in s.log_tail]
    counts: dict[str, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    return "\n".join(lines + [", ".join(f"{n} {state}" for state, n in counts.items())])
