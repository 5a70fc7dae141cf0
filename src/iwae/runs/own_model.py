"""A model of one's own in a run folder: ``iwae train --model MODULE:CALLABLE --model-kwargs JSON``.

The callable (a function or a class) is imported by name (from the import path, else from the working folder, as
``python -m`` finds modules) and called with the keyword arguments of ``model_kwargs``;
it returns a ``torch.nn.Module`` of :class:`iwae.SampledModel`'s protocol (:class:`iwae.GaussianLatentModel`
wraps an encoder and a decoder of one's own into it). The run folder records the two, so ``iwae resume``,
``iwae evaluate``, ``iwae export`` and :func:`iwae.load_run` build it again, wherever the module can be imported.
Its initial weights are drawn under torch's global generator seeded from the run's ``init`` stream
(:mod:`iwae.util.streams`), so a seed gives the same model every time, and the global generator is left as it was.

The run's schedule, estimators, checkpoints, learning curve and final evaluation (L_5000, A_u) are the paper
model's; the pruned model's NLL (Section 5.2) needs the paper's layers and is left out, and the samples figure
needs a ``sample(n, generator)`` method.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from iwae.objectives.loss import check_sampled_model
from iwae.runs.config import TrainConfig
from iwae.runs.errors import RunError
from iwae.util import streams

__all__ = ["build_own_model", "model_builder", "X_DIM"]

F = TypeVar("F", bound=Callable[..., Any])

X_DIM = 784  # pixels of every data set's images (28 x 28)


def _import(module_name: str) -> Any:
    """The module, from the import path, or else from the working folder, as ``python -m`` would find it (the
    ``iwae`` command's own path holds its script's folder instead); that folder then stays on the path."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        here = os.getcwd()
        if err.name != module_name.split(".")[0] or here in sys.path or "" in sys.path:
            raise
    sys.path.append(here)
    return importlib.import_module(module_name)


def model_builder(build: F) -> F:
    """Mark a function as one that ``iwae train --model MODULE:NAME`` may call (a ``torch.nn.Module`` subclass
    needs no mark). A run folder's ``config.json`` names what it calls, so loading a folder calls only these, not
    any function a hand-edited config names (``subprocess:getoutput``, say)."""
    build.__iwae_model_builder__ = True  # type: ignore[attr-defined]
    return build


def _callable(spec: str) -> Any:
    """The object ``MODULE:NAME`` names (NAME may be dotted: a class's static method), imported: a
    ``torch.nn.Module`` subclass or a function marked by :func:`model_builder`."""
    module_name, _, name = spec.partition(":")
    try:
        target: Any = _import(module_name)
    except ImportError as err:
        missing = getattr(err, "name", None)
        where = (f"its import of {missing!r} failed ({err}): install that" if missing and missing !=
                 module_name.split(".")[0] else f"({type(err).__name__}: {err}); run from the folder that holds it, "
                 "put that folder on PYTHONPATH, or install it")  # fmt: skip
        raise RunError(f"model {spec}: cannot import {module_name!r} {where}") from None
    for part in name.split("."):
        if not hasattr(target, part):
            raise RunError(f"model {spec}: {module_name} has no {name!r}")
        target = getattr(target, part)
    module_class = isinstance(target, type) and issubclass(target, torch.nn.Module)
    if not (module_class or getattr(target, "__iwae_model_builder__", False)):
        raise RunError(
            f"model {spec}: {name} is neither a torch.nn.Module subclass nor a function marked with "
            "@iwae.model_builder; mark the function that builds your model (a run folder calls only those)"
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
    floats = {p.dtype for p in model.state_dict().values() if p.is_floating_point()}
    if floats - {torch.float32}:
        return (f"its weights are {', '.join(sorted(map(str, floats)))}; the images are float32: build it in "
                "float32 (no .double())")  # fmt: skip
    storages = [t.untyped_storage().data_ptr() for t in model.state_dict(keep_vars=True).values() if t.numel()]
    if len(set(storages)) < len(storages):
        return (
            "it shares a tensor between two of its state_dict's entries (tied weights, or a module registered "
            "twice), which a checkpoint (safetensors) cannot hold; give each entry its own tensor"
        )
    return None


def build_own_model(config: TrainConfig) -> torch.nn.Module:
    """The model ``config.model`` builds from ``config.model_kwargs``, its weights drawn from the seed's ``init``
    stream; a :class:`~iwae.runs.errors.RunError` names what is wrong (an import, a name, the keyword arguments,
    what it returned, what the run pipeline cannot train or evaluate, a model that cannot score 784-pixel images).
    An error inside the callable itself keeps its traceback, for its author."""
    assert config.model is not None
    build, kwargs = _callable(config.model), dict(config.model_kwargs or {})
    try:
        inspect.signature(build).bind(**kwargs)
    except TypeError as err:
        raise RunError(f"model {config.model}: called with {kwargs}: {err}; give --model-kwargs as a JSON object "
                       "of its keyword arguments") from None  # fmt: skip
    except ValueError:  # no signature to read (a builtin): the call itself will say
        pass
    with streams.seeded_global(config.seed, "init", scheme=config.streams):  # and then put back
        model = build(**kwargs)
    if not isinstance(model, torch.nn.Module):
        raise RunError(f"model {config.model} returned a {type(model).__name__}, not a torch.nn.Module")
    if (problem := _problem(model)) is not None:
        raise RunError(f"model {config.model}: {problem}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    probe = copy.deepcopy(model).eval()  # the model's own buffers (batch statistics) and mode left as built
    try:  # two images of the data sets' 28 x 28 pixels, before any run folder is made
        with torch.no_grad(), torch.random.fork_rng():
            log_w = probe.log_weights(torch.zeros(2, X_DIM, device=device), 3)
    except Exception as err:
        raise RunError(f"model {config.model} cannot score images of {X_DIM} pixels, as the data sets hold: "
                       f"log_weights(x of shape (2, {X_DIM}), k=3) raised {type(err).__name__}: {err}"
                       ) from err  # fmt: skip
    if tuple(log_w.shape) != (3, 2):
        raise RunError(f"model {config.model}: log_weights(x of shape (2, {X_DIM}), k=3) returned shape "
                       f"{tuple(log_w.shape)}; expected (k, batch) = (3, 2)")  # fmt: skip
    return model
