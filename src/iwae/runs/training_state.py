"""The state of a run in training: its :class:`Position` in the schedule, its random :class:`Generators`, the
:class:`Batches` of its training set and the :class:`Saver` of its checkpoints (:mod:`iwae.runs.train`'s loop)."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from iwae import data
from iwae.runs import rundir
from iwae.util import streams

__all__ = ["Position", "Generators", "Batches", "Saver"]


@dataclass
class Position:
    """Where a run stands in its schedule: saved (as JSON) in every checkpoint beside the tensors."""

    stage: int = 0  # index into schedule(config)
    step: int = 0  # steps taken in this stage
    train_seconds: float = 0.0  # seconds spent in passes, over every session of the run
    log_lines: int = 0  # lines of metrics.jsonl that belong to this position
    pass_loss: float = 0.0  # sum of the current pass's losses so far (float64, so exact in JSON)
    fleet_step: int = 0  # steps of the fleet the run trains in (iwae.fleets.fleet_train), 0 for a run of its own


@dataclass
class Generators:
    """The run's two training streams (:func:`iwae.util.streams.generator`); their states go into every checkpoint."""

    shuffle: torch.Generator  # the permutation of each pass, on the CPU
    device: torch.Generator  # binarizations and reparameterisation noise, on the model's device

    @classmethod
    def seeded(cls, seed: int, device: torch.device, scheme: int) -> Generators:
        """The streams of ``seed`` under the run's random-stream ``scheme`` (its config's ``streams``)."""
        return cls(
            streams.generator(seed, "shuffle", scheme=scheme),
            streams.generator(seed, "noise", device=device, scheme=scheme),
        )

    def states(self) -> dict[str, torch.Tensor]:
        return {"rng_shuffle": self.shuffle.get_state(), "rng_device": self.device.get_state()}

    def restore(self, states: dict[str, torch.Tensor]) -> None:
        self.shuffle.set_state(states["rng_shuffle"])
        on_cpu = self.device.device.type == "cpu"
        self.device.set_state(states["rng_device"].cpu() if on_cpu else states["rng_device"])


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


class Saver:
    """Checkpoints when asked, and reports when the configured interval has passed since the last one."""

    def __init__(
        self,
        run_dir: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        gens: Generators,
        interval_s: float,
    ) -> None:
        self.run_dir, self.model, self.optimizer, self.gens = run_dir, model, optimizer, gens
        self.interval_s, self.last = interval_s, time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.interval_s

    def save(self, pos: Position, perm: torch.Tensor | None) -> None:
        tensors = self.gens.states() | ({} if perm is None else {"perm": perm})
        rundir.save_state(self.run_dir, self.model, self.optimizer, dataclasses.asdict(pos), tensors)
        self.last = time.monotonic()
