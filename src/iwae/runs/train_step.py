"""One parameter update per call, optionally through ``torch.compile``, and the paper's optimiser.

:func:`build_step` turns a model, an optimiser and an :class:`~iwae.objectives.Objective` into ``step(x) -> loss``;
:func:`make_train_step` is the same with the objective given by its arguments. The training loop
(:mod:`iwae.runs.train`) calls the step; the objective owns the bound and the gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from iwae.evaluate import checked_batch
from iwae.models.latent_model import SampledModel
from iwae.objectives import Objective
from iwae.objectives.base import check_path_keywords
from iwae.objectives.loss import check_sampled_model, resolve_bound
from iwae.objectives.registry import ESTIMATORS_BY_NAME
from iwae.util.cpu import flush_subnormals

__all__ = ["build_step", "make_train_step", "make_optimizer"]


def build_step(
    model: SampledModel,
    optimizer: torch.optim.Optimizer,
    objective: Objective,
    *,
    generator: torch.Generator | None = None,
    compile: bool = False,
    flush_denormal: bool = True,
) -> Callable[[Tensor], Tensor]:
    """One parameter update per call: ``loss = step(x_binary_batch)``.

    Returns the detached loss (minus the batch-mean bound) as a tensor on the model's device, so the caller
    decides when to synchronise with the host.

    ``compile=True`` runs the loss and its backward pass through ``torch.compile`` (the noise is drawn outside
    it, from ``generator``, so the draws are those of the eager step): elementwise work is fused and, on CUDA,
    the step is replayed as CUDA graphs (``mode="reduce-overhead"``). The first steps, and the first step at a
    new batch size, pay the compilation (seconds to a minute). Available where ``objective.compilable``.

    ``flush_denormal`` (default): on a CPU, subnormal floats are flushed to zero during the step and the setting
    found is restored after it (:func:`iwae.util.cpu.flush_subnormals`); IWAE steps are 2-5x faster with it.

    :raises ValueError: for ``compile=True`` with an objective that cannot be compiled.
    """
    if compile:
        objective.check_compilable()
        loss_fn = _compiled_loss(model, objective, generator)
    else:

        def loss_fn(x: Tensor) -> Tensor:
            return objective.loss(model, x, generator)

    on_cpu = next(model.parameters()).device.type == "cpu"  # the flag is the CPU's: a GPU step leaves it alone

    def step(x: Tensor) -> Tensor:
        with flush_subnormals(flush_denormal) if on_cpu else nullcontext():
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(x)
            loss.backward()
            optimizer.step()
        return loss.detach()

    return step


def make_train_step(model: SampledModel, optimizer: torch.optim.Optimizer, k: int = 50, bound: str | None = None,
                    estimator: str = "reparam", *, m: int = 1, beta: float = 0.5,
                    generator: torch.Generator | None = None, compile: bool = False,
                    flush_denormal: bool = True, kind: str | None = None,
                    **params: float) -> Callable[[Tensor], Tensor]:  # fmt: skip
    """:func:`build_step` for ``Objective(bound, k, estimator, m, beta, **params)`` (``bound`` default ``"iwae"``,
    ``kind`` its former name; ``params``: the other bounds' parameters, e.g. ``alpha=0.5`` for ``bound="vr"``):
    ``loss = step(x_binary_batch)``.

    Returns the detached loss (minus the batch-mean bound). ``compile=True`` is available for the compilable
    estimators (``reparam`` and ``stl``, and a registered one that says so) of every bound but ``piwae``, and
    ``flush_denormal`` (on by default) flushes subnormal floats during the step (see :func:`build_step`). The first
    batch is checked as
    :func:`iwae.evaluate.checked_batch` checks images (refused outside [0, 1], a warning for grey levels; bool or
    integer images cast to the model's dtype, as on every batch, and an empty batch refused).
    """
    check_sampled_model(model)
    _check_optimizer(model, optimizer)
    objective = Objective(resolve_bound(bound, kind), k, estimator, m=m, beta=beta, **params)
    step = build_step(model, optimizer, objective, generator=generator, compile=compile, flush_denormal=flush_denormal)
    checked = False

    def checked_step(x: Tensor) -> Tensor:
        nonlocal checked
        if not checked:  # the first batch: images of 0..255, or NaNs, would train on nonsense without a word
            x = checked_batch(model, x, stacklevel=3)
            checked = True
        elif x.shape[0] == 0 or not x.dtype.is_floating_point:  # cheap checks on every batch
            x = checked_batch(model, x, stacklevel=3)
        return step(x)

    return checked_step


def _check_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """A ValueError when ``optimizer`` updates none of ``model``'s parameters (one made for another model)."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not any(id(p) in held for p in model.parameters()):
        raise ValueError("the optimizer holds none of the model's parameters, so training would not change it; make "
                         "it from this model: iwae.make_optimizer(model)")  # fmt: skip


def _compiled_loss(
    model: SampledModel, objective: Objective, generator: torch.Generator | None
) -> Callable[[Tensor], Tensor]:
    """The objective's loss through ``torch.compile``, its noise drawn eagerly from ``generator``."""
    n = objective.samples_per_example

    def loss(x: Tensor, noise: Sequence[Tensor]) -> Tensor:
        return objective.loss(model, x, noise=noise)

    device = next(model.parameters()).device
    compiled = torch.compile(loss, dynamic=False, mode="reduce-overhead" if device.type == "cuda" else None)

    def run(x: Tensor) -> Tensor:
        if ESTIMATORS_BY_NAME[objective.estimator].path_keywords:  # (not probed inside the compiled trace)
            check_path_keywords(model, x, objective.estimator)
        value = compiled(x, model.draw_noise(n, x.shape[0], generator))
        # CUDA graphs reuse their output buffers on the next replay: hand the caller its own copy.
        return value.clone() if device.type == "cuda" else value

    return run


def make_optimizer(
    model: nn.Module, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-4
) -> torch.optim.Adam:
    """Adam with the paper's settings (Section 5.1: beta1 0.9, beta2 0.999, eps 1e-4), fused where supported."""
    params = list(model.parameters())
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, ValueError):  # fused kernels are unavailable for some devices and dtypes
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, foreach=True)
