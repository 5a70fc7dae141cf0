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

import importlib
import os
import sys
from typing import Any

import torch

from iwae.objectives.loss import check_sampled_model
from iwae.runs.config import TrainConfig
from iwae.runs.errors import RunError
from iwae.util import streams

__all__ = ["build_own_model", "X_DIM"]

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


def _callable(spec: str) -> Any:
    """The object ``MODULE:NAME`` names (NAME may be dotted: a class's static method), imported."""
    module_name, _, name = spec.partition(":")
    try:
        target: Any = _import(module_name)
    except ImportError as err:
        raise RunError(
            f"model {spec}: cannot import {module_name!r} ({type(err).__name__}: {err}); run from the folder that "
            "holds it, put that folder on PYTHONPATH, or install it"
        ) from None
    for part in name.split("."):
        if not hasattr(target, part):
            raise RunError(f"model {spec}: {module_name} has no {name!r}")
        target = getattr(target, part)
    if not callable(target):
        raise RunError(f"model {spec}: {name} is not a function or class to call ({type(target).__name__})")
    return target


def build_own_model(config: TrainConfig) -> torch.nn.Module:
    """The model ``config.model`` builds from ``config.model_kwargs``, its weights drawn from the seed's ``init``
    stream; a :class:`~iwae.runs.rundir.RunError` names what is wrong (an import, a name, the keyword arguments,
    what it returned, a model that cannot score a batch of 784-pixel images)."""
    assert config.model is not None
    build, kwargs = _callable(config.model), dict(config.model_kwargs or {})
    seed = int(torch.randint(2**62, (1,), generator=streams.generator(config.seed, "init", scheme=config.streams)))
    with torch.random.fork_rng(devices=[]):  # the global generator drawn from and then put back
        torch.manual_seed(seed)
        try:
            model = build(**kwargs)
        except TypeError as err:  # the keyword arguments do not fit the callable (a bug inside it shows its traceback)
            if "argument" not in str(err):
                raise
            raise RunError(f"model {config.model}: called with {kwargs}: {err}; give --model-kwargs as a JSON object "
                           "of its keyword arguments") from None  # fmt: skip
    if not isinstance(model, torch.nn.Module):
        raise RunError(f"model {config.model} returned a {type(model).__name__}, not a torch.nn.Module")
    try:
        check_sampled_model(model)
    except TypeError as err:
        raise RunError(f"model {config.model}: {err}") from None
    dtype = next((p.dtype for p in model.parameters()), torch.get_default_dtype())
    try:  # one image of the data sets' 28 x 28 pixels, before any run folder is made
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            log_w = model.log_weights(torch.zeros(1, X_DIM, dtype=dtype), 2)
    except Exception as err:
        raise RunError(f"model {config.model} cannot score an image of {X_DIM} pixels, as the data sets hold: "
                       f"log_weights(x of shape (1, {X_DIM}), k=2) raised {type(err).__name__}: {err}"
                       ) from err  # fmt: skip
    if tuple(log_w.shape) != (2, 1):
        raise RunError(f"model {config.model}: log_weights(x of shape (1, {X_DIM}), k=2) returned shape "
                       f"{tuple(log_w.shape)}; expected (k, batch) = (2, 1)")  # fmt: skip
    return model
