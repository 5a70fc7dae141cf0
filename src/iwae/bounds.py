r"""Lower bounds on log p(x) as pure functions of log importance weights.

Every function takes ``log_w`` of shape ``(k, batch)`` (the output of ``IWAE.log_weights``) and reduces the sample
dimension 0, returning one value per example, shape ``(batch,)``.

References: Burda, Grosse & Salakhutdinov (2016), *Importance Weighted Autoencoders* (Eq. 3, Eq. 8, Theorem 1);
Rainforth et al. (2018), *Tighter Variational Bounds are Not Necessarily Better* (MIWAE, CIWAE, PIWAE); Li & Turner
(2016), *Rényi Divergence Variational Inference* (the VR bound).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["elbo", "iwae", "miwae", "ciwae", "vr"]


def _check(log_w: Tensor) -> int:
    if log_w.dim() < 1 or log_w.shape[0] < 1:
        raise ValueError(f"log_w must have a sample dimension 0 of size >= 1, got shape {tuple(log_w.shape)}")
    return log_w.shape[0]


def elbo(log_w: Tensor) -> Tensor:
    r"""The k-sample VAE bound: the mean of the log-weights.

    .. math:: \mathcal{L}^{\mathrm{VAE}}_k(x) = \frac{1}{k} \sum_{i=1}^{k} \log w_i

    An unbiased estimate of the ELBO (Burda et al. 2016, Eq. 3); its gradient is Eq. 7.
    """
    _check(log_w)
    return log_w.mean(0)


def iwae(log_w: Tensor) -> Tensor:
    r"""The importance weighted bound :math:`\mathcal{L}_k` (Burda et al. 2016, Eq. 8).

    .. math:: \mathcal{L}_k(x) = \log \frac{1}{k} \sum_{i=1}^{k} w_i

    Computed as a log-sum-exp, finite for any finite log-weights. Equals the ELBO at k = 1; its expectation rises
    with k and tends to log p(x) (Theorem 1). Its gradient is the normalised-weight average of the log-weight
    gradients (Eq. 14).
    """
    k = _check(log_w)
    return torch.logsumexp(log_w, 0) - math.log(k)


def miwae(log_w: Tensor, k_inner: int) -> Tensor:
    r"""The multiply importance weighted bound (Rainforth et al. 2018): M outer x K inner samples.

    .. math:: \mathcal{L}_{M,K}(x) = \frac{1}{M} \sum_{m=1}^{M} \log \frac{1}{K} \sum_{k=1}^{K} w_{m,k}

    ``log_w`` holds the M*K log-weights, group m in rows ``m*K .. m*K+K-1``. M = 1 gives :func:`iwae`,
    K = 1 gives :func:`elbo`.
    """
    n = _check(log_w)
    if k_inner < 1 or n % k_inner:
        raise ValueError(f"k_inner={k_inner} must divide the number of samples ({n})")
    grouped = log_w.reshape(n // k_inner, k_inner, *log_w.shape[1:])  # (M, K, batch)
    return iwae(grouped.transpose(0, 1)).mean(0)


def ciwae(log_w: Tensor, beta: float) -> Tensor:
    r"""The combination bound (Rainforth et al. 2018): a beta-mix of the ELBO and the IWAE bound.

    .. math:: \mathcal{L}^{\mathrm{CIWAE}}_\beta(x) = \beta\, \mathcal{L}^{\mathrm{VAE}}_k(x)
        + (1 - \beta)\, \mathcal{L}_k(x)

    beta = 0 gives :func:`iwae`, beta = 1 gives :func:`elbo`.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    return beta * elbo(log_w) + (1.0 - beta) * iwae(log_w)


def vr(log_w: Tensor, alpha: float) -> Tensor:
    r"""The variational Rényi bound (Li & Turner 2016), its k-sample estimate, for 0 <= alpha < 1.

    .. math:: \mathcal{L}_\alpha(x) = \frac{1}{1 - \alpha} \log \frac{1}{k} \sum_{i=1}^{k} w_i^{1 - \alpha}

    alpha = 0 is :func:`iwae` (the same operations, bit for bit); towards alpha = 1 it tends to :func:`elbo` (near 1,
    float32 loses its digits: the log-sum-exp's rounding is divided by 1 - alpha).
    Its expectation falls as alpha rises; its gradient weights each :math:`\nabla \log w_i` by
    :math:`w_i^{1-\alpha} / \sum_j w_j^{1-\alpha}`.
    """
    k = _check(log_w)
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must lie in [0, 1), got {alpha}")
    scale = 1.0 - alpha
    return (torch.logsumexp(scale * log_w, 0) - math.log(k)) / scale
