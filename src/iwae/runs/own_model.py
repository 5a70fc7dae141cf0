"""A model of one's own in a run folder: ``iwae train --model MODULE:CALLABLE --model-kwargs JSON``.

The callable (a function or a class, marked with :func:`model_builder`) is imported by name from the import path
(``PYTHONPATH=. iwae ...``, or ``python -m iwae ...``, for a module in the working folder; never from inside the run
folder loaded) and called with the keyword arguments of ``model_kwargs``;
it returns a ``torch.nn.Module`` of :class:`iwae.SampledModel`'s protocol (:class:`iwae.GaussianLatentModel`
wraps an encoder and a decoder of one's own into it). The run folder records the two, so ``iwae resume``,
``iwae evaluate``, ``iwae export`` and :func:`iwae.load_run` build it again, wherever the module can be imported.
Its initial weights are drawn under torch's global generator seeded from the run's ``init`` stream
(:mod:`iwae.util.streams`), so a seed gives the same model every time, and the global generator is left as it was.

The run's schedule, estimators, checkpoints, learning curve and final evaluation (L_5000, A_u) are the paper
model's; the pruned model's NLL (Section 5.2) needs the paper's layers and is left out, and the samples figure
needs a ``sample(n, generator)`` method (:func:`check_sampler`, as the run starts).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from iwae.objectives.loss import check_sampled_model
from iwae.runs.config import TrainConfig
from iwae.runs.errors import RunError
from iwae.util import streams
from iwae.util.imports import OwnCodeError, import_named
from iwae.util.modes import eval_mode, forked_rng

__all__ = ["build_own_model", "check_sampler", "model_builder", "X_DIM"]

F = TypeVar("F", bound=Callable[..., Any])

X_DIM = 784  # pixels of every data set's images (28 x 28)


_MARK = "__iwae_model_builder__"


def model_builder(build: F) -> F:
    """Mark a function or a ``torch.nn.Module`` class as one that ``iwae train --model MODULE:NAME`` may call. A run
    folder's ``config.json`` names what it calls, so loading a folder calls only what is marked so (in its own
    namespace: a subclass is not marked by its parent's mark), not any function or class a hand-edited config
    names (``subprocess:getoutput``, say)."""
    setattr(build, _MARK, True)
    if isinstance(build, (staticmethod, classmethod)):  # (placed above the decorator: the class hands out __func__)
        setattr(build.__func__, _MARK, True)
    return build


def _marked(target: Any) -> bool:
    """Whether ``target`` itself carries :func:`model_builder`'s mark (not an object that answers every attribute)."""
    inner = target.__func__ if inspect.ismethod(target) else target
    try:
        return vars(inner).get(_MARK) is True
    except TypeError:  # no __dict__ of its own
        return False


def _builder(spec: str) -> Any:
    """The function or class ``MODULE:NAME`` names (NAME may be dotted: a class's static method), imported and
    marked by :func:`model_builder`."""
    try:
        target = import_named(spec, "model")
    except OwnCodeError as err:
        raise RunError(str(err)) from None
    if not (callable(target) and _marked(target)):
        raise RunError(
            f"model {spec}: {spec.partition(':')[2]} is not marked with @iwae.model_builder; mark the function or "
            "class that builds your model (a run folder calls only those)"
        )
    return target


def _problem(model: torch.nn.Module) -> str | None:
    """Why the run pipeline cannot train, checkpoint and evaluate ``model``, or None: a missing method, weights
    that are not float32 (the images are), tensors shared between parameters (a checkpoint cannot hold them)."""
    try:
        check_sampled_model(model)
    except TypeError as err:
        return str(err)
    missing = [m for m in ("log_weights", "posterior_means") if not callable(getattr(model, m, None))]
    if missing:
        return f"{type(model).__name__} lacks {' and '.join(missing)}, which the evaluation reads (L_k and A_u)"
    lazy = [n for n, p in model.named_parameters() if isinstance(p, torch.nn.parameter.UninitializedParameter)]
    if lazy:
        return f"its parameters {', '.join(lazy[:3])} are not initialised (lazy modules): give them their sizes"
    floats = {p.dtype for p in model.parameters()}
    if floats - {torch.float32}:
        return (f"its parameters are {', '.join(sorted(map(str, floats)))}; the images are float32: build it in "
                "float32 (no .double())")  # fmt: skip
    spans = sorted((t.untyped_storage().data_ptr(), t.storage_offset() * t.element_size(), t.nbytes)
                   for t in model.state_dict(keep_vars=True).values() if t.numel())  # fmt: skip
    if any(a[0] == b[0] and a[1] + a[2] > b[1] for a, b in zip(spans, spans[1:])):
        return ("two of its state_dict's entries share memory (tied weights, or a module registered twice), which "
                "a checkpoint (safetensors) cannot hold; give each entry its own tensor")  # fmt: skip
    return None


def _unfit(build: Callable[..., Any], kwargs: dict[str, Any]) -> str | None:
    """Why ``kwargs`` do not fit ``build``'s signature, or None (also where a wrapper's own signature takes them)."""
    problems = []
    for follow in (True, False):
        try:
            inspect.signature(build, follow_wrapped=follow).bind(**kwargs)
            return None
        except TypeError as err:
            problems.append(str(err))
        except ValueError:  # no signature to read (a builtin): the call itself will say
            return None
    return problems[0]


def build_own_model(config: TrainConfig) -> torch.nn.Module:
    """The model ``config.model`` builds from ``config.model_kwargs``, its weights drawn from the seed's ``init``
    stream; a :class:`~iwae.runs.errors.RunError` names what is wrong (an import, a name, the keyword arguments,
    what it returned, what the run pipeline cannot train or evaluate, a model that cannot score 784-pixel images).
    An error inside the callable itself keeps its traceback, for its author."""
    assert config.model is not None
    build, kwargs = _builder(config.model), dict(config.model_kwargs or {})
    if (problem := _unfit(build, kwargs)) is not None:
        raise RunError(f"model {config.model}: called with {kwargs}: {problem}; give --model-kwargs as a JSON "
                       "object of its keyword arguments")  # fmt: skip
    with streams.seeded_global(config.seed, "init", scheme=config.streams):  # and then put back
        model = build(**kwargs)
    if not isinstance(model, torch.nn.Module):
        raise RunError(f"model {config.model} returned a {type(model).__name__}, not a torch.nn.Module")
    if (problem := _problem(model)) is not None:
        raise RunError(f"model {config.model}: {problem}")
    device = _device(model)
    try:  # two images of the data sets' 28 x 28 pixels, in eval mode (no batch statistics updated, no dropout)
        with eval_mode(model), torch.no_grad(), forked_rng(device):
            log_w = model.log_weights(torch.zeros(2, X_DIM, device=device), 3)
    except Exception as err:
        raise RunError(f"model {config.model} cannot score images of {X_DIM} pixels, as the data sets hold: "
                       f"log_weights(x of shape (2, {X_DIM}), k=3) raised {type(err).__name__}: {err}"
                       ) from err  # fmt: skip
    if tuple(log_w.shape) != (3, 2):
        raise RunError(f"model {config.model}: log_weights(x of shape (2, {X_DIM}), k=3) returned shape "
                       f"{tuple(log_w.shape)}; expected (k, batch) = (3, 2)")  # fmt: skip
    return model


def check_sampler(model: torch.nn.Module, spec: str) -> None:
    """A RunError unless a model of one's own that has a ``sample`` method draws ``sample(2, generator=...)`` of 784
    pixels, as the samples figure after the final evaluation calls it: checked as a run starts, not after its
    training and evaluation (a folder that exists loads whatever its sampler does)."""
    if not hasattr(model, "sample"):
        return
    device = _device(model)
    fix = "give it the signature sample(n, generator) returning (n, 784) pixel means, or remove it"
    try:
        with eval_mode(model), forked_rng(device):
            images = model.sample(2, generator=streams.generator(0, "probe", device=device))
    except Exception as err:
        raise RunError(f"model {spec}: sample(2, generator=...) raised {type(err).__name__}: {err}; {fix}") from err
    if not isinstance(images, torch.Tensor) or images.numel() != 2 * X_DIM:
        got = f"shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else f"a {type(images).__name__}"
        raise RunError(f"model {spec}: sample(2, generator=...) returned {got}, not 2 images of {X_DIM} pixels; {fix}")


def _device(model: torch.nn.Module) -> torch.device:
    """The device of the model's parameters (the CPU without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))
