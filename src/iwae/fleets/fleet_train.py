"""Training a fleet of runs (:mod:`iwae.fleets.fleet`): ordinary run folders, one step for all of them.

Each run of a fleet is an ordinary run folder (``config.json``, ``metrics.jsonl``, its own checkpoint, figures, final
evaluation) and follows its own schedule: its data order, binarisation, noise, learning rate at each step and log
lines are those of its single ``iwae train`` run, and ``iwae resume`` continues it alone. Runs of different
lengths (data sets of different sizes) leave the fleet as they finish; a run whose loss stops being finite leaves
it with its last good checkpoint (reported at the end).

The fleet's own file, ``fleet.json`` (the manifest), names its runs, its mode and the last fleet step at which all of
them were checkpointed. A checkpoint of the fleet is two-phase: every run's checkpoint is written beside its
current one (:data:`iwae.runs.rundir.PENDING_NAME`), then the manifest records the step, then each run's new checkpoint
replaces its old one. Killed at any moment, the fleet resumes (:func:`resume_fleet`) with every run at the same
fleet step, so the resumed fleet computes exactly what the uninterrupted one would have. No run's folder reads
another's.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from iwae.fleets.fleet import Fleet, make_fleet
from iwae.objectives.names import ESTIMATORS, KINDS
from iwae.runs import rundir
from iwae.runs.config import TrainConfig
from iwae.runs.evaluate_run import code_version, finish_run
from iwae.runs.loop import step_runs
from iwae.runs.rundir import RunError, resolve_device
from iwae.runs.train import cpu_work
from iwae.runs.training_state import RunState, SharedData, check_objective_to_train, open_run
from iwae.util.atomic import write_json

__all__ = ["MANIFEST_NAME", "train_fleet", "resume_fleet", "train_fleet_and_evaluate", "read_manifest"]

MANIFEST_NAME = rundir.FLEET_MANIFEST


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A fleet's ``fleet.json``: its runs (folders relative to it), mode, committed step and dropped runs."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
        manifest["runs"], manifest["step"], manifest["mode"]  # noqa: B018 (the keys every manifest has)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RunError(
            f"{path} is not a fleet manifest ({err}); start the fleet again or resume its runs alone"
        ) from err
    return manifest


def _write_manifest(path: Path, runs: list[str], mode: str, step: int, dropped: dict[str, str]) -> None:
    write_json(path, {"runs": runs, "mode": mode, "step": step, "dropped": dropped})


def _check_fleet(configs: list[TrainConfig]) -> torch.device:
    devices = {resolve_device(c.device) for c in configs}
    if len(devices) != 1:
        raise RunError(f"the runs of a fleet share one device, got {sorted(map(str, devices))}")
    if len({c.flush_denormal for c in configs}) > 1:
        raise RunError("the runs of a fleet share one flush_denormal setting; train the others in a fleet of their own")
    return devices.pop()


def _check_before_folders(configs: list[TrainConfig], mode: str) -> None:
    """A ValueError, before any folder is made, for a stacked fleet of models, bounds or estimators of one's own,
    and for a bound or an estimator of one's own that does not import or fit (:meth:`TrainConfig.check_objective`)."""
    for config in configs:
        config.check_objective()
    if mode not in ("stacked", "graph"):
        return
    own = [f"a model of one's own ({c.model})" for c in configs if c.model is not None]
    own += [f"an estimator of one's own ({c.estimator})" for c in configs if c.estimator not in ESTIMATORS]
    own += [f"a bound of one's own ({c.bound})" for c in configs if c.bound not in KINDS]
    if own:
        raise ValueError(f"--fleet {mode} stacks the paper's layers and computes the package's bounds and reparam "
                         f"and STL losses: {own[0]} is stepped by a loop fleet; use --fleet loop or auto")  # fmt: skip


def train_fleet(
    configs: list[TrainConfig],
    run_dirs: list[str | Path],
    manifest: str | Path,
    *,
    mode: str = "auto",
    progress: bool = True,
    threads: int | None = None,
) -> dict[str, str]:
    """Start new runs ``run_dirs`` from ``configs`` as one fleet (manifest file ``manifest``) and train them.

    :param mode: the fleet's step (:func:`iwae.fleets.fleet.make_fleet`): auto, stacked, graph or loop.
    :returns: the runs dropped on the way (folder -> why), none if every run trained to its end.
    """
    if len(configs) != len(run_dirs) or not configs:
        raise ValueError("train_fleet needs one config per run folder, at least one")
    _check_before_folders(configs, mode)
    manifest = Path(manifest)
    if manifest.exists():
        raise RunError(f"{manifest} already holds a fleet; continue it with `iwae resume {manifest.parent}`")
    run_dirs = [Path(d) for d in run_dirs]
    for d in run_dirs:
        rundir.check_new(d)
    configs = [c.replace(data_dir=rundir.absolute_data_dir(c.data_dir)) for c in configs]
    device = _check_fleet(configs)
    with cpu_work(configs[0], threads):
        loaded = SharedData(device)
        again = f"run `iwae resume {manifest.parent}`"
        runs = [open_run(c, d, True, True, loaded, again) for c, d in zip(configs, run_dirs)]
        names = [os.path.relpath(d, manifest.parent) for d in run_dirs]
        _write_manifest(manifest, names, mode, 0, {})
        return _loop(runs, manifest, names, mode, {}, progress)


def resume_fleet(manifest: str | Path, *, progress: bool = True, threads: int | None = None) -> dict[str, str]:
    """Continue a fleet from its manifest: every run from its checkpoint of the manifest's step.

    A kill between the two phases of a fleet checkpoint leaves some runs with a pending checkpoint: those of the
    committed step are put in place, older ones dropped.
    :raises RunError: a run was continued on its own after the fleet's last checkpoint.
    """
    manifest = Path(manifest)
    record = read_manifest(manifest)
    names, dropped = record["runs"], dict(record.get("dropped", {}))
    kept = [name for name in names if name not in dropped]  # a dropped run's folder is not read (may be gone)
    if not kept:
        return dropped
    run_dirs = [manifest.parent / name for name in kept]
    configs = [rundir.with_data_dir(rundir.read_config(d)) for d in run_dirs]
    for config, d in zip(configs, run_dirs):  # (every run's, before any pending checkpoint is put in place)
        check_objective_to_train(config, d)
    device = _check_fleet(configs)
    with cpu_work(configs[0], threads):
        loaded = SharedData(device)
        runs = []
        for name, config, d in zip(kept, configs, run_dirs):
            pending = rundir.pending_position(d)
            if pending is not None and pending.get("fleet_step") == record["step"]:
                rundir.commit_pending(d)
            rundir.drop_pending(d)
            again = f"run `iwae resume {manifest.parent}`"
            run = open_run(config, d, not rundir.has_checkpoint(d), False, loaded, again)
            if not run.done and run.pos.fleet_step != record["step"]:
                raise RunError(
                    f"{d} is at fleet step {run.pos.fleet_step}, the fleet at {record['step']}: it was trained on its "
                    f"own since; continue it alone (`iwae resume {d}`) and remove {name} from {manifest}"
                )
            runs.append(run)
        return _loop(runs, manifest, names, record["mode"], dropped, progress)


def _loop(runs: list[RunState], manifest: Path, names: list[str], mode: str, dropped: dict[str, str],
          progress: bool) -> dict[str, str]:  # fmt: skip
    """Step the fleet (:func:`iwae.runs.loop.step_runs`) until every run has finished its schedule or been dropped;
    the dropped runs."""
    interval = 60 * min((r.config.checkpoint_minutes for r in runs), default=5.0)
    # A fleet of CUDA graphs resumed on a CPU (--device cpu) steps as auto does there; the manifest keeps its mode.
    step_mode = "auto" if mode == "graph" and runs and runs[0].batches.x.device.type != "cuda" else mode

    def stepper(active: list[RunState]) -> Fleet:
        return make_fleet([r.model for r in active], [r.optimizer for r in active], [r.objective for r in active],
                          [r.gens.device for r in active], step_mode, flush_denormal=active[0].config.flush_denormal,
                          global_generators=[r.gens.global_ for r in active])  # fmt: skip

    def save(active: list[RunState], step: int) -> None:
        """The fleet's two-phase checkpoint: every run's pending checkpoint, the manifest's step, then each commit."""
        for r in active:
            r.save(step)
        _write_manifest(manifest, names, mode, step, dropped)
        for r in active:
            rundir.commit_pending(r.run_dir)

    def leave(run: RunState, why: str) -> None:
        dropped[os.path.relpath(run.run_dir, manifest.parent)] = why

    if progress and (plans := [r.plan() for r in runs if not r.done]):
        print("\n".join(plans), file=sys.stderr)
    step_runs(runs, stepper, save, leave, interval=interval, progress=progress,
              describe=lambda active: f"fleet of {len(active)}")  # fmt: skip
    return dropped


def train_fleet_and_evaluate(
    run_dirs: list[str | Path],
    manifest: str | Path,
    configs: list[TrainConfig] | None = None,
    *,
    mode: str = "auto",
    progress: bool = True,
    threads: int | None = None,
    changes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a new fleet (``configs`` given) or continue the one of ``manifest``, then evaluate every run that
    finished (:func:`iwae.runs.evaluate_run.finish_run`) and has not been evaluated yet.

    :param changes: continuing a fleet, settings of :data:`~iwae.runs.config.RESUMABLE` to change in every run first.
    :returns: ``{"metrics": {run folder: metrics.json}, "dropped": {run folder: why}}``.
    :raises RunError: another process holds one of the run folders.
    """
    run_dirs = [Path(d) for d in run_dirs]
    _check_before_folders(configs or [], mode)
    with ExitStack() as stack:
        for d in run_dirs:
            stack.enter_context(rundir.locked(d, again=f"iwae resume {Path(manifest).parent}"))
        code_version()  # the code this process runs, read before the checkout can move on (metrics.json's "code")
        if configs is None:
            changed = [d for d in run_dirs if changes and (d / rundir.CONFIG_NAME).exists()]
            for d in changed:  # (not for runs that cannot train on here)
                check_objective_to_train(rundir.read_config(d), d)
            for d in changed:  # settings of RESUMABLE, changed once every run is locked
                rundir.update_config(d, changes)
            dropped = resume_fleet(manifest, progress=progress, threads=threads)
        else:
            dropped = train_fleet(configs, run_dirs, manifest, mode=mode, progress=progress, threads=threads)
        metrics = {}
        for d in run_dirs:
            if os.path.relpath(d, Path(manifest).parent) in dropped or rundir.status(d) == "done":
                continue
            config = rundir.read_config(d)
            if config.evaluate:
                with cpu_work(config, threads):
                    metrics[str(d)] = finish_run(d, progress=progress)
    return {"metrics": metrics, "dropped": dropped}
