"""Run configuration: one frozen dataclass, declared once, written as JSON into every run folder.

Every option of a run is a field of :class:`TrainConfig` with its default, its help text and, where the command line
offers it, its flag and parser. ``iwae train``'s options are generated from these fields
(:func:`iwae.cli.options.add_config_options`), so an option added here appears on the command line, in ``--help``, in
``config.json`` and in ``--config FILE`` at once. Precedence (as nanoGPT's configurator): the defaults, then a JSON
config file, then the flags given on the command line; unknown keys and wrong types are refused.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iwae.data.resources import DATASETS, SPLIT_SIZES
from iwae.objectives import ESTIMATORS, KINDS
from iwae.objectives.names import declare_params
from iwae.util.imports import is_spec
from iwae.util.streams import SCHEME, SCHEMES
from iwae.util.suggest import nearest

__all__ = [
    "TrainConfig", "Stage", "schedule", "stage_steps", "steps_per_pass", "passes_at", "total_passes", "passes_text",
    "RESUMABLE", "LEGACY", "RENAMED",
]  # fmt: skip


# ----------------------------------------------------------------------------- command-line parsers
def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated positive integers, e.g. ``100,50``."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def json_object(text: str) -> dict[str, Any]:
    """argparse type: a JSON object, e.g. ``'{"latent_dim": 32}'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({err.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object ({{...}}), got {text!r}")
    return value


def choice_or_own(choices: Iterable[str], own: str) -> Callable[[str], str]:
    """argparse type: one of ``choices``, or ``MODULE:NAME`` naming ``own`` (what it is) of one's own."""
    choices = tuple(choices)

    def parse(text: str) -> str:
        if text in choices or is_spec(text):
            return text
        near = nearest(text, choices)
        hint = f"did you mean {near!r}?" if near else f"choose one of {', '.join(choices)}, or MODULE:NAME " \
            f"naming {own} of one's own"  # fmt: skip
        raise argparse.ArgumentTypeError(f"unknown choice {text!r}; {hint}")

    return parse


def seed_list(text: str) -> list[int]:
    """argparse type: seeds as ``0,1,2`` or ranges ``0-9`` (comma-separated, non-negative, no repeats)."""
    seeds: list[int] = []
    try:
        for item in text.split(","):
            first, _, last = item.partition("-")
            if int(last or first) < int(first):
                raise ValueError(item)
            seeds += range(int(first), int(last or first) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 0,1,2 or 0-9, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct non-negative seeds, got {text!r}")
    return seeds


def schedule_pairs(text: str) -> list[list[float]]:
    """argparse type: ``'2187:1e-4'`` or ``'1:1e-3,3:7.2e-4'`` -> [[passes, lr], ...]."""
    try:
        pairs = [[float(p), float(lr)] for p, lr in (item.split(":") for item in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PASSES:LR[,PASSES:LR...], got {text!r}") from None
    if not all(v > 0 and math.isfinite(v) for pair in pairs for v in pair):
        raise argparse.ArgumentTypeError(f"expected positive finite passes and learning rates, got {text!r}")
    return pairs


def _opt(
    default: Any,
    help: str,
    *,
    type: Callable[[str], Any] | None = None,
    choices: Iterable[Any] | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    cli: bool = True,
    aliases: tuple[str, ...] = (),
    own: str | None = None,
) -> Any:
    """A config field with its command-line declaration (``cli=False``: config files only; ``aliases``: the
    field's former flags, still accepted; ``own``: what ``MODULE:NAME`` names, beside the ``choices``, for code of
    one's own)."""
    meta = {"help": help, "type": type, "choices": tuple(choices) if choices else None, "flag": flag,
            "metavar": metavar, "cli": cli, "aliases": aliases, "own": own}  # fmt: skip
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- the config
@dataclass(frozen=True)
@declare_params(lambda name, param: _opt(param.default, param.help, type=param.parser(name)))
class TrainConfig:
    """Everything that determines a training run. Defaults are the paper's protocol (Section 5.1)."""

    # data
    dataset: str = _opt("mnist", "data set: mnist and omniglot are binarized afresh each use, binarized-mnist "
                        "is the fixed binarization (Appendix D)", choices=DATASETS)  # fmt: skip
    data_dir: str | None = _opt(None, "data directory (default: $IWAE_DATA_DIR, else the per-user cache); "
                                "the run records it as an absolute path")  # fmt: skip
    # model: the paper's architecture with `layers` stochastic layers, unless latent_dims is given
    layers: int = _opt(1, "stochastic layers of the paper's architectures (Appendix C)", type=int, choices=(1, 2))
    latent_dims: list[int] | None = _opt(None, "a general architecture instead: latent sizes bottom-up, e.g. 2 "
                                         "(the 2-D posteriors of Appendix C) or 100,50", type=int_list)  # fmt: skip
    q_hidden: list[list[int]] | None = _opt(None, "hidden sizes of each recognition conditional", cli=False)
    p_hidden: list[list[int]] | None = _opt(None, "hidden sizes of each generative conditional", cli=False)
    model: str | None = _opt(None, "a model of one's own instead: MODULE:CALLABLE, called with --model-kwargs, "
                             "returning an iwae.SampledModel (importable wherever the run trains, resumes and is "
                             "scored)", metavar="MODULE:CALLABLE")  # fmt: skip
    model_kwargs: dict[str, Any] | None = _opt(None, "keyword arguments of --model's callable, a JSON object",
                                               type=json_object, metavar="JSON")  # fmt: skip
    # the objective: a bound, its sample count and parameters, and a gradient estimator
    bound: str = _opt("iwae", "bound to train on: vae (Eq. 7 gradient), iwae (Eq. 14), miwae, ciwae, piwae, "
                      "vr (Rényi); or MODULE:NAME, an iwae.objectives.Bound of one's own", choices=KINDS,
                      aliases=("--objective",), own="an iwae.objectives.Bound")  # fmt: skip
    k: int = _opt(50, "samples per example (inner samples for miwae/piwae)", type=positive_int)
    # (the bounds' parameters, m, beta, alpha..., are fields too: declared once in iwae.objectives.names.PARAMS,
    # added at the end of the class by @declare_params)
    estimator: str = _opt("reparam", "gradient estimator: reparam, sample-one (Section 3.1), stl, dreg, rws "
                          "(reweighted wake-sleep), rws-dreg (its wake-phi update doubly reparameterised); or "
                          "MODULE:NAME, an instance of an iwae.objectives.Estimator subclass of one's own",
                          choices=ESTIMATORS, own="an instance of an iwae.objectives.Estimator subclass"
                          )  # fmt: skip
    # optimisation: Adam (beta1 0.9, beta2 0.999, eps 1e-4), batch 20, 3^i passes at 1e-3 * 10^(-i/7)
    batch_size: int = _opt(20, "minibatch size", type=positive_int)
    stages: int = _opt(8, "run stages i = 0..N-1 of the paper's 8 (3^i passes at 1e-3 * 10^(-i/7); --schedule "
                       "replaces them)", type=int, choices=range(1, 9))  # fmt: skip
    pass_scale: float = _opt(1.0, "multiply every stage's passes (--schedule's too), fractions allowed (1: the "
                             "paper's 3,280 passes)", type=positive_float)  # fmt: skip
    # "reference": the authors' code's rounded rates and beta1 = 0.99
    lr_variant: str = _opt("paper", "paper: 1e-3*10^(-i/7), beta1 0.9; reference: the authors' code (rounded "
                           "rates, beta1 0.99)", choices=("paper", "reference"))  # fmt: skip
    custom_schedule: list[list[float]] | None = _opt(None, "replace the 3^i stages by PASSES:LR[,PASSES:LR...] "
                                                     "(e.g. 2187:1e-4 for Table 2)", type=schedule_pairs,
                                                     flag="--schedule", metavar="PASSES:LR")  # fmt: skip
    init_from: str | None = _opt(None, "start from the model of this run folder (Table 2)", metavar="RUN_DIR")
    # evaluation (settings `iwae resume` may change: RESUMABLE)
    evaluate: bool = _opt(True, "the final evaluation (--no-eval: none; `iwae resume --eval` evaluates later)",
                          flag="--eval")  # fmt: skip
    eval_k: int = _opt(5000, "importance samples for the final NLL (the paper's L_5000)", type=positive_int)
    eval_n: int | None = _opt(None, "evaluate on N examples of the test and of the training split, spread evenly "
                              "through each (default all)", type=positive_int, metavar="N")  # fmt: skip
    active_threshold: float = _opt(0.01, "A_u above which a unit is active (Section 5.2)", type=positive_float)
    # the learning curve: mean -L_curve_k on curve_n test images, logged at the end of every stage (0: none)
    curve_k: int = _opt(1000, "importance samples of the test-NLL learning curve, measured at the end of every "
                        "stage (0: no curve)", type=int)  # fmt: skip
    curve_n: int = _opt(500, "test images of the learning curve, spread evenly through the test set (0: no curve)",
                        type=int)  # fmt: skip
    # system
    seed: int = _opt(0, "seed of the initial weights, shuffling, binarization and sampling noise", type=int)
    streams: int = _opt(SCHEME, "random-stream scheme (iwae.util.streams): 2, one hashed stream per purpose; 1, the "
                        "seed formulas of runs made before it", type=int, choices=SCHEMES)  # fmt: skip
    device: str = _opt("auto", "cpu, cuda or cuda:N (auto: cuda if available)")
    compile: bool = _opt(False, "torch.compile the training step (reparam/stl; CUDA graphs on a GPU; compiling "
                         "takes up to a minute)")  # fmt: skip
    checkpoint_minutes: float = _opt(5.0, "checkpoint interval in minutes (also at the end of every stage)",
                                     type=positive_float)  # fmt: skip
    flush_denormal: bool = _opt(True, "on a CPU, flush subnormal floats to zero in the run's work (IWAE steps "
                                "2-5x faster, results unchanged; --no-flush-denormal keeps them)")  # fmt: skip
    tensorboard: bool = _opt(False, "also log to RUN/tensorboard: bound, learning rate, curve, final evaluation, "
                             "by training step (pip install 'iwae[tensorboard]')")  # fmt: skip
    extra: dict[str, Any] = _opt({}, "free-form notes carried into config.json", cli=False)

    def __post_init__(self) -> None:
        for f, hint in _hints():  # Python callers' tuples, numpy integers and paths, as JSON would hold them
            object.__setattr__(self, f.name, _as_json_type(getattr(self, f.name), hint))
        errors = [_type_error(f.name, getattr(self, f.name), hint) for f, hint in _hints()]
        errors = [e for e in errors if e]
        if errors:  # the checks below assume the types
            raise ValueError("; ".join(errors))
        for f in dataclasses.fields(self):
            choices, own, value = f.metadata["choices"], f.metadata["own"], getattr(self, f.name)
            if choices and value not in choices and not (own and is_spec(value)):
                near = nearest(str(value), choices)
                mine = f", or MODULE:NAME naming {own} of one's own" if own else ""
                hint = f"; did you mean {near!r}?" if near else ""
                errors.append(f"unknown {f.name} {value!r}; choose one of {_listing(choices)}"
                              f"{_registered(f.name, value) or mine}{hint}")  # fmt: skip
        for name in ("k", "batch_size", "eval_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                errors.append(f"{name} must be a positive integer, got {value!r}")
        if not (self.pass_scale > 0 and math.isfinite(self.pass_scale)):
            errors.append(f"pass_scale must be a positive number, got {self.pass_scale}")
        for name in ("curve_k", "curve_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                errors.append(f"{name} must be a non-negative integer (0: no learning curve), got {value!r}")
        if self.eval_n is not None and self.eval_n < 2:
            errors.append(f"eval_n must be at least 2, got {self.eval_n}")
        if self.latent_dims is not None and self.layers not in (1, len(self.latent_dims)):  # 1: the default
            errors.append(f"layers={self.layers} and latent_dims={self.latent_dims} disagree: latent_dims gives the "
                          f"architecture, {len(self.latent_dims)} stochastic layer(s); leave layers out, or give "
                          f"{self.layers} latent sizes")  # fmt: skip
        errors += _own_model_problems(self)
        if self.custom_schedule is not None and not all(
            len(s) == 2 and all(v > 0 and math.isfinite(v) for v in s) for s in self.custom_schedule
        ):
            errors.append("custom_schedule must be a list of [passes, lr] pairs of positive finite numbers")
        if errors:
            raise ValueError("; ".join(errors))
        if not (is_spec(self.bound) or is_spec(self.estimator)):  # (code of one's own: see check_objective)
            self.check_objective()

    def check_objective(self) -> None:
        """A ValueError where the bound, the estimator, their parameters and ``compile`` do not go together; checked
        as a config is made, except for a bound or an estimator of one's own (``MODULE:NAME``), whose module is
        imported only where the run trains (:func:`iwae.runs.training_state.open_run`, before anything is
        written): a folder that names one loads, evaluates and exports without it."""
        from iwae.objectives import Objective  # torch, so not at import: the command line parses without it

        objective = Objective.from_config(self)  # checks the combination and the bound's parameters
        if self.compile:
            objective.check_compilable()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict, refusing unknown keys (a typo must not silently fall back to a default); a key's
        former name (:data:`RENAMED`, as in run folders made before the rename) is read as the key."""
        values = dict(values)
        for old, new in RENAMED.items():
            if old in values:
                if new in values and values[new] != values[old]:
                    raise ValueError(f"config keys {old!r} (the former name of {new!r}) and {new!r} disagree")
                values[new] = values.pop(old)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys are {sorted(known)}")
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_config_file(path))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @property
    def own_code(self) -> bool:
        """Whether the run trains code of one's own (``MODULE:NAME``): a model, a bound or an estimator."""
        return self.model is not None or is_spec(self.bound) or is_spec(self.estimator)

    @property
    def has_curve(self) -> bool:
        """Whether the run logs a test-NLL learning curve (curve_k and curve_n both set)."""
        return self.curve_k > 0 and self.curve_n > 0

    @property
    def adam_betas(self) -> tuple[float, float]:
        # The reference code uses beta1 = 0.99; the paper states 0.9.
        return (0.99, 0.999) if self.lr_variant == "reference" else (0.9, 0.999)


# The values of settings added since the first runs, for a run folder whose config.json predates them: what those
# runs were trained and evaluated with (iwae.runs.rundir.read_config), so that they resume and evaluate as they did.
LEGACY: dict[str, Any] = {"streams": 1, "flush_denormal": False}

# Config keys renamed, former name -> name: config.json files and --config files keep their former names readable.
RENAMED: dict[str, str] = {"objective": "bound"}

# What `iwae resume` may change in an unfinished run: where it runs, where its data are, and its evaluation.
# Everything else determines the numbers the run trains to, so a resumed run keeps it.
RESUMABLE: tuple[str, ...] = ("device", "data_dir", "evaluate", "eval_k", "eval_n", "active_threshold")


def _own_model_problems(config: TrainConfig) -> list[str]:
    """What is wrong with the config's model of one's own (``model``, ``model_kwargs``), or nothing."""
    if config.model is None:
        return ["model_kwargs are the arguments of model, which is not given"] if config.model_kwargs else []
    problems = []
    if not is_spec(config.model):
        problems.append(f"model must be MODULE:CALLABLE (e.g. my_vaes:conv_vae), got {config.model!r}")
    paper = [name for name in ("latent_dims", "q_hidden", "p_hidden") if getattr(config, name) is not None]
    if paper or config.layers != 1:
        given = paper + (["layers"] if config.layers != 1 else [])
        problems.append(f"model builds the whole architecture: leave {', '.join(given)} out")
    try:
        json.dumps(config.model_kwargs, allow_nan=False)
    except (TypeError, ValueError) as err:
        problems.append(f"model_kwargs must hold JSON values (config.json records them): {err}")
    return problems


def _hints() -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(TrainConfig)
    return [(f, hints[f.name]) for f in dataclasses.fields(TrainConfig)]


def _as_json_type(value: Any, hint: Any) -> Any:
    """``value`` as the JSON type of the field: tuples as lists, integers of other types (numpy's) as ints, paths
    as strings; anything else as it is (the type check then names what is wrong)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = {a for a in typing.get_args(hint) if a is not type(None)} if union else {hint}
    if isinstance(value, tuple) and any(typing.get_origin(a) is list for a in args):
        inner = next(typing.get_args(a)[0] for a in args if typing.get_origin(a) is list)
        return [_as_json_type(v, inner) for v in value]
    if isinstance(value, list):
        inner = next((typing.get_args(a)[0] for a in args if typing.get_origin(a) is list), None)
        return [_as_json_type(v, inner) for v in value] if inner is not None else value
    if int in args and not isinstance(value, (bool, int)) and hasattr(value, "__index__"):
        return int(value.__index__())
    if float in args and not isinstance(value, (bool, int, float)) and hasattr(value, "__float__"):
        return float(value)
    if str in args and isinstance(value, Path):
        return str(value)
    return value


def _type_error(name: str, value: Any, hint: Any) -> str | None:
    """Why ``value`` is not of the field's type (a JSON config's ``"no"`` for a bool, say), or None if it is."""
    return None if _is_a(value, hint) else f"{name} must be {_type_name(hint)}, got {value!r}"


def _is_a(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_a(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # JSON writes 1.0 as 1
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_is_a(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_is_a(k, args[0]) and _is_a(v, args[1]) for k, v in value.items())
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if hint in names:
        return names[hint]
    if origin is list:
        inner = _type_name(args[0])
        return "a list of lists" if inner.startswith("a list") else f"a list of {inner.split(' ', 1)[1]}s"
    return "an object" if origin is dict else getattr(hint, "__name__", str(hint))


def _listing(choices: Iterable[Any]) -> str:
    return ", ".join(map(str, choices))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The JSON object of a config file (e.g. a run's ``config.json``), with a clear error for anything else."""
    try:
        values = json.loads(Path(path).read_text())
    except OSError as err:
        raise ValueError(f"cannot read config file {path}: {err.strerror or err}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # not text at all, e.g. a pickle
        raise ValueError(f"config file {path} is not valid JSON ({err}); fix it or write a new one") from err
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a JSON object of config keys, got {type(values).__name__}")
    return values


# ----------------------------------------------------------------------------- the schedule (Section 5.1)
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


def stage_steps(passes: float, steps_per_pass: int) -> int:
    """Steps in a stage of ``passes`` passes (fractional passes allowed, at least one step)."""
    return max(1, round(passes * steps_per_pass))


def steps_per_pass(config: TrainConfig) -> int:
    """Minibatches in a pass over the run's training set (the last one possibly smaller)."""
    return math.ceil(SPLIT_SIZES[config.dataset]["train"] / config.batch_size)


def passes_at(config: TrainConfig, stage: int, step: int) -> float:
    """Passes trained at ``step`` steps into stage ``stage`` of the run's schedule, counted as ``metrics.jsonl``
    counts them (a checkpoint's position, mid-pass too)."""
    per_pass = steps_per_pass(config)
    return (sum(stage_steps(s.passes, per_pass) for s in schedule(config)[:stage]) + step) / per_pass


def total_passes(config: TrainConfig) -> float:
    """The passes of the whole schedule, counted in the steps taken (each stage's passes rounded to whole steps): what
    ``metrics.jsonl``'s last line says once the run has trained."""
    return passes_at(config, len(schedule(config)), 0)


def _registered(field: str, value: object) -> str:
    """Where ``value`` of the bound or the estimator is one that :func:`iwae.objectives.register_bound` or
    :func:`iwae.objectives.register_estimator` added: what it is for."""
    registry = sys.modules.get("iwae.objectives.registry")  # (loaded where one was registered: no torch here)
    added = {"bound": ("a", "BOUNDS"), "estimator": ("an", "ESTIMATORS_BY_NAME")}.get(field)
    if registry is not None and added is not None and value in getattr(registry, added[1]):
        return f" ({added[0]} {field} added by register_{field} is known to the process that added it; a run " \
            "folder names it as MODULE:NAME, the module that defines it and its name there)"  # fmt: skip
    return ""


def passes_text(passes: float) -> str:
    """A pass count as read: whole passes without decimals (3,280), fractions to two (9.84)."""
    return f"{passes:,.0f}" if float(passes).is_integer() else f"{passes:,.2f}"
