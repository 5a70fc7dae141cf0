"""Training a fleet of runs (:mod:`iwae.fleet`): ordinary run folders, one step for all of them.

Each run of a fleet is an ordinary run folder (``config.json``, ``metrics.jsonl``, its own checkpoint, figures, final
evaluation) and follows its own schedule: its data order, binarisation, noise, learning rate at each step and log
lines are those of its single ``iwae train`` run, and ``iwae resume`` continues it alone. Runs of different
lengths (data sets of different sizes) leave the fleet as they finish; a run whose loss stops being finite leaves
it with its last good checkpoint (reported at the end).

The fleet's own file, ``fleet.json`` (the manifest), names its runs, its mode and the last fleet step at which all of
them were checkpointed. A checkpoint of the fleet is two-phase: every run's checkpoint is written beside its
current one (:data:`iwae.rundir.PENDING_NAME`), then the manifest records the step, then each run's new checkpoint
replaces its old one. Killed at any moment, the fleet resumes (:func:`resume_fleet`) with every run at the same
fleet step, so the resumed fleet computes exactly what the uninterrupted one would have. No run's folder reads
another's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from iwae import data, rundir
from iwae.atomic import write_json
from iwae.config import TrainConfig, schedule
from iwae.evaluate_run import curve_images, curve_point, finish_run
from iwae.fleet import Fleet, make_fleet
from iwae.objectives import Objective
from iwae.rundir import RunError, build_model, resolve_device
from iwae.train import _log_pass, _stage_steps, _start, cpu_threads
from iwae.train_step import make_optimizer
from iwae.training_state import Batches, Generators, Position

__all__ = ["MANIFEST_NAME", "train_fleet", "resume_fleet", "train_fleet_and_evaluate", "read_manifest"]

MANIFEST_NAME = "fleet.json"
_CHECK_EVERY = 50  # fleet steps between finiteness checks (one host synchronisation each)


@dataclass(eq=False)  # compared and hashed by identity
class _Run:
    """One run of the fleet: what :func:`iwae.train._train` holds for a single run, stepped from outside."""

    config: TrainConfig
    run_dir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    gens: Generators
    batches: Batches
    pos: Position
    perm: torch.Tensor | None
    curve_x: torch.Tensor | None
    stages: list = field(default_factory=list)
    passes_done: float = 0.0
    pass_start: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> bool:
        return self.pos.stage >= len(self.stages)

    @property
    def total(self) -> int:
        return _stage_steps(self.stages[self.pos.stage].passes, self.batches.per_pass)

    @property
    def lr(self) -> float:
        return self.stages[self.pos.stage].lr

    @property
    def objective(self) -> Objective:
        c = self.config
        return Objective(c.objective, c.k, c.estimator, c.m, c.beta)

    def next_batch(self) -> tuple[torch.Tensor, bool]:
        """The next minibatch, and whether it starts a pass (the permutation is drawn afresh there)."""
        t = self.pos.step % self.batches.per_pass
        new_pass = t == 0
        if new_pass:
            self.perm, self.pos.pass_loss, self.pass_start = (
                self.batches.shuffle(self.gens.shuffle),
                0.0,
                time.monotonic(),
            )
        return self.batches.get(self.perm, t, self.gens.device), new_pass

    def advance(self) -> tuple[bool, bool]:
        """Count a step; whether it ended a pass and whether it ended the stage."""
        self.pos.step += 1
        stage_end = self.pos.step == self.total
        return stage_end or self.pos.step % self.batches.per_pass == 0, stage_end

    def pass_record(self, seconds: float) -> dict[str, Any]:
        """The ``metrics.jsonl`` line of the pass just ended (as :func:`iwae.train._train` writes it)."""
        stage, per_pass = self.stages[self.pos.stage], self.batches.per_pass
        end = (self.pos.step - 1) % per_pass + 1
        return {
            "stage": stage.index, "lr": stage.lr, "pass": self.passes_done + self.pos.step / per_pass,
            "train_bound": -self.pos.pass_loss / end, "seconds": seconds,
            "examples_per_s": end * self.batches.size / max(seconds, 1e-9),
        }  # fmt: skip

    def next_stage(self) -> None:
        self.passes_done += self.total / self.batches.per_pass
        self.pos = dataclasses.replace(Position(stage=self.pos.stage + 1), train_seconds=self.pos.train_seconds,
                                       log_lines=self.pos.log_lines, fleet_step=self.pos.fleet_step)  # fmt: skip
        self.perm = None

    def save(self, fleet_step: int) -> None:
        self.pos.fleet_step = fleet_step
        tensors = self.gens.states() | ({} if self.perm is None else {"perm": self.perm})
        rundir.save_state(self.run_dir, self.model, self.optimizer, dataclasses.asdict(self.pos), tensors, pending=True)


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


class _Data:
    """Training sets and learning-curve images, loaded once per data set for the whole fleet."""

    def __init__(self, device: torch.device) -> None:
        self.device, self._train, self._curve = device, {}, {}

    def train(self, config: TrainConfig) -> torch.Tensor:
        key = (config.dataset, config.data_dir)
        if key not in self._train:
            self._train[key] = data.load(config.dataset, "train", config.data_dir).to(self.device)
        return self._train[key]

    def curve(self, config: TrainConfig) -> torch.Tensor | None:
        key = (config.dataset, config.data_dir, config.curve_n, config.seed)
        if config.has_curve and key not in self._curve:
            self._curve[key] = curve_images(config, self.device)
        return self._curve.get(key)


def _open(config: TrainConfig, run_dir: Path, fresh: bool, create: bool, loaded: _Data) -> _Run:
    """A run ready to step: its data, model, Adam, generators and position (as :func:`iwae.train._train`)."""
    x = loaded.train(config)
    batches = Batches(x, config.batch_size, dynamic=not data.is_binary(config.dataset))
    model = build_model(config, output_bias=x.mean(0)).to(loaded.device)
    optimizer = make_optimizer(model, betas=config.adam_betas)
    gens = Generators.seeded(config.seed, loaded.device)
    pos, perm = _start(config, run_dir, fresh, model, optimizer, gens, create)
    run = _Run(config, run_dir, model, optimizer, gens, batches, pos, perm, loaded.curve(config), schedule(config))
    run.passes_done = sum(_stage_steps(s.passes, batches.per_pass) for s in run.stages[: pos.stage]) / batches.per_pass
    return run


def _check_fleet(configs: list[TrainConfig]) -> torch.device:
    devices = {resolve_device(c.device) for c in configs}
    if len(devices) != 1:
        raise RunError(f"the runs of a fleet share one device, got {sorted(map(str, devices))}")
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

    :param mode: the fleet's step (:func:`iwae.fleet.make_fleet`): auto, stacked, graph or loop.
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
    with cpu_threads(configs[0], threads):
        loaded = _Data(device)
        runs = [_open(c, d, fresh=True, create=True, loaded=loaded) for c, d in zip(configs, run_dirs)]
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
    run_dirs = [manifest.parent / name for name in names]
    configs = [rundir.with_data_dir(rundir.read_config(d)) for d in run_dirs]
    device = _check_fleet(configs)
    with cpu_threads(configs[0], threads):
        loaded = _Data(device)
        runs = []
        for name, config, d in zip(names, configs, run_dirs):
            if name in dropped:
                continue
            pending = rundir.pending_position(d)
            if pending is not None and pending.get("fleet_step") == record["step"]:
                rundir.commit_pending(d)
            rundir.drop_pending(d)
            run = _open(config, d, fresh=not rundir.has_checkpoint(d), create=False, loaded=loaded)
            if not run.done and run.pos.fleet_step != record["step"]:
                raise RunError(
                    f"{d} is at fleet step {run.pos.fleet_step}, the fleet at {record['step']}: it was trained on its "
                    f"own since; continue it alone (`iwae resume {d}`) and remove {name} from {manifest}"
                )
            runs.append(run)
        return _loop(runs, manifest, names, record["mode"], dropped, progress)


def _loop(runs: list[_Run], manifest: Path, names: list[str], mode: str, dropped: dict[str, str],
          progress: bool) -> dict[str, str]:  # fmt: skip
    """Step the fleet until every run has finished its schedule or been dropped; the dropped runs."""
    active = [r for r in runs if not r.done]
    step = max((r.pos.fleet_step for r in runs), default=0)
    remaining = max((_steps_left(r) for r in active), default=0)
    interval = 60 * min(r.config.checkpoint_minutes for r in runs)
    with tqdm(
        total=step + remaining, initial=step, unit="step", disable=not progress, desc=f"fleet of {len(runs)}"
    ) as bar:
        while active:
            fleet = make_fleet([r.model for r in active], [r.optimizer for r in active], [r.objective for r in active],
                               [r.gens.device for r in active], active[0].config.batch_size, mode)  # fmt: skip
            step, left = _stretch(fleet, active, manifest, names, mode, dropped, step, interval, bar)
            for r, why in left.items():
                dropped[os.path.relpath(r.run_dir, manifest.parent)] = why
            kept = [r for r in active if r not in left]  # the finished ones take their last checkpoint here
            _save_all(fleet, kept, manifest, names, mode, dropped, step)
            active = [r for r in kept if not r.done]
    return dropped


def _steps_left(run: _Run) -> int:
    per = run.batches.per_pass
    stages = run.stages[run.pos.stage :]
    return sum(_stage_steps(s.passes, per) for s in stages) - run.pos.step


def _stretch(fleet: Fleet, active: list[_Run], manifest: Path, names: list[str], mode: str, dropped: dict[str, str],
             step: int, interval: float, bar: tqdm) -> tuple[int, dict[_Run, str]]:  # fmt: skip
    """Step ``fleet`` until one of its runs finishes or is dropped; the fleet step reached and the dropped runs."""
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
        if step % _CHECK_EVERY and not any(p for p, _ in ends):
            continue
        now = time.monotonic()
        left = {}
        for r, loss in zip(active, sums.tolist()):
            r.pos.pass_loss, r.pos.train_seconds = loss, r.pos.train_seconds + now - tick
            if not math.isfinite(loss):
                left[r] = f"the training loss became non-finite in stage {r.pos.stage + 1}, step {r.pos.step}"
        tick = now
        if any(p for p, _ in ends):
            fleet.sync()
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
        if any(s for _, s in ends) or now - last_save >= interval:
            _save_all(fleet, active, manifest, names, mode, dropped, step)
            last_save = time.monotonic()


def _device(runs: list[_Run]) -> torch.device:
    return runs[0].batches.x.device


def _save_all(fleet: Fleet, runs: list[_Run], manifest: Path, names: list[str], mode: str, dropped: dict[str, str],
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
) -> dict[str, Any]:
    """Train a new fleet (``configs`` given) or continue the one of ``manifest``, then evaluate every run that
    finished (:func:`iwae.evaluate_run.finish_run`) and has not been evaluated yet.

    :returns: ``{"metrics": {run folder: metrics.json}, "dropped": {run folder: why}}``.
    :raises RunError: another process holds one of the run folders.
    """
    run_dirs = [Path(d) for d in run_dirs]
    with ExitStack() as stack:
        for d in run_dirs:
            stack.enter_context(rundir.locked(d, again=f"iwae resume {Path(manifest).parent}"))
        if configs is None:
            dropped = resume_fleet(manifest, progress=progress, threads=threads)
        else:
            dropped = train_fleet(configs, run_dirs, manifest, mode=mode, progress=progress, threads=threads)
        metrics = {}
        for d in run_dirs:
            if os.path.relpath(d, Path(manifest).parent) in dropped or rundir.status(d) == "done":
                continue
            config = rundir.read_config(d)
            if config.evaluate:
                with cpu_threads(config, threads):
                    metrics[str(d)] = finish_run(d, progress=progress)
    return {"metrics": metrics, "dropped": dropped}
