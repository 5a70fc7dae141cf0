"""The training loop (Section 5.1): the paper's Adam schedule, dynamic binarization, resumable runs.

For each stage of the schedule (3^i passes at 1e-3 * 10^(-i/7)), for each pass over the data: shuffle, then for
each minibatch binarize it afresh and take one step; every 50 steps check that the loss is finite; at the end of a
pass log a line to ``metrics.jsonl``; at the end of a stage, measure the test NLL of the learning curve
(:func:`iwae.runs.evaluate_run.curve_point`, on the stage's last line) and checkpoint; checkpoint every few minutes too.
The checkpoint holds the model, Adam's moments, the :class:`~iwae.runs.training_state.Position` in the schedule, the
current pass's permutation and every generator state, so a run killed at any moment and resumed with :func:`resume`
reaches exactly the numbers it would have reached uninterrupted. The stage's last line, curve point included, is
written before the stage-end checkpoint that counts it: a run killed between the two drops that line on resume and
measures it again, so no point of the curve is lost or doubled. Ctrl-C or SIGTERM during training finishes the step
under way, writes a checkpoint there and then stops as the signal would have (a second one stops at once), so
``iwae resume`` loses nothing. The files of a run folder are :mod:`iwae.runs.rundir`'s.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from iwae import data
from iwae.data.datasets import SPLIT_SIZES
from iwae.objectives import Objective
from iwae.runs import rundir
from iwae.runs.config import TrainConfig, schedule
from iwae.runs.evaluate_run import curve_images, curve_point, finish_run
from iwae.runs.rundir import RunError, build_model, resolve_device
from iwae.runs.train_step import build_step, make_optimizer
from iwae.runs.training_state import Batches, Generators, Position, Saver
from iwae.util.cpu import flush_subnormals

__all__ = [
    "TrainingDiverged", "train", "resume", "train_and_evaluate", "default_threads", "cpu_work", "StopRequests",
]  # fmt: skip

_CHECK_EVERY = 50  # steps between finiteness checks and checkpoint-timer looks (one host sync each)
TENSORBOARD_NAME = "tensorboard"  # the run folder's TensorBoard log (--tensorboard)
SMALL_BATCH = 100  # batches up to this size run on one CPU thread unless told otherwise (default_threads)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


def default_threads(config: TrainConfig) -> int | None:
    """torch's CPU threads for a run when none are asked for: 1 on the CPU for batches of up to
    :data:`SMALL_BATCH`, else None (torch's own choice).

    One thread is about as fast as two for the paper's batch of 20 on an idle two-core machine, and does not slow
    down when another process holds a core, where two threads wait on each other: 17x slower steps measured.
    """
    return 1 if resolve_device(config.device).type == "cpu" and config.batch_size <= SMALL_BATCH else None


@contextmanager
def cpu_work(config: TrainConfig, threads: int | None = None) -> Iterator[None]:
    """Run the block on ``threads`` CPU threads (default :func:`default_threads`) with subnormal floats flushed to
    zero as the config says (``flush_denormal``, :mod:`iwae.util.cpu`), then restore torch's settings."""
    n, before = threads or default_threads(config), torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        with flush_subnormals(config.flush_denormal):
            yield
    finally:
        torch.set_num_threads(before)


def train(config: TrainConfig, run_dir: str | Path, *, progress: bool = True, threads: int | None = None) -> Path:
    """Start a new run in ``run_dir`` (which must not hold one) and train it to the end of its schedule.

    The device, the data and ``init_from`` are checked before the folder becomes a run (``config.json``, which
    records the data directory as an absolute path), so a failed start leaves nothing that blocks the retry.
    """
    run_dir = Path(run_dir)
    rundir.check_new(run_dir)
    config = config.replace(data_dir=rundir.absolute_data_dir(config.data_dir))
    with cpu_work(config, threads):
        _train(config, run_dir, fresh=True, progress=progress, create=True)
    return run_dir


def resume(run_dir: str | Path, *, progress: bool = True, threads: int | None = None) -> Path:
    """Continue a run from its last checkpoint (or from the start, if it was stopped before the first one)."""
    run_dir = Path(run_dir)
    _refuse_exported(run_dir)
    config = rundir.with_data_dir(rundir.read_config(run_dir))
    with cpu_work(config, threads):
        _train(config, run_dir, fresh=not rundir.has_checkpoint(run_dir), progress=progress)
    return run_dir


def train_and_evaluate(
    run_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
    threads: int | None = None,
    changes: dict[str, Any] | None = None,
    evaluate: bool | None = None,
) -> dict[str, Any] | None:
    """Train a new run from ``config``, or with no config continue the one in ``run_dir``; then evaluate it.

    The one entry point of ``iwae train``, ``iwae resume`` and each run of ``iwae reproduce``. Returns the
    ``metrics.json`` of :func:`iwae.runs.evaluate_run.finish_run`, or None when the run is not evaluated.

    :param threads: torch's CPU threads for the training and the evaluation (default :func:`default_threads`).
    :param changes: with no config, settings of :data:`~iwae.runs.config.RESUMABLE` to change first (device, data
        directory, evaluation), recorded in the run's ``config.json``.
    :param evaluate: whether to evaluate (default: the config's ``evaluate``).
    :raises RunError: another process holds the run folder (:func:`iwae.runs.rundir.locked`), or the disk filled up.
    """
    if config is None:
        _refuse_exported(Path(run_dir))  # before the lock: nothing is written into it
    with rundir.locked(run_dir, again=f"iwae resume {run_dir}"):  # one process per run folder, to the end
        if config is None:
            if changes:
                rundir.update_config(run_dir, changes)
            resume(run_dir, progress=progress, threads=threads)
        else:
            train(config, run_dir, progress=progress, threads=threads)
        final = rundir.read_config(run_dir)
        if not (final.evaluate if evaluate is None else evaluate):
            return None
        with cpu_work(final, threads):
            metrics = finish_run(run_dir, progress=progress)
        if final.tensorboard:
            _log_final(run_dir, final, metrics)
        return metrics


def _refuse_exported(run_dir: Path) -> None:
    """An exported model (its weights alone) has nothing to continue, and training it afresh would erase it."""
    if rundir.is_exported(run_dir):
        raise RunError(f"{run_dir} is an exported model (model.safetensors, no checkpoint): it cannot be trained "
                       f"further; evaluate it with `iwae evaluate {run_dir}`")  # fmt: skip


def _train(config: TrainConfig, run_dir: Path, *, fresh: bool, progress: bool, create: bool = False) -> None:
    device = resolve_device(config.device)
    x = data.load(config.dataset, "train", config.data_dir).to(device)
    batches = Batches(x, config.batch_size, dynamic=not data.is_binary(config.dataset))
    model = build_model(config, output_bias=x.mean(0)).to(device)
    optimizer = make_optimizer(model, betas=config.adam_betas)
    gens = Generators.seeded(config.seed, device, config.streams)
    curve_x = curve_images(config, device) if config.has_curve else None
    rundir.check_space(run_dir, model, "start it again" if create else f"run `iwae resume {run_dir}`")
    writer_class = _tensorboard() if config.tensorboard else None  # before the folder becomes a run
    pos, perm = _start(config, run_dir, fresh, model, optimizer, gens, create)
    rundir.drop_pending(run_dir)  # a fleet's checkpoint never committed must not replace this run's own later
    pos.fleet_step = 0  # trained on its own from here: a fleet it was part of must not take it back (fleet_train)
    step = build_step(model, optimizer, Objective.from_config(config), generator=gens.device, compile=config.compile,
                      flush_denormal=config.flush_denormal)  # fmt: skip
    saver = Saver(run_dir, model, optimizer, gens, 60 * config.checkpoint_minutes)
    writer = writer_class(str(run_dir / TENSORBOARD_NAME)) if writer_class else None
    stages, per_pass = schedule(config), batches.per_pass
    passes_done = sum(_stage_steps(s.passes, per_pass) for s in stages[: pos.stage]) / per_pass
    with StopRequests() as stop, writer or nullcontext():  # the writer is closed however the loop ends
        while pos.stage < len(stages):
            stage = stages[pos.stage]
            total = _stage_steps(stage.passes, per_pass)
            for group in optimizer.param_groups:
                group["lr"] = stage.lr
            desc = f"stage {stage.index + 1}/{len(stages)} lr {stage.lr:.2e}"
            with tqdm(total=total, initial=pos.step, unit="step", disable=not progress, leave=False, desc=desc) as bar:
                while pos.step < total:
                    first = pos.step % per_pass  # not 0 only when resuming mid-pass
                    if first == 0:  # a new pass: reshuffle
                        perm, pos.pass_loss = batches.shuffle(gens.shuffle), 0.0
                    end = min(per_pass, first + total - pos.step)  # a stage's last pass may be cut short
                    seconds = _run_pass(step, batches, perm, gens.device, range(first, end), pos, saver, bar, stop)
                    record = {
                        "stage": stage.index, "lr": stage.lr, "pass": passes_done + pos.step / per_pass,
                        "train_bound": -pos.pass_loss / end, "seconds": seconds,
                        "examples_per_s": end * batches.size / max(seconds, 1e-9),
                    }  # fmt: skip
                    if pos.step == total and curve_x is not None:  # the stage's last pass: a point of the curve
                        record |= curve_point(config, model, curve_x)
                    _log_pass(run_dir, pos, record, bar, writer, step=round(record["pass"] * per_pass))
                    if pos.step < total and (saver.due() or stop.requested):
                        saver.save(pos, perm)
                        stop.check()
            passes_done += total / per_pass
            pos = Position(stage=pos.stage + 1, train_seconds=pos.train_seconds, log_lines=pos.log_lines)
            perm = None
            saver.save(pos, perm)
            stop.check()  # a signal during the stage's last pass or its curve point: stopped at this checkpoint


def _start(
    config: TrainConfig,
    run_dir: Path,
    fresh: bool,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    gens: Generators,
    create: bool,
) -> tuple[Position, torch.Tensor | None]:
    """The start of the schedule (from ``init_from``'s model, if given), or the checkpoint's position and pass.

    With ``create``, the folder becomes a run here, once everything before has loaded. Lines of ``metrics.jsonl``
    written after the position are dropped: they will be written again; a run starting over also loses the
    results of its earlier evaluations.
    """
    pos, perm = Position(), None
    if fresh and config.init_from:
        _, source, _ = rundir.load_run(config.init_from)
        model.load_state_dict(source.state_dict())
    elif not fresh:
        saved, extra = rundir.load_state(run_dir, model, optimizer)
        pos, perm = Position(**saved), extra.get("perm")
        gens.restore(extra)
    if create:
        rundir.create(run_dir, config)
    elif fresh:
        rundir.clear_results(run_dir)
    rundir.truncate_log(run_dir, pos.log_lines)
    return pos, perm


def _run_pass(
    step: Callable[[torch.Tensor], torch.Tensor],
    batches: Batches,
    perm: torch.Tensor,
    gen: torch.Generator,
    steps: range,
    pos: Position,
    saver: Saver,
    bar: tqdm,
    stop: StopRequests,
) -> float:
    """Minibatches ``steps`` of the pass over ``perm``, one training step each; the seconds they took.

    Every :data:`_CHECK_EVERY` steps of the stage and after the last: stop if the loss is not finite (the last
    checkpoint is kept), else record the pass's loss so far and the time in ``pos``; mid-pass, checkpoint if due.
    After a step during which Ctrl-C or SIGTERM arrived: the same, then a checkpoint, then stop.
    """
    loss_sum = torch.tensor(pos.pass_loss, device=batches.x.device, dtype=torch.float64)
    start = tick = time.monotonic()
    for t in steps:
        loss_sum += step(batches.get(perm, t, gen))
        pos.step += 1
        bar.update()
        last = t == steps[-1]
        if pos.step % _CHECK_EVERY != 0 and not last and not stop.requested:
            continue
        if not torch.isfinite(loss_sum):
            raise TrainingDiverged(
                f"the training loss became non-finite in stage {pos.stage + 1}, step {pos.step}; the last good "
                f"checkpoint in {saver.run_dir} is kept (try a lower learning rate or another seed)"
            )
        now = time.monotonic()
        pos.train_seconds, pos.pass_loss, tick = pos.train_seconds + now - tick, float(loss_sum), now
        if not last and (saver.due() or stop.requested):
            saver.save(pos, perm)
            stop.check()
    return tick - start


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


def _log_pass(
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


def _stage_steps(passes: float, steps_per_pass: int) -> int:
    """Steps in a stage of ``passes`` passes (fractional passes allowed, at least one step)."""
    return max(1, round(passes * steps_per_pass))


def _tensorboard() -> Any:
    """TensorBoard's ``SummaryWriter`` class, or a RunError saying how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise RunError("--tensorboard needs the `tensorboard` package: pip install 'iwae[tensorboard]'") from err
    return SummaryWriter


def _log_final(run_dir: Path, config: TrainConfig, metrics: dict[str, Any]) -> None:
    """The final evaluation in TensorBoard, at the run's last training step."""
    per_pass = math.ceil(SPLIT_SIZES[config.dataset]["train"] / config.batch_size)
    step = round(metrics["passes"] * per_pass)
    with _tensorboard()(str(Path(run_dir) / TENSORBOARD_NAME)) as writer:
        for key in ("test_nll", "train_nll", "test_nll_pruned"):
            writer.add_scalar(f"final/{key}", metrics[key], step)
        writer.add_scalar("final/active_units", sum(metrics["active_units"]), step)
