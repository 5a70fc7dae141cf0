r"""Annealed importance sampling (Neal 2001) of log p(x), for any model that gives log-weights of given noise.

L_5000 (Eq. 8) is a lower bound whose gap shrinks only as 1/k; the evaluation of decoder-based models that Wu et
al. (2017) propose anneals instead, with Hamiltonian Monte Carlo (HMC) moves between importance weights. Here the
annealing runs in the space of the reparameterisation noise: a sample is :math:`h = T_x(\epsilon)` with
:math:`\epsilon \sim \mathcal{N}(0, I)`, and since :math:`q(h \mid x) = \mathcal{N}(\epsilon) / |\det \partial
T_x / \partial \epsilon|`, the posterior in :math:`\epsilon` is proportional to :math:`\mathcal{N}(\epsilon)\, w(x,
T_x(\epsilon))`, whose normalising constant is :math:`\mathbb{E}_q[w] = p(x)`. The chain anneals along

.. math:: f_\beta(\epsilon) = \mathcal{N}(\epsilon; 0, I)\, w(\epsilon)^{\beta}, \qquad
    0 = \beta_0 < \beta_1 < \dots < \beta_T = 1,

from the recognition model's own proposal (:math:`\beta = 0`) to the posterior, accumulating :math:`\log W = \sum_t
(\beta_t - \beta_{t-1}) \log w(\epsilon_{t-1})` and moving :math:`\epsilon` by an HMC transition that leaves
:math:`f_{\beta_t}` invariant after each increment. Every chain's :math:`W` is an unbiased estimate of p(x), and the
mean over C chains, :math:`\log \frac{1}{C} \sum_c W_c`, a stochastic lower bound on log p(x) that tightens with T.
With T = 1 (no move) it is :math:`\mathcal{L}_C` on the same noise. The step size may adapt, steered by pilot
chains that are left out of the estimate, so that no estimating chain's kernel depends on its own past (which would
bias its weight). The recognition model preconditions the chain:
the closer q is to the posterior, the closer the target is to :math:`\mathcal{N}(0, I)` and the fewer steps it
needs.

The model is read through :meth:`forward_samples(x, C, noise=...)` alone (:class:`iwae.SampledModel`'s protocol), so
any model of one's own is evaluated the same way.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

from iwae.evaluate import _eval_mode, checked_batch
from iwae.util.cpu import flush_subnormals

__all__ = ["ais_log_likelihood", "sigmoid_schedule"]


def sigmoid_schedule(steps: int, sharpness: float = 4.0) -> Tensor:
    """``steps + 1`` inverse temperatures from 0 to 1 (float64), dense at both ends: a sigmoid of evenly spaced
    points in [-sharpness, sharpness], rescaled to [0, 1] (Grosse et al. 2015; Wu et al. 2017)."""
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    s = torch.sigmoid(torch.linspace(-sharpness, sharpness, steps + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


def _log_w_and_grad(model: object, x: Tensor, eps: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """The (C, batch) log-weights at noise ``eps`` and their gradients with respect to it (each chain and example
    apart: they do not interact)."""
    eps = [e.detach().requires_grad_() for e in eps]
    with torch.enable_grad():
        log_w = model.forward_samples(x, eps[0].shape[0], noise=eps).log_w
        grads = torch.autograd.grad(log_w.sum(), eps)
    return log_w.detach(), list(grads)


def ais_log_likelihood(
    model: object,
    x: Tensor,
    steps: int = 500,
    chains: int = 16,
    *,
    leapfrog: int = 10,
    step_size: float = 0.1,
    adapt: bool = True,
    pilots: int = 4,
    target_accept: float = 0.65,
    block: int = 256,
    generator: torch.Generator | None = None,
    flush_denormal: bool = True,
    progress: bool = False,
) -> Tensor:
    r"""AIS estimates of log p(x) per example, shape (batch,) (module docstring).

    :param model: an :class:`iwae.IWAE` or any model with ``forward_samples(x, k, noise=...)`` and ``draw_noise``.
    :param x: (batch, x_dim) binary images (checked as training checks them).
    :param steps: annealing steps T on :func:`sigmoid_schedule`; an HMC transition follows each but the last.
    :param chains: chains per example (C): the estimate is log of their mean weight.
    :param leapfrog: leapfrog steps per HMC transition.
    :param step_size: the leapfrog step size at the start; with ``adapt``, each example's is multiplied by 1.02
        after a transition whose acceptance exceeds ``target_accept``, else by 0.98 (as Wu et al. 2017 adapt it).
    :param pilots: with ``adapt``, the chains per example whose acceptance alone steers the step size, run beside
        the C chains and left out of the estimate: a kernel that adapted to the estimating chains' own past would
        bias their weights, and one steered by other chains does not.
    :param block: examples annealed at a time (memory: ``block * (chains + pilots)`` samples a pass).
    :param generator: source of the initial noise, the momenta and the acceptance draws.
    :param flush_denormal: on a CPU, flush subnormal floats to zero meanwhile (as :func:`iwae.log_likelihood`).
    :param progress: a progress bar over the annealing steps.

    It costs ``(steps - 1) * leapfrog + 1`` forward and backward passes of ``chains + pilots`` samples per example:
    meant for a subset of the test set, or a GPU. The model is evaluated in eval mode, and restored as found.
    """
    counts = {"steps": steps, "chains": chains, "leapfrog": leapfrog, "block": block}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in counts.values()):
        raise ValueError(f"steps, chains, leapfrog and block must be positive integers, got {counts}")
    if not (isinstance(pilots, int) and pilots >= (1 if adapt else 0)):
        raise ValueError(f"pilots must be a positive integer when the step size adapts, got {pilots!r}")
    if not step_size > 0 or not 0 < target_accept < 1:
        raise ValueError(f"step_size must be positive and target_accept in (0, 1), got {step_size}, {target_accept}")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("ais_log_likelihood follows the gradient of log w: call it outside torch.inference_mode()")
    x = checked_batch(model, x)
    with flush_subnormals(flush_denormal and x.device.type == "cpu"), _eval_mode(model):
        bar = tqdm(total=steps * x.shape[0], desc="AIS", unit="step", disable=not progress, leave=False)
        parts = [
            _anneal(model, x[i : i + block], steps, chains, pilots if adapt else 0, leapfrog, step_size,
                    target_accept, generator, bar)
            for i in range(0, x.shape[0], block)
        ]  # fmt: skip
        bar.close()
    return torch.cat(parts)


def _anneal(
    model: object,
    x: Tensor,
    steps: int,
    chains: int,
    pilots: int,
    leapfrog: int,
    step_size: float,
    target_accept: float,
    generator: torch.Generator | None,
    bar: tqdm,
) -> Tensor:
    """:func:`ais_log_likelihood` of one block of examples; ``pilots`` > 0: adapt the step size on those."""
    betas = sigmoid_schedule(steps).tolist()
    eps = list(model.draw_noise(chains, x.shape[0], generator))
    if pilots:  # drawn after the estimating chains' noise, which is then the same with or without them
        eps = [torch.cat([e, p]) for e, p in zip(eps, model.draw_noise(pilots, x.shape[0], generator))]
    delta = torch.full((1, x.shape[0], 1), float(step_size), dtype=x.dtype, device=x.device)  # per example
    log_w, grad = _log_w_and_grad(model, x, eps)
    log_weight = torch.zeros_like(log_w, dtype=torch.float64)
    for t in range(1, steps + 1):
        log_weight += (betas[t] - betas[t - 1]) * log_w.double()
        if t < steps:  # a transition after the last increment would change nothing
            eps, log_w, grad, accepted = _hmc(model, x, eps, log_w, grad, betas[t], delta, leapfrog, generator)
            if pilots:
                rate = accepted[chains:].float().mean(0, keepdim=True).unsqueeze(-1)  # (1, batch, 1)
                delta = torch.where(rate > target_accept, delta * 1.02, delta * 0.98)
        bar.update(x.shape[0])
    return torch.logsumexp(log_weight[:chains], 0) - math.log(chains)


def _hmc(
    model: object,
    x: Tensor,
    eps: list[Tensor],
    log_w: Tensor,
    grad: list[Tensor],
    beta: float,
    delta: Tensor,
    leapfrog: int,
    generator: torch.Generator | None,
) -> tuple[list[Tensor], Tensor, list[Tensor], Tensor]:
    """One HMC transition leaving f_beta invariant: potential U = |eps|^2 / 2 - beta log w(eps); the state after,
    with its log-weights and their gradients, and which (chain, example) accepted."""

    def potential(e: list[Tensor], lw: Tensor) -> Tensor:
        return sum(0.5 * v.square().sum(-1) for v in e) - beta * lw  # (C, batch)

    def grad_u(e: list[Tensor], g: list[Tensor]) -> list[Tensor]:
        return [v - beta * gv for v, gv in zip(e, g)]

    momentum = [torch.randn(e.shape, dtype=e.dtype, device=e.device, generator=generator) for e in eps]
    start_h = potential(eps, log_w) + sum(0.5 * p.square().sum(-1) for p in momentum)
    new, lw, g = list(eps), log_w, grad
    p = [pv - 0.5 * delta * gu for pv, gu in zip(momentum, grad_u(new, g))]
    for step in range(leapfrog):
        new = [e + delta * pv for e, pv in zip(new, p)]
        lw, g = _log_w_and_grad(model, x, new)
        scale = delta if step < leapfrog - 1 else 0.5 * delta
        p = [pv - scale * gu for pv, gu in zip(p, grad_u(new, g))]
    end_h = potential(new, lw) + sum(0.5 * pv.square().sum(-1) for pv in p)
    u = torch.rand(log_w.shape, dtype=torch.float64, device=log_w.device, generator=generator)
    accept = (u.log() < (start_h - end_h).double()) & torch.isfinite(end_h)  # a diverged proposal is refused
    keep = accept.unsqueeze(-1)
    eps = [torch.where(keep, n, e) for n, e in zip(new, eps)]
    grad = [torch.where(keep, gn, go) for gn, go in zip(g, grad)]
    return eps, torch.where(accept, lw, log_w), grad, accept
