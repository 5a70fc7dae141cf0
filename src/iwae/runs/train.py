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
``iwae resume`` loses nothing. The loop is :func:`iwae.runs.loop.step_runs`, the one that steps fleets: a single run
is a fleet of one whose checkpoints are written in place. The files of a run folder are :mod:`iwae.runs.rundir`'s.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from iwae.fleets.fleet import LoopFleet
from iwae.runs import rundir
from iwae.runs.config import TrainConfig, steps_per_pass
from iwae.runs.evaluate_run import code_version, finish_run
from iwae.runs.loop import step_runs
from iwae.runs.rundir import RunError, resolve_device
from iwae.runs.training_state import RunState, SharedData, check_objective_to_train, open_run
from iwae.util.cpu import flush_subnormals

__all__ = [
    "TrainingDiverged", "train", "resume", "train_and_evaluate", "default_threads", "cpu_work",
]  # fmt: skip

TENSORBOARD_NAME = "tensorboard"  # the run folder's TensorBoard log (--tensorboard)
SMALL_BATCH = 100  # batches up to this size run on one CPU thread unless told otherwise (default_threads)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


def default_threads(config: TrainConfig) -> int | None:
    """torch's CPU threads for a run when none are asked for: 1 on the CPU for batches of up to
    :data:`SMALL_BATCH`, else None (torch's own choice).

    One thread is about as fast as two for the paper's batch of 20 on an idle two-core machine, and does not slow
    down when another process holds a core, where two threads wait on each other and steps take many times longer.
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
        _refuse_exported(Path(run_dir))  # before the lock: nothing is written into a folder that is no run
        if not (Path(run_dir) / rundir.LOCK_NAME).exists():  # (with a lock file, the lock says if it is in use)
            rundir.read_config(run_dir)
    else:
        rundir.check_new(run_dir)  # before the lock too: nothing is written into a folder that holds a run
    with rundir.locked(run_dir, again=f"iwae resume {run_dir}"):  # one process per run folder, to the end
        code_version()  # the code this process runs, read before the checkout can move on (metrics.json's "code")
        if config is None:
            if changes:  # (not for a run that cannot train on here)
                check_objective_to_train(rundir.read_config(run_dir), Path(run_dir))
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
    """Train one run to the end of its schedule: the loop that steps fleets (:func:`iwae.runs.loop.step_runs`),
    with one run, its checkpoints written in place."""
    writer_class = _tensorboard() if config.tensorboard else None  # before the folder becomes a run
    loaded = SharedData(resolve_device(config.device))
    run = open_run(config, run_dir, fresh, create, loaded, again=f"run `iwae resume {run_dir}`")
    rundir.drop_pending(run_dir)  # a fleet's checkpoint never committed must not replace this run's own later
    run.pos.fleet_step = 0  # trained on its own from here: a fleet it was part of must not take it back (fleet_train)
    run.writer = writer_class(str(run_dir / TENSORBOARD_NAME)) if writer_class else None
    if progress:
        print(run.plan(), file=sys.stderr)

    def stepper(runs: list[RunState]) -> LoopFleet:
        return LoopFleet([run.model], [run.optimizer], [run.objective], [run.gens.device], compile=config.compile,
                         flush_denormal=config.flush_denormal, global_generators=[run.gens.global_])  # fmt: skip

    def diverged(run: RunState, why: str) -> None:
        raise TrainingDiverged(f"{why}; the last good checkpoint in {run_dir} is kept (try a lower learning rate "
                               "or another seed)")  # fmt: skip

    def describe(runs: list[RunState]) -> str:
        return f"stage {run.pos.stage + 1}/{len(run.stages)} lr {run.lr:.2e}" if not run.done else "done"

    def save(runs: list[RunState], step: int) -> None:
        run.save()  # in place: no fleet, no pending checkpoint

    with run.writer or nullcontext():  # the writer is closed however the loop ends
        step_runs([run], stepper, save, diverged, interval=60 * config.checkpoint_minutes, progress=progress,
                  describe=describe)  # fmt: skip


def _tensorboard() -> Any:
    """TensorBoard's ``SummaryWriter`` class, or a RunError saying how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise RunError("--tensorboard needs the `tensorboard` package: pip install 'iwae[tensorboard]'") from err
    return SummaryWriter


def _log_final(run_dir: Path, config: TrainConfig, metrics: dict[str, Any]) -> None:
    """The final evaluation in TensorBoard, at the run's last training step."""
    step = round(metrics["passes"] * steps_per_pass(config))
    with _tensorboard()(str(Path(run_dir) / TENSORBOARD_NAME)) as writer:
        for key in ("test_nll", "train_nll", "test_nll_pruned"):
            if metrics.get(key) is not None:  # (no pruned NLL for a model of one's own)
                writer.add_scalar(f"final/{key}", metrics[key], step)
        writer.add_scalar("final/active_units", sum(metrics["active_units"]), step)
