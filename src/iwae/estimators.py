r"""Training objectives: surrogate losses whose gradients are the paper's estimators and their successors.

:func:`objective` returns a scalar whose *value* is minus the batch mean of the chosen bound and whose *gradient*
is the chosen estimator of that bound's gradient. ``kind`` picks the bound, ``estimator`` the gradient:

=============  ===================================================================================================
``reparam``    Plain reparameterisation. For ``kind="vae"`` this is Eq. 7 (mean of the log-weight gradients), for
               ``kind="iwae"`` Eq. 14 (normalised-weight average, :math:`\sum_i \tilde w_i \nabla \log w_i`).
``sample-one`` Section 3.1: k forward passes without gradient, then one backward pass for one sample per example
               drawn with probability :math:`\tilde w_i`. Unbiased for Eq. 14's expectation. IWAE only.
``stl``        Sticking the landing (Roeder et al. 2017): log q is evaluated with q's parameters detached, so the
               score-function term :math:`-\nabla_\phi \log q_\phi(h)` at fixed h is dropped; the recognition network
               learns only through the samples. Decoder gradients are those of ``reparam``.
``dreg``       Doubly reparameterised gradients (Tucker et al. 2018). Decoder: :math:`\sum_i \tilde w_i
               \nabla_\theta \log w_i`. Encoder: :math:`\sum_i \tilde w_i^2 \frac{\partial \log w_i}{\partial h_i}
               \frac{\partial h_i}{\partial \phi}` with log q's parameters detached. Unbiased for Eq. 8. IWAE only.
=============  ===================================================================================================

With L > 1 stochastic layers the latent is h = (h^1, ..., h^L) and q(h | x) the product of the layers' conditionals,
so ``stl`` and ``dreg`` treat every layer alike: each q(h^l | h^(l-1)) term of log q is evaluated with that layer's
parameters detached but still as a function of the sample below it, and ``dreg``'s extra factor
:math:`\tilde w_i` multiplies the gradient flowing into the recognition network through every sample h^l_i.

Bounds (``kind``): ``vae`` (Eq. 3, k samples), ``iwae`` (Eq. 8), and Rainforth et al. (2018)'s ``miwae``
(``m`` outer groups of k samples), ``ciwae`` (``beta`` * ELBO + (1 - beta) * IWAE over k samples) and
``piwae`` (encoder trained on the IWAE bound of all m*k samples, decoder on the MIWAE bound).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from iwae import bounds
from iwae.model import IWAE

__all__ = ["KINDS", "ESTIMATORS", "check_args", "objective", "make_train_step", "make_optimizer"]

KINDS = ("vae", "iwae", "miwae", "ciwae", "piwae")
ESTIMATORS = ("reparam", "sample-one", "stl", "dreg")


def check_args(k: int, kind: str, estimator: str, m: int, beta: float, compile: bool = False) -> None:
    """Raise ValueError naming the problem for an invalid combination of objective arguments."""
    if kind not in KINDS:
        raise ValueError(f"unknown objective kind {kind!r}; choose one of {', '.join(KINDS)}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer number of samples, got {k!r}")
    if not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be a positive integer number of outer samples, got {m!r}")
    if estimator in ("sample-one", "dreg") and kind != "iwae":
        raise ValueError(f"estimator {estimator!r} is defined for kind='iwae' only, got kind={kind!r}")
    if estimator == "stl" and kind == "piwae":
        raise ValueError("estimator 'stl' is not defined for kind='piwae'; use 'reparam'")
    if kind == "ciwae" and not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1] for kind='ciwae', got {beta}")
    if compile and (estimator not in ("reparam", "stl") or kind == "piwae"):
        raise ValueError(
            f"compile is available for the reparam and stl estimators of the vae, iwae, miwae and ciwae bounds, "
            f"not for estimator={estimator!r}, kind={kind!r}; train without compile"
        )


def _n_samples(kind: str, k: int, m: int) -> int:
    """Samples per example: m groups of k for ``miwae``/``piwae``, else k."""
    return m * k if kind in ("miwae", "piwae") else k


def _bound(log_w: Tensor, kind: str, k: int, beta: float) -> Tensor:
    """Per-example bound of the given kind; log_w holds m*k rows (m groups of k)."""
    if kind == "vae":
        return bounds.elbo(log_w)
    if kind == "iwae":
        return bounds.iwae(log_w)
    if kind in ("miwae", "piwae"):
        return bounds.miwae(log_w, k)
    return bounds.ciwae(log_w, beta)


def _with_value(surrogate: Tensor, value: Tensor) -> Tensor:
    """``value`` in the forward pass, ``surrogate``'s gradient in the backward pass."""
    return surrogate + (value - surrogate).detach()


def objective(
    model: IWAE,
    x: Tensor,
    k: int = 50,
    kind: str = "iwae",
    estimator: str = "reparam",
    *,
    m: int = 1,
    beta: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Scalar loss to minimise: minus the batch mean of the ``kind`` bound, with ``estimator``'s gradient.

    :param model: an :class:`~iwae.model.IWAE`.
    :param x: (batch, x_dim) binary (or real, for a Gaussian visible layer) data.
    :param k: samples per example (inner samples for ``miwae``/``piwae``).
    :param m: outer groups for ``miwae``/``piwae`` (m*k samples in all); ignored otherwise.
    :param beta: ELBO weight for ``ciwae``.
    :param generator: source of the reparameterisation noise.
    """
    check_args(k, kind, estimator, m, beta)
    n = _n_samples(kind, k, m)

    if estimator == "sample-one":
        return _sample_one(model, x, k, generator)
    if kind == "piwae":
        return _piwae(model, x, k, m, generator)
    if estimator == "dreg":
        return _dreg(model, x, k, generator)
    out = model.forward_samples(x, n, generator=generator, stop_q_grad=estimator == "stl")
    return -_bound(out.log_w, kind, k, beta).mean()


def _sample_one(model: IWAE, x: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """Section 3.1: choose one of k samples per example with probability w~_i, backpropagate through it alone.

    E[grad log w_I] over I ~ Categorical(w~) equals sum_i w~_i grad log w_i, Eq. 14's estimate.
    """
    with torch.no_grad():  # k forward passes, no graph kept
        out = model.forward_samples(x, k, generator=generator)
        bound = bounds.iwae(out.log_w)
        probs = torch.softmax(out.log_w, 0).T  # (batch, k), the normalised weights w~
        idx = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (batch,)
        cols = torch.arange(x.shape[0], device=x.device)
        chosen = [eps[idx, cols].unsqueeze(0) for eps in out.noise]  # each (1, batch, d_l)
    # One forward and backward pass on the chosen noise: the same h_i, now with a graph.
    log_w = model.forward_samples(x, 1, noise=chosen).log_w[0]
    return _with_value(-log_w.mean(), -bound.mean())


def _dreg(model: IWAE, x: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """DReG (Tucker et al. 2018) for the IWAE bound, in one backward pass.

    The surrogate sum_i sg(w~_i) log w_i (log q with detached parameters) gives the decoder its Eq. 14 gradient
    and the encoder sum_i w~_i d log w_i/dh_i dh_i/dphi; a gradient hook on every sample multiplies the part that
    flows into the encoder by another w~_i, making it w~_i^2.
    """
    weights: list[Tensor] = []  # filled once the forward pass has computed w~; read during backward

    def reweight(h: Tensor) -> Tensor:
        if not h.requires_grad:
            return h
        h = h.view_as(h)  # a fresh node, so the hook sees exactly the gradient flowing through this use of h
        h.register_hook(lambda g: g * weights[0].unsqueeze(-1))
        return h

    out = model.forward_samples(x, k, generator=generator, stop_q_grad=True, sample_hook=reweight)
    w_tilde = torch.softmax(out.log_w.detach(), 0)  # (k, batch); detached: a coefficient, not a path
    weights.append(w_tilde)
    surrogate = -(w_tilde * out.log_w).sum(0).mean()
    return _with_value(surrogate, -bounds.iwae(out.log_w.detach()).mean())


def _piwae(model: IWAE, x: Tensor, k: int, m: int, generator: torch.Generator | None) -> Tensor:
    """PIWAE (Rainforth et al. 2018): encoder on IWAE over all m*k samples, decoder on MIWAE(m, k).

    Two forward passes on the same noise route the two bounds' gradients to the two networks: one with the
    generative parameters detached, one with the recognition parameters detached.
    """
    n = m * k
    with torch.no_grad():
        noise = model.forward_samples(x, n, generator=generator).noise
    decoder = {f"decoder.{name}": p.detach() for name, p in model.decoder.named_parameters()}
    encoder = {f"encoder.{name}": p.detach() for name, p in model.encoder.named_parameters()}
    call = torch.func.functional_call
    log_w_enc = call(model, decoder, (x, n), {"noise": noise}, strict=False).log_w
    log_w_dec = call(model, encoder, (x, n), {"noise": noise}, strict=False).log_w
    surrogate = -(bounds.iwae(log_w_enc) + bounds.miwae(log_w_dec, k)).mean()
    return _with_value(surrogate, -bounds.miwae(log_w_dec.detach(), k).mean())


def make_train_step(
    model: IWAE,
    optimizer: torch.optim.Optimizer,
    k: int = 50,
    kind: str = "iwae",
    estimator: str = "reparam",
    *,
    m: int = 1,
    beta: float = 0.5,
    generator: torch.Generator | None = None,
    compile: bool = False,
) -> Callable[[Tensor], Tensor]:
    """One parameter update per call: ``loss = step(x_binary_batch)``.

    Returns the detached loss (minus the batch-mean bound) as a tensor on the model's device, so the caller
    decides when to synchronise with the host.

    ``compile=True`` runs the loss and its backward pass through ``torch.compile`` (the noise is drawn outside
    it, from ``generator``, so the draws are those of the eager step): elementwise work is fused and, on CUDA,
    the step is replayed as CUDA graphs (``mode="reduce-overhead"``). The first steps, and the first step at a
    new batch size, pay the compilation (seconds to a minute). Available for the ``reparam`` and ``stl``
    estimators of the ``vae``, ``iwae``, ``miwae`` and ``ciwae`` bounds.
    """
    check_args(k, kind, estimator, m, beta, compile)
    loss_fn = _compiled_loss(model, k, kind, estimator, m, beta, generator) if compile else None

    def step(x: Tensor) -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        if loss_fn is None:
            loss = objective(model, x, k, kind, estimator, m=m, beta=beta, generator=generator)
        else:
            loss = loss_fn(x)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def _compiled_loss(
    model: IWAE, k: int, kind: str, estimator: str, m: int, beta: float, generator: torch.Generator | None
) -> Callable[[Tensor], Tensor]:
    """The ``reparam``/``stl`` loss of :func:`objective` through ``torch.compile``, noise drawn eagerly."""
    n = _n_samples(kind, k, m)

    def loss(x: Tensor, noise: list[Tensor]) -> Tensor:
        out = model.forward_samples(x, n, noise=noise, stop_q_grad=estimator == "stl")
        return -_bound(out.log_w, kind, k, beta).mean()

    device = next(model.parameters()).device
    compiled = torch.compile(loss, dynamic=False, mode="reduce-overhead" if device.type == "cuda" else None)

    def run(x: Tensor) -> Tensor:
        model._masks()  # refresh the pruning flag eagerly; the compiled graph guards on it
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
