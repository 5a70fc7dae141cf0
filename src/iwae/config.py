"""Run configuration: one frozen dataclass, written as JSON into every run folder, and the paper's schedule."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iwae.estimators import ESTIMATORS, KINDS, check_args

__all__ = ["TrainConfig", "Stage", "schedule", "DATASET_NAMES"]

DATASET_NAMES = ("mnist", "omniglot", "binarized-mnist")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run. Defaults are the paper's protocol (Section 5.1)."""

    # data
    dataset: str = "mnist"
    data_dir: str | None = None  # None: $IWAE_DATA_DIR, else the per-user cache
    # model: the paper's architecture with `layers` stochastic layers, unless latent_dims is given
    layers: int = 1
    latent_dims: list[int] | None = None  # e.g. [2] for the 2-D latent posteriors of Appendix C
    q_hidden: list[list[int]] | None = None
    p_hidden: list[list[int]] | None = None
    # objective
    objective: str = "iwae"  # a bound of iwae.KINDS
    k: int = 50
    m: int = 1  # outer samples for miwae/piwae
    beta: float = 0.5  # ELBO weight for ciwae
    estimator: str = "reparam"
    # optimisation: Adam (beta1 0.9, beta2 0.999, eps 1e-4), batch 20, 3^i passes at 1e-3 * 10^(-i/7)
    batch_size: int = 20
    stages: int = 8  # run stages i = 0 .. stages-1
    pass_scale: float = 1.0  # multiply every stage's 3^i passes (fractional passes allowed)
    lr_variant: str = "paper"  # "paper", or "reference": the authors' code's rounded rates and beta1 = 0.99
    custom_schedule: list[list[float]] | None = None  # [[passes, lr], ...] replaces the 3^i stages
    init_from: str | None = None  # start from the model of another run folder (Table 2)
    # evaluation
    eval_k: int = 5000
    eval_n: int | None = None  # evaluate on eval_n examples of each split, spread evenly through it (None: all)
    active_threshold: float = 0.01
    # system
    seed: int = 0
    device: str = "auto"  # "auto": cuda if available
    compile: bool = False  # torch.compile the training step (reparam/stl only; see iwae.make_train_step)
    checkpoint_minutes: float = 5.0  # also checkpoint at the end of every stage
    tensorboard: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried into config.json

    def __post_init__(self) -> None:
        errors = []
        if self.dataset not in DATASET_NAMES:
            errors.append(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASET_NAMES)}")
        if self.objective not in KINDS:
            errors.append(f"unknown objective {self.objective!r}; choose one of {', '.join(KINDS)}")
        if self.estimator not in ESTIMATORS:
            errors.append(f"unknown estimator {self.estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        if self.latent_dims is None and self.layers not in (1, 2):
            errors.append(f"layers must be 1 or 2 (the paper's architectures), got {self.layers}")
        for name in ("k", "m", "batch_size", "eval_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                errors.append(f"{name} must be a positive integer, got {value!r}")
        if not 1 <= self.stages <= 8:
            errors.append(f"stages must be between 1 and 8, got {self.stages}")
        if not (self.pass_scale > 0 and math.isfinite(self.pass_scale)):
            errors.append(f"pass_scale must be a positive number, got {self.pass_scale}")
        if self.lr_variant not in ("paper", "reference"):
            errors.append(f"lr_variant must be 'paper' or 'reference', got {self.lr_variant!r}")
        if self.eval_n is not None and self.eval_n < 2:
            errors.append(f"eval_n must be at least 2, got {self.eval_n}")
        if self.custom_schedule is not None and not all(
            len(s) == 2 and s[0] > 0 and s[1] > 0 for s in self.custom_schedule
        ):
            errors.append("custom_schedule must be a list of [passes, lr] pairs of positive numbers")
        if errors:
            raise ValueError("; ".join(errors))
        check_args(self.k, self.objective, self.estimator, self.m, self.beta, self.compile)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict, refusing unknown keys (a typo must not silently fall back to a default)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys are {sorted(known)}")
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @property
    def adam_betas(self) -> tuple[float, float]:
        # The reference code uses beta1 = 0.99 (reference-setup.md); the paper states 0.9.
        return (0.99, 0.999) if self.lr_variant == "reference" else (0.9, 0.999)


@dataclass(frozen=True)
class Stage:
    index: int
    passes: float
    lr: float


def schedule(config: TrainConfig) -> list[Stage]:
    """The paper's stages: 3^i passes at 1e-3 * 10^(-i/7), i = 0 .. stages-1, passes scaled by pass_scale.

    The reference variant rounds the rates: 1e-4 * round(10^(1 - i/7), 1) (1.0e-3, 7.2e-4, ..., 1.0e-4).
    """
    if config.custom_schedule is not None:
        return [Stage(i, p * config.pass_scale, lr) for i, (p, lr) in enumerate(config.custom_schedule)]
    stages = []
    for i in range(config.stages):
        if config.lr_variant == "reference":
            lr = 1e-4 * round(10 ** (1 - i / 7), 1)
        else:
            lr = 1e-3 * 10 ** (-i / 7)
        stages.append(Stage(i, 3**i * config.pass_scale, lr))
    return stages
