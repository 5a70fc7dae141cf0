"""The runs of a fleet as :mod:`iwae.fleets.fleet_train` steps them: each run's data, model, Adam, generators and
position (what :func:`iwae.runs.train._train` holds for a single run), and the training sets shared by the whole
fleet."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from iwae import data
from iwae.objectives import Objective
from iwae.runs import rundir
from iwae.runs.config import TrainConfig, schedule
from iwae.runs.evaluate_run import curve_images
from iwae.runs.rundir import build_model
from iwae.runs.train import _stage_steps, _start
from iwae.runs.train_step import make_optimizer
from iwae.runs.training_state import Batches, Generators, Position

__all__ = ["FleetRun", "SharedData", "open_run"]


@dataclass(eq=False)  # compared and hashed by identity
class FleetRun:
    """One run of the fleet: what :func:`iwae.runs.train._train` holds for a single run, stepped from outside."""

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
        return Objective.from_config(self.config)

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
        """The ``metrics.jsonl`` line of the pass just ended (as :func:`iwae.runs.train._train` writes it)."""
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


class SharedData:
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


def open_run(config: TrainConfig, run_dir: Path, fresh: bool, create: bool, loaded: SharedData) -> FleetRun:
    """A run ready to step: its data, model, Adam, generators and position (as :func:`iwae.runs.train._train`)."""
    x = loaded.train(config)
    batches = Batches(x, config.batch_size, dynamic=not data.is_binary(config.dataset))
    model = build_model(config, output_bias=x.mean(0)).to(loaded.device)
    optimizer = make_optimizer(model, betas=config.adam_betas)
    gens = Generators.seeded(config.seed, loaded.device, config.streams)
    rundir.check_space(run_dir, model, "start it again" if create else f"run `iwae resume {run_dir.parent}`")
    pos, perm = _start(config, run_dir, fresh, model, optimizer, gens, create)
    run = FleetRun(config, run_dir, model, optimizer, gens, batches, pos, perm, loaded.curve(config), schedule(config))
    run.passes_done = sum(_stage_steps(s.passes, batches.per_pass) for s in run.stages[: pos.stage]) / batches.per_pass
    return run
