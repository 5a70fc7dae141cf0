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

**From the prior** (``anneal_from="prior"``, Wu et al. 2017's own setting): the noise is the prior's instead,
:math:`h = G(\epsilon)` with :math:`h^L = \epsilon^L` and :math:`h^l = \mu_p(h^{l+1}) + \sigma_p(h^{l+1})
\epsilon^l`, and the chain anneals along :math:`\mathcal{N}(\epsilon; 0, I)\, p(x \mid G(\epsilon))^{\beta}`,
whose normalising constant at :math:`\beta = 1` is p(x) too. The recognition model plays no part: the chains need
more steps (the posterior is far narrower than the prior), but they start everywhere the prior puts mass, so a
posterior mode that q misses, and with it AIS from q and :math:`\mathcal{L}_k`, can be found, the more surely the
more steps and chains (``benchmarks/results/ais_exact.md`` measures both starts against exact log p(x)). The model
needs ``log_px_at_prior_noise(x, noise)`` for it (:meth:`iwae.IWAE.log_px_at_prior_noise`). With
``anneal_from="both"`` the chains of the two starts are pooled: every chain's weight is unbiased for p(x) whichever
its start, so the log of their mean weight is a stochastic lower bound as well, and each start covers modes the
other misses.

**How close AIS comes** is measured by bidirectional Monte Carlo (Grosse et al. 2015; Wu et al. 2017), :func:`bdmc`,
on data simulated from the model, where an exact posterior draw is known: the latent that generated x. Annealing
in reverse from it, :math:`\beta` from 1 to 0, accumulates :math:`\log W' = \sum_t (\beta_{t-1} - \beta_t) \log
w(\epsilon_t)`, and :math:`W'` is an unbiased estimate of 1/p(x); so :math:`-\log \frac{1}{C} \sum_c W'_c` is a
stochastic upper bound on log p(x), and forward AIS on the same x a stochastic lower one. The two close in on
log p(x) as T grows: their difference bounds the error of forward AIS with the same settings on such data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from iwae.evaluate import checked_batch
from iwae.models.model import LogWeights
from iwae.util.cpu import flush_subnormals
from iwae.util.modes import eval_mode

__all__ = [
    "ais_log_likelihood",
    "iter_ais_log_likelihood",
    "bdmc",
    "BDMC",
    "sigmoid_schedule",
    "ANNEAL_FROM",
    "check_anneal_from",
    "anneal_starts",
]


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
    anneal_from: str = "q",
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
    :param anneal_from: ``"q"``: from the recognition model's proposal; ``"prior"``: from the prior, q unused, for
        a model with ``log_px_at_prior_noise`` (module docstring): more steps, but not bound to the modes q covers;
        ``"both"``: ``chains`` from each, pooled (every chain's weight is unbiased for p(x) whichever its start), at
        the cost of the two.
    :param flush_denormal: on a CPU, flush subnormal floats to zero meanwhile (as :func:`iwae.log_likelihood`).
    :param progress: a progress bar over the annealing steps.

    It costs ``(steps - 1) * leapfrog + 1`` forward and backward passes of ``chains + pilots`` samples per example:
    meant for a subset of the test set, or a GPU. The model is evaluated in eval mode, and restored as found.
    """
    _check_settings(steps, chains, leapfrog, block, adapt, pilots, step_size, target_accept)
    x = checked_batch(model, x)
    targets = _targets(model, anneal_from)
    total = len(targets) * steps * x.shape[0]
    with tqdm(total=total, desc="AIS", unit="step", disable=not progress, leave=False) as bar:
        settings = (chains, pilots if adapt else 0, leapfrog, step_size, target_accept, block, generator)
        blocks = _ais_blocks(model, targets, x, steps, settings, 0, bar, flush_denormal)
        return torch.cat([ll for _, ll in blocks])


def iter_ais_log_likelihood(
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
    anneal_from: str = "q",
    start: int = 0,
    bar: tqdm | None = None,
    flush_denormal: bool = True,
) -> Iterator[tuple[int, Tensor]]:
    """:func:`ais_log_likelihood`'s estimates ``block`` examples at a time, as ``(first row, estimates)`` pairs: for
    a long evaluation that saves its progress between blocks and continues later where it stopped.

    The blocks, and what each draws from ``generator``, are those of :func:`ais_log_likelihood` with the same
    arguments, so together they give its estimates exactly. To continue, pass as ``start`` the row after the last
    block done, with ``generator`` in the state it was in when that block was yielded. The annealing steps are
    counted on ``bar``. The model stays in eval mode, and subnormals flushed, until the iteration ends or is closed.
    """
    _check_settings(steps, chains, leapfrog, block, adapt, pilots, step_size, target_accept)
    x = checked_batch(model, x)
    if not (isinstance(start, int) and 0 <= start <= x.shape[0] and (start % block == 0 or start == x.shape[0])):
        raise ValueError(f"start must be 0 or the row after a block (a multiple of {block}), got {start!r}")
    settings = (chains, pilots if adapt else 0, leapfrog, step_size, target_accept, block, generator)
    return _ais_blocks(model, _targets(model, anneal_from), x, steps, settings, start, bar, flush_denormal)


def _ais_blocks(
    model: object,
    targets: list[object],
    x: Tensor,
    steps: int,
    settings: tuple,
    start: int,
    bar: tqdm | None,
    flush_denormal: bool,
) -> Iterator[tuple[int, Tensor]]:
    """The estimates of :func:`iter_ais_log_likelihood` from row ``start`` on (arguments checked; ``targets`` as
    :func:`_targets` gives them for ``model``, each block annealed for each in turn and their chains pooled;
    ``settings`` as :func:`_annealed` reads them)."""
    chains, pilots, generator = settings[0], settings[1], settings[-1]
    betas = sigmoid_schedule(steps).tolist()
    with flush_subnormals(flush_denormal and x.device.type == "cpu"), eval_mode(model):
        runs = [_annealed(t, x, betas, _from_proposal(t, chains, pilots, generator), settings, bar, start)
                for t in targets]  # fmt: skip
        for blocks in zip(*runs):  # a block from each target, in turn
            log_weight = torch.cat([w for _, w, _ in blocks])
            yield blocks[0][0], torch.logsumexp(log_weight, 0) - math.log(log_weight.shape[0])


class _FromPrior:
    """The annealing target in the prior's noise: ``forward_samples`` gives log p(x | h^1(eps)) as the log-weight,
    so that the chains anneal along N(eps) p(x | h(eps))^beta (module docstring)."""

    def __init__(self, model: object) -> None:
        self.model = model

    def draw_noise(self, k: int, batch: int, generator: torch.Generator | None = None) -> list[Tensor]:
        return self.model.draw_noise(k, batch, generator)  # the prior's noise has the recognition noise's shapes

    def forward_samples(self, x: Tensor, k: int, *, noise: list[Tensor]) -> LogWeights:
        return LogWeights(self.model.log_px_at_prior_noise(x, noise), [], noise)


# where the chains start: the recognition model's proposal, the prior, or both (chains from each, pooled)
ANNEAL_FROM = ("q", "prior", "both")


def check_anneal_from(anneal_from: str) -> None:
    """A ValueError unless ``anneal_from`` is one of :data:`ANNEAL_FROM`."""
    if anneal_from not in ANNEAL_FROM:
        raise ValueError(f"anneal_from must be 'q' (the recognition model), 'prior' or 'both' (chains from each, "
                         f"pooled), got {anneal_from!r}")  # fmt: skip


def anneal_starts(anneal_from: str) -> tuple[str, ...]:
    """The starts an ``anneal_from`` setting anneals each block from, in turn: ``("q",)``, ``("prior",)``, or
    ``("q", "prior")`` for ``"both"`` (so an image takes ``len(...) * steps`` annealing steps)."""
    check_anneal_from(anneal_from)
    return ("q", "prior") if anneal_from == "both" else (anneal_from,)


def _targets(model: object, anneal_from: str) -> list[object]:
    """What the chains read as their log-weights, one per start: the model itself (from q), its likelihood in the
    prior's noise (from the prior), or the one and then the other (both)."""
    starts = anneal_starts(anneal_from)
    if "prior" in starts and not callable(getattr(model, "log_px_at_prior_noise", None)):
        raise TypeError(f"{type(model).__name__} has no log_px_at_prior_noise(x, noise): annealing from the prior "
                        "needs log p(x | h) at latents drawn from the prior by that noise (see "
                        "iwae.IWAE.log_px_at_prior_noise); anneal from q instead")  # fmt: skip
    return [model if start == "q" else _FromPrior(model) for start in starts]


class BDMC(NamedTuple):
    """Output of :func:`bdmc`: ``x`` (n, x_dim) simulated data, and per example the stochastic ``lower`` bound on
    log p(x) by forward AIS and the stochastic ``upper`` bound by reverse AIS from the exact posterior draw."""

    x: Tensor
    lower: Tensor
    upper: Tensor


def bdmc(
    model: object,
    n: int,
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
    anneal_from: str = "q",
    flush_denormal: bool = True,
    progress: bool = False,
) -> BDMC:
    """Bidirectional Monte Carlo (module docstring): n data simulated from the model, each annealed forward from the
    recognition model's proposal, or the prior (as :func:`ais_log_likelihood`), and in reverse from the latent that
    generated it.

    ``upper - lower`` bounds, in expectation, how far forward AIS with these settings falls short of log p(x) on
    data like the model's own. The settings are :func:`ais_log_likelihood`'s. The reverse chains of an example all
    start from its one exact draw and take, at each temperature, the step size that the forward pilots reached
    there: pilots of their own would start from that same draw, and a kernel steered by it would bias the chains'
    weights. The model needs, beside the protocol, ``simulate(n, generator) -> Simulated``
    (:meth:`iwae.IWAE.simulate`): the data with the noise of their latents; with ``anneal_from="prior"``, both
    passes run in the prior's noise, whose exact draw ``prior_noise(samples, generator)`` gives
    (:meth:`iwae.IWAE.prior_noise`). It costs :func:`ais_log_likelihood` on the n simulated data, and as much again
    less the pilots for the reverse pass.
    """
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        raise ValueError(f"n must be a positive number of simulated data, got {n!r}")
    if not callable(getattr(model, "simulate", None)):
        raise TypeError(f"{type(model).__name__} has no simulate(n, generator): bidirectional Monte Carlo needs data "
                        "drawn from the model with the noise of their latents (see iwae.IWAE.simulate)")  # fmt: skip
    _check_settings(steps, chains, leapfrog, block, adapt, pilots, step_size, target_accept)
    if anneal_from == "both":
        raise ValueError("bdmc anneals from 'q' or from 'prior': run it for each (chains pooled from both starts "
                         "have no one reverse pass)")  # fmt: skip
    (target,) = _targets(model, anneal_from)
    if anneal_from == "prior" and not callable(getattr(model, "prior_noise", None)):
        raise TypeError(f"{type(model).__name__} has no prior_noise(samples, generator): bidirectional Monte Carlo "
                        "from the prior starts its reverse chains at the prior's noise of the simulated latents "
                        "(see iwae.IWAE.prior_noise)")  # fmt: skip
    with eval_mode(model), torch.no_grad():
        simulated = model.simulate(n, generator)
        if anneal_from == "prior":
            exact = [e.unsqueeze(0) for e in model.prior_noise(simulated.samples, generator)]
        else:
            exact = simulated.noise
    x = checked_batch(model, simulated.x)
    shapes = [tuple(e.shape) for e in exact]
    if any(len(s) != 3 or s[:2] != (1, n) for s in shapes):
        source = f"simulate({n})" if anneal_from == "q" else f"prior_noise of simulate({n})'s latents"
        raise ValueError(f"{type(model).__name__}.{source} gave noise of shapes {shapes}; each must be (1, {n}, d_l), "
                         "as forward_samples(x, 1, noise=...) reads it")  # fmt: skip

    def reverse(i: int, part: Tensor) -> list[Tensor]:  # every chain of an example at its exact posterior draw
        return [e[:, i : i + part.shape[0]].expand(chains, -1, -1).clone() for e in exact]

    betas = sigmoid_schedule(steps).tolist()
    settings = (chains, pilots if adapt else 0, leapfrog, step_size, target_accept, block, generator)
    with flush_subnormals(flush_denormal and x.device.type == "cpu"), eval_mode(model):
        bar = tqdm(total=2 * steps * n, desc="BDMC", unit="step", disable=not progress, leave=False)
        forward = list(_annealed(target, x, betas, _from_proposal(target, *settings[:2], generator), settings, bar))
        back = [used[::-1] for _, _, used in forward]  # reverse step t runs at forward step T - t's temperature
        reverse_pass = _annealed(target, x, betas[::-1], reverse, (chains, 0, *settings[2:]), bar, deltas=back)  # 1->0
        log_w_forward, log_w_reverse = (torch.cat([w for _, w, _ in blocks], 1) for blocks in (forward, reverse_pass))
        bar.close()
    lower = torch.logsumexp(log_w_forward, 0) - math.log(chains)
    return BDMC(x, lower, math.log(chains) - torch.logsumexp(log_w_reverse, 0))  # W' estimates 1 / p(x)


def _from_proposal(
    model: object, chains: int, pilots: int, generator: torch.Generator | None
) -> Callable[[int, Tensor], list[Tensor]]:
    """Forward annealing's start: the chains' noise, then the pilots' (so the chains start the same with or without
    pilots)."""

    def start(i: int, part: Tensor) -> list[Tensor]:
        eps = list(model.draw_noise(chains, part.shape[0], generator))
        if pilots:
            eps = [torch.cat([e, p]) for e, p in zip(eps, model.draw_noise(pilots, part.shape[0], generator))]
        return eps

    return start


def _check_settings(
    steps: int, chains: int, leapfrog: int, block: int, adapt: bool, pilots: int, step_size: float, target_accept: float
) -> None:
    counts = {"steps": steps, "chains": chains, "leapfrog": leapfrog, "block": block}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in counts.values()):
        raise ValueError(f"steps, chains, leapfrog and block must be positive integers, got {counts}")
    if not (isinstance(pilots, int) and pilots >= (1 if adapt else 0)):
        raise ValueError(f"pilots must be a positive integer when the step size adapts, got {pilots!r}")
    if not step_size > 0 or not 0 < target_accept < 1:
        raise ValueError(f"step_size must be positive and target_accept in (0, 1), got {step_size}, {target_accept}")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("AIS follows the gradient of log w: call it outside torch.inference_mode()")


def _annealed(
    model: object,
    x: Tensor,
    betas: list[float],
    start: Callable[[int, Tensor], list[Tensor]],
    settings: tuple,
    bar: tqdm | None,
    first: int = 0,
    deltas: list[list[Tensor]] | None = None,
) -> Iterator[tuple[int, Tensor, list[Tensor]]]:
    """Each block of ``block`` examples from row ``first`` on, annealed along ``betas`` (:func:`_anneal`): its first
    row, its (chains, batch) log weights and its step sizes. ``settings`` is (chains, pilots, leapfrog, step_size,
    target_accept, block, generator); ``start(i, part)`` gives the initial noise of the examples from i on (chains,
    then pilots); ``deltas``: each block's step sizes to take instead of adapting."""
    chains, pilots, leapfrog, step_size, target_accept, block, generator = settings
    for b, i in enumerate(range(first, x.shape[0], block)):
        part = x[i : i + block]
        log_weight, used = _anneal(model, part, betas, start(i, part), chains, pilots, leapfrog, step_size,
                                   target_accept, generator, bar, None if deltas is None else deltas[b])  # fmt: skip
        yield i, log_weight, used


def _anneal(
    model: object,
    x: Tensor,
    betas: list[float],
    eps: list[Tensor],
    chains: int,
    pilots: int,
    leapfrog: int,
    step_size: float,
    target_accept: float,
    generator: torch.Generator | None,
    bar: tqdm | None,
    deltas: list[Tensor] | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """One block of examples from the noise ``eps`` (chains + pilots, batch, d): the (chains, batch) log weights
    sum_t (beta_t - beta_(t-1)) log w(eps_(t-1)), and the step sizes (1, batch, 1) of the transitions; ``pilots`` >
    0: adapt the step size on those; ``deltas``: take these step sizes instead."""
    delta = torch.full((1, x.shape[0], 1), float(step_size), dtype=x.dtype, device=x.device)  # per example
    log_w, grad = _log_w_and_grad(model, x, eps)
    log_weight = torch.zeros_like(log_w, dtype=torch.float64)
    steps, used = len(betas) - 1, []
    for t in range(1, steps + 1):
        log_weight += (betas[t] - betas[t - 1]) * log_w.double()
        if t < steps:  # a transition after the last increment would change nothing
            delta = delta if deltas is None else deltas[t - 1]
            used.append(delta)
            eps, log_w, grad, accepted = _hmc(model, x, eps, log_w, grad, betas[t], delta, leapfrog, generator)
            if pilots:
                rate = accepted[chains:].float().mean(0, keepdim=True).unsqueeze(-1)  # (1, batch, 1)
                delta = torch.where(rate > target_accept, delta * 1.02, delta * 0.98)
        if bar is not None:
            bar.update(x.shape[0])
    return log_weight[:chains], used


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
