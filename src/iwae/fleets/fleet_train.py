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
import math
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from iwae.fleets.fleet import Fleet, make_fleet
from iwae.fleets.fleet_runs import FleetRun, SharedData, open_run
from iwae.runs import rundir
from iwae.runs.config import TrainConfig
from iwae.runs.evaluate_run import curve_point, finish_run
from iwae.runs.rundir import RunError, resolve_device
from iwae.runs.train import StopRequests, _log_pass, _stage_steps, cpu_work
from iwae.util.atomic import write_json

__all__ = ["MANIFEST_NAME", "train_fleet", "resume_fleet", "train_fleet_and_evaluate", "read_manifest"]

MANIFEST_NAME = "fleet.json"
_CHECK_EVERY = 50  # fleet steps between finiteness checks (one host synchronisation each)


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
        runs = [open_run(c, d, fresh=True, create=True, loaded=loaded) for c, d in zip(configs, run_dirs)]
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
    device = _check_fleet(configs)
    with cpu_work(configs[0], threads):
        loaded = SharedData(device)
        runs = []
        for name, config, d in zip(kept, configs, run_dirs):
            pending = rundir.pending_position(d)
            if pending is not None and pending.get("fleet_step") == record["step"]:
                rundir.commit_pending(d)
            rundir.drop_pending(d)
            run = open_run(config, d, fresh=not rundir.has_checkpoint(d), create=False, loaded=loaded)
            if not run.done and run.pos.fleet_step != record["step"]:
                raise RunError(
                    f"{d} is at fleet step {run.pos.fleet_step}, the fleet at {record['step']}: it was trained on its "
                    f"own since; continue it alone (`iwae resume {d}`) and remove {name} from {manifest}"
                )
            runs.append(run)
        return _loop(runs, manifest, names, record["mode"], dropped, progress)


def _loop(runs: list[FleetRun], manifest: Path, names: list[str], mode: str, dropped: dict[str, str],
          progress: bool) -> dict[str, str]:  # fmt: skip
    """Step the fleet until every run has finished its schedule or been dropped; the dropped runs."""
    active = [r for r in runs if not r.done]
    step = max((r.pos.fleet_step for r in runs), default=0)
    remaining = max((_steps_left(r) for r in active), default=0)
    interval = 60 * min((r.config.checkpoint_minutes for r in runs), default=5.0)
    # A fleet of CUDA graphs resumed on a CPU (--device cpu) steps as auto does there; the manifest keeps its mode.
    step_mode = "auto" if mode == "graph" and runs and runs[0].batches.x.device.type != "cuda" else mode
    with (
        StopRequests() as stop,
        tqdm(
            total=step + remaining, initial=step, unit="step", disable=not progress, desc=f"fleet of {len(runs)}"
        ) as bar,
    ):
        while active:
            fleet = make_fleet([r.model for r in active], [r.optimizer for r in active], [r.objective for r in active],
                               [r.gens.device for r in active], active[0].config.batch_size, step_mode,
                               flush_denormal=active[0].config.flush_denormal)  # fmt: skip
            step, left = _stretch(fleet, active, manifest, names, mode, dropped, step, interval, bar, stop)
            for r, why in left.items():
                dropped[os.path.relpath(r.run_dir, manifest.parent)] = why
            kept = [r for r in active if r not in left]  # the finished ones take their last checkpoint here
            _save_all(fleet, kept, manifest, names, mode, dropped, step)
            active = [r for r in kept if not r.done]
    return dropped


def _steps_left(run: FleetRun) -> int:
    per = run.batches.per_pass
    stages = run.stages[run.pos.stage :]
    return sum(_stage_steps(s.passes, per) for s in stages) - run.pos.step


def _stretch(fleet: Fleet, active: list[FleetRun], manifest: Path, names: list[str], mode: str, dropped: dict[str, str],
             step: int, interval: float, bar: tqdm, stop: StopRequests) -> tuple[int, dict[FleetRun, str]]:  # fmt: skip
    """Step ``fleet`` until one of its runs finishes or is dropped; the fleet step reached and the dropped runs.
    Ctrl-C or SIGTERM: the fleet step under way ends, the fleet checkpoints there, then stops."""
    sums = torch.tensor([r.pos.pass_loss for r in active], dtype=torch.float64, device=_device(active))
    last_save = tick = time.monotonic()
    while True:
        xs = []
        for i, r in enumerate(active):
            x, new_pass = r.next_batch()
            if new_pass:
                sums[i] = 0.0
            xs.append(x)
        sums += fleet.step(xs, [r.lr for r in active])
        step += 1
        bar.update()
        ends = [r.advance() for r in active]
        if step % _CHECK_EVERY and not any(p for p, _ in ends) and not stop.requested:
            continue
        now = time.monotonic()
        left = {}
        for r, loss in zip(active, sums.tolist()):
            r.pos.pass_loss, r.pos.train_seconds = loss, r.pos.train_seconds + now - tick
            if not math.isfinite(loss):
                left[r] = f"the training loss became non-finite in stage {r.pos.stage + 1}, step {r.pos.step}"
        tick = now
        if any(stage_end and r.curve_x is not None for r, (_, stage_end) in zip(active, ends)):
            fleet.sync()  # a curve point reads the run's own model (a checkpoint syncs for itself)
        for r, (pass_end, stage_end) in zip(active, ends):
            if pass_end and r not in left:
                record = r.pass_record(now - r.pass_start)
                if stage_end and r.curve_x is not None:
                    record |= curve_point(r.config, r.model, r.curve_x)
                _log_pass(r.run_dir, r.pos, record, bar, None)
            if stage_end and r not in left:
                r.next_stage()
        if left or any(r.done for r in active):
            return step, left
        if any(s for _, s in ends) or now - last_save >= interval or stop.requested:
            _save_all(fleet, active, manifest, names, mode, dropped, step)
            last_save = time.monotonic()
            stop.check()


def _device(runs: list[FleetRun]) -> torch.device:
    return runs[0].batches.x.device


def _save_all(fleet: Fleet, runs: list[FleetRun], manifest: Path, names: list[str], mode: str, dropped: dict[str, str],
              step: int) -> None:  # fmt: skip
    """The fleet's two-phase checkpoint: every run's pending checkpoint, the manifest's step, then each commit."""
    fleet.sync()
    for r in runs:
        r.save(step)
    _write_manifest(manifest, names, mode, step, dropped)
    for r in runs:
        rundir.commit_pending(r.run_dir)


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
    with ExitStack() as stack:
        for d in run_dirs:
            stack.enter_context(rundir.locked(d, again=f"iwae resume {Path(manifest).parent}"))
        if configs is None:
            for d in run_dirs if changes else ():  # settings of RESUMABLE, changed once every run is locked
                if (d / rundir.CONFIG_NAME).exists():
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
