"""The training loop, one for a single run and for a fleet: it steps N run states (:class:`RunState`) together.

For each step: every run takes its next minibatch (a new pass reshuffles), one step of the stepper (a
:class:`~iwae.fleets.fleet.Fleet`; a single run is a fleet of one) updates them all, and each run counts its step.
Every :data:`CHECK_EVERY` steps of a run's stage, at the end of any run's pass and when a signal arrived:

- a run whose loss is not finite leaves the loop (its last good checkpoint is kept), and so does one whose
  parameters are not, found before a curve point or a checkpoint;
- at the end of a pass a run logs its line to ``metrics.jsonl``, at the end of a stage with its learning-curve
  point (:func:`iwae.runs.evaluate_run.curve_point`), and moves on to its next stage;
- the runs are checkpointed (``save``) at a stage's end, when the interval has passed, or when Ctrl-C or SIGTERM
  arrived (:class:`StopRequests`), after which the signal is delivered.

When a run finishes or leaves, the stepper is rebuilt for the runs left. The callers: :mod:`iwae.runs.train` (one
run, its checkpoints written in place) and :mod:`iwae.fleets.fleet_train` (a fleet, two-phase checkpoints).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from iwae.runs import rundir
from iwae.runs.evaluate_run import curve_point
from iwae.runs.training_state import Position, RunState
from iwae.util.machine import describe as describe_machine

__all__ = ["CHECK_EVERY", "Stepper", "StopRequests", "step_runs", "log_pass"]

CHECK_EVERY = 50  # steps between finiteness checks and checkpoint-timer looks (one host synchronisation each)


class Stepper(Protocol):
    """What steps the runs: ``losses = stepper.step(xs, lrs)``, one loss per run; ``sync`` writes its state into
    the runs' own models and optimisers (:class:`~iwae.fleets.fleet.Fleet` is one)."""

    def step(self, xs: Sequence[torch.Tensor], lrs: Sequence[float]) -> torch.Tensor: ...

    def sync(self) -> None: ...


def step_runs(
    runs: list[RunState],
    make_stepper: Callable[[list[RunState]], Stepper],
    save: Callable[[list[RunState], int], None],
    on_leave: Callable[[RunState, str], None],
    *,
    interval: float,
    progress: bool,
    describe: Callable[[list[RunState]], str],
) -> None:
    """Step ``runs`` until each has finished its schedule or left it.

    :param make_stepper: the stepper of the runs still training (called again whenever one finishes or leaves).
    :param save: checkpoint these runs at this step of the loop (the stepper synced first).
    :param on_leave: told of a run whose loss stopped being finite, with why, before the others are checkpointed
        (a single run raises there; a fleet records it and goes on without it).
    :param interval: seconds between checkpoints within a stage.
    :param describe: the progress bar's label for the runs still training.
    """
    active = [r for r in runs if not r.done]
    step = max((r.pos.fleet_step for r in runs), default=0)
    with (
        StopRequests() as stop,
        tqdm(total=step + max((r.steps_left for r in active), default=0), initial=step, unit="step",
             disable=not progress, leave=False) as bar,
    ):  # fmt: skip
        while active:
            stepper = make_stepper(active)
            bar.set_description(describe(active))
            step, left = _stretch(stepper, active, save, step, interval, bar, stop, describe)
            for r, why in left.items():
                on_leave(r, why)
            kept = [r for r in active if r not in left]  # the finished ones take their last checkpoint here
            stepper.sync()
            save(kept, step)
            active = [r for r in kept if not r.done]


def _stretch(
    stepper: Stepper,
    active: list[RunState],
    save: Callable[[list[RunState], int], None],
    step: int,
    interval: float,
    bar: tqdm,
    stop: StopRequests,
    describe: Callable[[list[RunState]], str],
) -> tuple[int, dict[RunState, str]]:
    """Step until one of the runs finishes or leaves; the loop's step reached and the runs that left."""
    sums = torch.tensor([r.pos.pass_loss for r in active], dtype=torch.float64, device=active[0].batches.x.device)
    machine = describe_machine(active[0].batches.x.device)
    last_save = tick = time.monotonic()
    while True:
        xs = []
        for i, r in enumerate(active):
            x, new_pass = r.next_batch()
            if new_pass:
                sums[i] = 0.0
            xs.append(x)
        sums += stepper.step(xs, [r.lr for r in active])
        step += 1
        bar.update()
        ends = [r.advance() for r in active]
        due = any(r.pos.step % CHECK_EVERY == 0 for r in active)  # every CHECK_EVERY steps of a run's stage
        if not due and not any(p for p, _ in ends) and not stop.requested:
            continue
        now = time.monotonic()
        left = {}
        for r, loss in zip(active, sums.tolist()):
            r.pos.pass_loss = loss
            r.pos.spend(now - tick, machine)
            if not math.isfinite(loss):
                left[r] = f"the training loss became non-finite in stage {r.pos.stage + 1}, step {r.pos.step}"
        saving = any(s for _, s in ends) or now - last_save >= interval or stop.requested
        synced = saving or any(stage_end and r.curve_x is not None for r, (_, stage_end) in zip(active, ends))
        if synced:
            stepper.sync()  # a curve point reads the run's own model, a checkpoint its state
            # A finite loss may still leave non-finite parameters behind (a step's non-finite gradient): such a
            # run leaves before its state is measured or saved over its last good checkpoint.
            for r in active:
                if r not in left and not _finite(r.model):
                    left[r] = f"the model's parameters became non-finite in stage {r.pos.stage + 1}, step {r.pos.step}"
        for r, (pass_end, stage_end) in zip(active, ends):
            if pass_end and r not in left:
                record = r.pass_record(now - r.pass_start)
                if stage_end and r.curve_x is not None:
                    bar.set_description(f"test NLL point: L_{r.config.curve_k} on {r.curve_x.shape[0]} images")
                    record |= curve_point(r.config, r.model, r.curve_x)
                log_pass(r.run_dir, r.pos, record, bar, r.writer, step=round(record["pass"] * r.batches.per_pass))
            if stage_end and r not in left:
                r.next_stage()
                bar.set_description(describe(active))
        if left or any(r.done for r in active):
            return step, left
        if saving or stop.requested:  # (a signal may have come while the lines were written)
            if not synced:
                stepper.sync()
            save(active, step)
            last_save = time.monotonic()
            stop.check()
        tick = time.monotonic()  # training time: the steps', not the curve points' or the checkpoints'


def _finite(model: torch.nn.Module) -> bool:
    """Whether every parameter of ``model`` is finite (one host synchronisation)."""
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


def log_pass(
    run_dir: Path, pos: Position, record: dict[str, Any], bar: tqdm, writer: Any, step: int | None = None
) -> None:
    """One line of ``metrics.jsonl`` per pass (counted in ``pos``), also shown on the bar and in TensorBoard."""
    rundir.append_log(run_dir, record)
    pos.log_lines += 1
    bar.set_postfix(bound=f"{record['train_bound']:.2f}", ex_s=f"{record['examples_per_s']:.0f}")
    if writer is not None:  # TensorBoard's steps are integers: the training steps taken (``step``)
        writer.add_scalar("train/bound", record["train_bound"], step)
        writer.add_scalar("train/lr", record["lr"], step)
        if "test_nll_curve" in record:
            writer.add_scalar("test/nll_curve", record["test_nll_curve"], step)


class StopRequests:
    """Ctrl-C and SIGTERM while training, held until the step under way is done and checkpointed.

    The first signal is recorded (``requested``); :meth:`check`, called once a checkpoint holds the position,
    then delivers it to the handler that was in place before (KeyboardInterrupt for Ctrl-C, ``iwae``'s stop for
    SIGTERM). A second signal before that is delivered at once, and one still held when the block ends (the work
    is checkpointed by then) as it ends. Outside the main thread nothing is changed, nor are handlers installed
    outside Python (whose previous handler could not be put back).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            caught = [s for s in self.SIGNALS if signal.getsignal(s) not in (signal.SIG_IGN, None)]
            self._previous = {s: signal.signal(s, self._handle) for s in caught}
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._restore()
        if exc_type is None:
            self.check()

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:  # the second one: stop now
            self._deliver(signum)
        self.requested = signum

    def check(self) -> None:
        """Deliver the signal received, if any (the run is checkpointed at its position)."""
        if self.requested is not None:
            self._deliver(self.requested)

    def _deliver(self, signum: int) -> None:
        self.requested = None
        self._restore()
        signal.raise_signal(signum)
        raise KeyboardInterrupt  # the previous handler ignored it: stop all the same
