"""Which runs each experiment needs: one ordinary run folder per model, named for what it is.

Table 1 (Section 5.1): dataset x {1, 2} layers x {VAE, IWAE} x k in {1, 5, 50}; at k = 1 both objectives are the
same algorithm, so one run serves both columns. Table 2 (Section 5.2): the 1-layer MNIST VAE (k = 1) and IWAE
(k = 50) of Table 1, trained on for 3^7 passes at learning rate 1e-4 with the other objective. Table 3 (Appendix D):
Table 1's rows on the fixed binarization. Posteriors (Appendix C): 2-D latent models trained as VAE, IWAE k = 5
and IWAE k = 50. Estimators (beyond the paper): the 1-layer MNIST model at k = 5 trained with each gradient estimator
and multi-sample bound people use today, the head-to-head that decides between them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from iwae.runs.config import TrainConfig

__all__ = ["RunSpec", "Schedule", "EXPERIMENTS", "PAPER_EXPERIMENTS", "ESTIMATOR_RUNS", "plan", "table_key"]


PAPER_EXPERIMENTS = ("table1", "table2", "table3", "posteriors")  # what "all" reproduces
EXPERIMENTS = (*PAPER_EXPERIMENTS, "estimators")
KS = (1, 5, 50)

# The estimators experiment: run name -> the objective settings it trains with, in the report's order. The first
# two are Table 1's 1-layer MNIST k = 5 cells (the same runs when both experiments are planned); IWAE (reparam,
# Eq. 14) is what the others are compared against.
ESTIMATOR_K = 5
ESTIMATOR_RUNS: dict[str, dict] = {
    f"mnist-l1-vae-k{ESTIMATOR_K}": dict(bound="vae"),
    f"mnist-l1-iwae-k{ESTIMATOR_K}": dict(bound="iwae"),
    f"mnist-l1-iwae-stl-k{ESTIMATOR_K}": dict(bound="iwae", estimator="stl"),
    f"mnist-l1-iwae-dreg-k{ESTIMATOR_K}": dict(bound="iwae", estimator="dreg"),
    f"mnist-l1-vr0.5-k{ESTIMATOR_K}": dict(bound="vr", alpha=0.5),
    f"mnist-l1-iwae-rws-k{ESTIMATOR_K}": dict(bound="iwae", estimator="rws"),
}


@dataclass(frozen=True)
class Schedule:
    """The config fields that ``iwae reproduce`` sets for every run alike (the length of a run, its evaluation,
    the seed and the system); each field's default, help and command-line option are those of
    :class:`~iwae.runs.config.TrainConfig`. A plan's runs are override sets over these values."""

    stages: int = TrainConfig.stages
    pass_scale: float = TrainConfig.pass_scale
    eval_k: int = TrainConfig.eval_k
    eval_n: int | None = TrainConfig.eval_n
    curve_k: int = TrainConfig.curve_k
    curve_n: int = TrainConfig.curve_n
    seed: int = TrainConfig.seed
    device: str = TrainConfig.device
    data_dir: str | None = TrainConfig.data_dir
    compile: bool = TrainConfig.compile

    @property
    def passes(self) -> float:
        return sum(3**i for i in range(self.stages)) * self.pass_scale

    def describe(self) -> str:
        full = self.stages == 8 and self.pass_scale == 1.0
        head = "the paper's full schedule" if full else "A SHORT SCHEDULE, not the paper's 3,280 passes"
        evaluated = (
            f"{self.eval_n:,} test images spread evenly through the test set" if self.eval_n else "the whole test set"
        )
        return (
            f"{head}: stages i = 0..{self.stages - 1} of 3^i x {self.pass_scale:g} passes ({self.passes:g} passes "
            f"per run); NLL = mean of -L_{self.eval_k} on the {evaluated}"
        )


@dataclass(frozen=True)
class RunSpec:
    """One run folder: its name, its config, and the runs that must finish before it starts."""

    name: str
    config: TrainConfig
    after: tuple[str, ...] = ()


def table_key(dataset: str, layers: int, objective: str, k: int) -> str:
    """Run name of a Table 1/3 cell; k = 1 runs are shared by the VAE and IWAE columns."""
    return f"{dataset}-l{layers}-k1" if k == 1 else f"{dataset}-l{layers}-{objective}-k{k}"


def _base(s: Schedule, **overrides) -> TrainConfig:
    """A run's config: the reproduction's shared values, then the run's own overrides."""
    return TrainConfig(**{**dataclasses.asdict(s), **overrides})


def _table(dataset: str, s: Schedule) -> list[RunSpec]:
    runs = {}
    for layers in (1, 2):
        for k in KS:
            for objective in ("vae", "iwae"):
                name = table_key(dataset, layers, objective, k)
                if name not in runs:
                    # k = 1: trained as IWAE, which is the VAE update (Eq. 14 with one weight)
                    cfg = _base(s, dataset=dataset, layers=layers, bound="iwae" if k == 1 else objective, k=k)
                    runs[name] = RunSpec(name, cfg)
    return list(runs.values())


def plan(experiment: str, s: Schedule, run_root: str, datasets: tuple[str, ...] | None = None) -> list[RunSpec]:
    """The runs of one experiment (or "all", the paper's), in an order that respects dependencies."""
    if experiment == "all":
        seen: dict[str, RunSpec] = {}
        for name in PAPER_EXPERIMENTS:
            for spec in plan(name, s, run_root, datasets):
                seen.setdefault(spec.name, spec)
        return list(seen.values())
    if experiment == "table1":
        return [r for d in datasets or ("mnist", "omniglot") for r in _table(d, s)]
    if experiment == "table3":
        return _table("binarized-mnist", s)
    if experiment == "table2":
        first = _table("mnist", s)
        sources = {r.name: r for r in first if r.name in ("mnist-l1-k1", "mnist-l1-iwae-k50")}
        # 3^7 passes at 1e-4 after the 3,280 of Table 1: the same proportion of whatever schedule Table 1 used.
        passes = 2187 * s.passes / 3280
        cont = dict(custom_schedule=[[passes, 1e-4]], dataset="mnist", layers=1)
        second = Schedule(**{**s.__dict__, "pass_scale": 1.0})
        return [
            *sources.values(),
            RunSpec("mnist-l1-vae-then-iwae-k50",
                    _base(second, bound="iwae", k=50, init_from=f"{run_root}/mnist-l1-k1", **cont),
                    ("mnist-l1-k1",)),
            RunSpec("mnist-l1-iwae-then-vae-k1",
                    _base(second, bound="vae", k=1, init_from=f"{run_root}/mnist-l1-iwae-k50", **cont),
                    ("mnist-l1-iwae-k50",)),
        ]  # fmt: skip
    if experiment == "posteriors":
        return [
            RunSpec(f"mnist-2d-{name}", _base(s, dataset="mnist", latent_dims=[2], bound=obj, k=k))
            for name, obj, k in (("vae", "vae", 1), ("iwae-k5", "iwae", 5), ("iwae-k50", "iwae", 50))
        ]
    if experiment == "estimators":
        return [
            RunSpec(name, _base(s, dataset="mnist", layers=1, k=ESTIMATOR_K, **settings))
            for name, settings in ESTIMATOR_RUNS.items()
        ]
    raise ValueError(f"unknown experiment {experiment!r}; choose one of {', '.join((*EXPERIMENTS, 'all'))}")
