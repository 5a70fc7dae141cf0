"""The state of a run in training: its :class:`Position` in the schedule, its random :class:`Generators`, the
:class:`Batches` of its training set, and the :class:`RunState` that holds them with its model and optimiser, as
:func:`open_run` makes it ready for the loop (:mod:`iwae.runs.loop`) that steps single runs and fleets alike."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from iwae import data
from iwae.objectives import Objective
from iwae.runs import rundir
from iwae.runs.config import Stage, TrainConfig, schedule, stage_steps
from iwae.runs.evaluate_run import curve_images, describe_evaluation
from iwae.runs.own_model import check_sampler
from iwae.runs.rundir import build_model
from iwae.runs.train_step import make_optimizer
from iwae.util import streams

__all__ = ["Position", "Generators", "Batches", "RunState", "SharedData", "open_run"]


@dataclass
class Position:
    """Where a run stands in its schedule: saved (as JSON) in every checkpoint beside the tensors."""

    stage: int = 0  # index into schedule(config)
    step: int = 0  # steps taken in this stage
    train_seconds: float = 0.0  # seconds spent in passes, over every session of the run
    log_lines: int = 0  # lines of metrics.jsonl that belong to this position
    pass_loss: float = 0.0  # sum of the current pass's losses so far (float64, so exact in JSON)
    fleet_step: int = 0  # steps of the fleet the run trains in (iwae.fleets.fleet_train), 0 for a run of its own
    pass_seconds: float = 0.0  # seconds the pass under way had taken when the position was saved
    # train_seconds by the machine that spent them (iwae.util.machine.describe): a run resumed elsewhere says where
    # its time went; seconds of checkpoints written before this was kept are in train_seconds alone
    train_machines: dict[str, float] = field(default_factory=dict)

    def spend(self, seconds: float, machine: str) -> None:
        """Count ``seconds`` of training, spent on ``machine``."""
        self.train_seconds += seconds
        self.train_machines[machine] = self.train_machines.get(machine, 0.0) + seconds


@dataclass
class Generators:
    """The run's training streams (:func:`iwae.util.streams.generator`); their states go into every checkpoint."""

    shuffle: torch.Generator  # the permutation of each pass, on the CPU
    device: torch.Generator  # binarizations and reparameterisation noise, on the model's device
    # code of one's own: what its steps draw from torch's global generator (dropout), on the model's device
    global_: torch.Generator | None = None

    @classmethod
    def seeded(cls, seed: int, device: torch.device, scheme: int, own_code: bool = False) -> Generators:
        """The streams of ``seed`` under the run's random-stream ``scheme`` (its config's ``streams``); with
        ``own_code`` (a model, a bound or an estimator of one's own), the stream its steps' global draws come from
        too (:meth:`LoopFleet.step <iwae.fleets.fleet.LoopFleet.step>` swaps it in)."""
        return cls(
            streams.generator(seed, "shuffle", scheme=scheme),
            streams.generator(seed, "noise", device=device, scheme=scheme),
            # (new with code of one's own: scheme 2's stream whatever the run's scheme, which has no such stream 1)
            streams.generator(seed, "global", device=device) if own_code else None,
        )

    def states(self) -> dict[str, torch.Tensor]:
        own = {} if self.global_ is None else {"rng_global": self.global_.get_state()}
        return {"rng_shuffle": self.shuffle.get_state(), "rng_device": self.device.get_state(), **own}

    def restore(self, states: dict[str, torch.Tensor]) -> None:
        """Put both streams where a checkpoint left them; a RunError if its noise stream is another device type's
        (a CPU generator's state and a CUDA one's differ in size: the stream cannot go on there)."""
        self.shuffle.set_state(states["rng_shuffle"])
        on_cpu = self.device.device.type == "cpu"
        if states["rng_device"].numel() != self.device.get_state().numel():
            other, there = (
                ("a CUDA device", "on a machine with a GPU (--device cuda)")
                if on_cpu
                else ("the CPU", "with --device cpu")
            )
            raise rundir.RunError(
                f"this run drew its noise on {other}, and that random stream cannot continue on "
                f"{self.device.device.type}; resume it {there}, or train it again here from its config.json"
            )
        self.device.set_state(states["rng_device"].cpu() if on_cpu else states["rng_device"])
        if self.global_ is not None and "rng_global" in states:
            self.global_.set_state(states["rng_global"].cpu() if on_cpu else states["rng_global"])


@dataclass
class Batches:
    """The training set's minibatches: a fresh permutation per pass, each minibatch binarized afresh if dynamic."""

    x: torch.Tensor  # (N, 784) training intensities, on the model's device
    size: int
    dynamic: bool  # binarize afresh at every use (Section 5), or use fixed 0/1 data as it is

    @property
    def per_pass(self) -> int:
        return math.ceil(self.x.shape[0] / self.size)

    def shuffle(self, gen: torch.Generator) -> torch.Tensor:
        return torch.randperm(self.x.shape[0], generator=gen).to(self.x.device)

    def get(self, perm: torch.Tensor, t: int, gen: torch.Generator) -> torch.Tensor:
        """Minibatch ``t`` of the pass over ``perm``: (size, 784), the last one of a pass possibly smaller."""
        xb = self.x[perm[t * self.size : (t + 1) * self.size]]
        return data.binarize(xb, generator=gen) if self.dynamic else xb


@dataclass(eq=False)  # compared and hashed by identity
class RunState:
    """One run in training, stepped from outside (:func:`iwae.runs.loop.step_runs`): alone or in a fleet."""

    config: TrainConfig
    run_dir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    gens: Generators
    batches: Batches
    pos: Position
    perm: torch.Tensor | None
    curve_x: torch.Tensor | None
    stages: list[Stage] = field(default_factory=list)
    steps_done: int = 0  # the steps of the stages finished (a pass is counted from steps: the same after a resume)
    pass_start: float = field(default_factory=time.monotonic)
    writer: Any = None  # a TensorBoard SummaryWriter (--tensorboard), or None

    @property
    def done(self) -> bool:
        return self.pos.stage >= len(self.stages)

    @property
    def total(self) -> int:
        """Steps in the current stage."""
        return stage_steps(self.stages[self.pos.stage].passes, self.batches.per_pass)

    @property
    def steps_left(self) -> int:
        per = self.batches.per_pass
        return sum(stage_steps(s.passes, per) for s in self.stages[self.pos.stage :]) - self.pos.step

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
        """Count a step; whether it ended a pass (a stage's last pass may be cut short) and whether it ended the
        stage."""
        self.pos.step += 1
        stage_end = self.pos.step == self.total
        return stage_end or self.pos.step % self.batches.per_pass == 0, stage_end

    def plan(self) -> str:
        """What the run will do, in a line: its whole schedule, the steps still to go, and the evaluation after."""
        config, images = self.config, self.batches.x.shape[0]
        passes = sum(stage.passes for stage in self.stages)
        after = f"then {describe_evaluation(config)}" if config.evaluate else "no final evaluation (--no-eval)"
        return (f"{self.run_dir}: {len(self.stages)} stage(s), {passes:,.6g} passes over {images:,} training images "
                f"in batches of {config.batch_size}, {self.steps_left:,} steps to go; {after}")  # fmt: skip

    def pass_record(self, seconds: float) -> dict[str, Any]:
        """The ``metrics.jsonl`` line of the pass just ended."""
        stage, per_pass = self.stages[self.pos.stage], self.batches.per_pass
        end = (self.pos.step - 1) % per_pass + 1
        return {
            "stage": stage.index, "lr": stage.lr, "pass": (self.steps_done + self.pos.step) / per_pass,
            "train_bound": -self.pos.pass_loss / end, "seconds": seconds,
            "examples_per_s": end * self.batches.size / max(seconds, 1e-9),
        }  # fmt: skip

    def next_stage(self) -> None:
        self.steps_done += self.total
        self.pos = dataclasses.replace(Position(stage=self.pos.stage + 1), train_seconds=self.pos.train_seconds,
                                       log_lines=self.pos.log_lines, fleet_step=self.pos.fleet_step,
                                       train_machines=self.pos.train_machines)  # fmt: skip
        self.perm = None

    def save(self, fleet_step: int | None = None) -> None:
        """Checkpoint the run at its position; in a fleet (``fleet_step`` given), as the pending checkpoint of that
        fleet step (:data:`iwae.runs.rundir.PENDING_NAME`), committed once every run of the fleet has written its."""
        if fleet_step is not None:
            self.pos.fleet_step = fleet_step
        self.pos.pass_seconds = time.monotonic() - self.pass_start
        tensors = self.gens.states() | ({} if self.perm is None else {"perm": self.perm})
        rundir.save_state(self.run_dir, self.model, self.optimizer, dataclasses.asdict(self.pos), tensors,
                          pending=fleet_step is not None)  # fmt: skip


class SharedData:
    """Training sets and learning-curve images, loaded once per data set for every run opened with it."""

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


def check_objective_to_train(config: TrainConfig, run_dir: Path) -> None:
    """:meth:`TrainConfig.check_objective` where the run in ``run_dir`` (or a new one) has steps to take: a bound or
    an estimator of one's own is imported, before anything is written; a run trained to its end evaluates without."""
    saved = rundir.checkpoint_position(run_dir)
    if saved is None or saved["stage"] < len(schedule(config)):
        config.check_objective()


def open_run(config: TrainConfig, run_dir: Path, fresh: bool, create: bool, loaded: SharedData, again: str) -> RunState:
    """A run ready to step: its data, model, Adam, generators and position (:func:`_start`); ``again``: the command
    that continues it, named if its folder lacks room for its checkpoints."""
    check_objective_to_train(config, run_dir)  # (before anything is written)
    x = loaded.train(config)
    if config.batch_size > x.shape[0]:
        raise rundir.RunError(
            f"batch size {config.batch_size:,} exceeds the {x.shape[0]:,} training images of {config.dataset}; "
            "choose a smaller --batch-size (the paper's is 20)"
        )
    batches = Batches(x, config.batch_size, dynamic=not data.is_binary(config.dataset))
    model = build_model(config, output_bias=x.mean(0)).to(loaded.device)
    if create and config.model is not None:
        check_sampler(model, config.model)
    optimizer = make_optimizer(model, betas=config.adam_betas)
    gens = Generators.seeded(config.seed, loaded.device, config.streams, own_code=config.own_code)
    curve_x = loaded.curve(config)
    rundir.check_space(run_dir, model, "start it again" if create else again)
    pos, perm = _start(config, run_dir, fresh, model, optimizer, gens, create)
    run = RunState(config, run_dir, model, optimizer, gens, batches, pos, perm, curve_x, schedule(config))
    run.steps_done = sum(stage_steps(s.passes, batches.per_pass) for s in run.stages[: pos.stage])
    run.pass_start -= pos.pass_seconds  # a pass resumed in its middle counts the seconds it had taken before
    return run


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
        _check_same_architecture(config.init_from, source.state_dict(), model.state_dict())
        model.load_state_dict(source.state_dict())
    elif not fresh:
        saved, extra = rundir.load_state(run_dir, model, optimizer)
        pos, perm = Position(**saved), extra.get("perm")
        gens.restore(extra)
    if create:
        rundir.create(run_dir, config)
    elif fresh:
        rundir.clear_results(run_dir)
    pos.log_lines = rundir.truncate_log(run_dir, pos.log_lines)
    return pos, perm


def _check_same_architecture(source_dir: str, source: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
    """A RunError naming the first parameter whose shape differs when ``init_from``'s model is not this run's."""
    shapes = [({n: tuple(t.shape) for n, t in d.items()}) for d in (source, own)]
    for name in sorted(shapes[0].keys() | shapes[1].keys()):
        theirs, ours = (s.get(name, "absent") for s in shapes)
        if theirs != ours:
            raise rundir.RunError(
                f"--init-from {source_dir}: that run's model has another architecture ({name}: {theirs} there, "
                f"{ours} here); start from a run of the same data set and architecture (--layers and --latent-dims, or "
                "--model and --model-kwargs)"
            )
