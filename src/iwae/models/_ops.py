"""Elementwise kernels of the model: tanh, Bernoulli and Gaussian log-densities, fast on CPU.

Private to :mod:`iwae.models.model`; the fused paths compute the plain formulas (``tests/test_fast_paths.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

# Below this many elements the plain ATen kernels win in a training step: an autograd.Function costs tens of
# microseconds of Python (measured on a 2-core CPU: fused paths slower at k = 1 and 5, faster at k = 50, batch 20).
FUSE_MIN = 1 << 17
# Without autograd the sigmoid form of tanh costs only three extra in-place kernel calls.
INPLACE_MIN = 4096


class _SigmoidTanh(torch.autograd.Function):
    """tanh(x) computed as 2 sigmoid(2x) - 1, with the backward pass 1 - tanh^2 read from the saved output."""

    generate_vmap_rule = True  # so that torch.func transforms (grad, vmap) can run the model

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x.mul(2).sigmoid_().mul_(2).sub_(1)  # one new tensor, then in place

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def tanh(x: Tensor) -> Tensor:
    """tanh, fast on CPU: ATen's float32 tanh costs several times its sigmoid there, so large tensors go through
    the identity tanh(x) = 2 sigmoid(2x) - 1 (within a few float32 ulps of torch.tanh); without autograd, in place.

    Without a graph to record (``x`` needs no gradient) it writes into ``x``: callers pass a fresh activation.
    Under ``torch.compile`` it is the same identity in plain operations, which the compiler fuses.
    """
    if torch.compiler.is_compiling() or _transformed(x):
        return 2 * torch.sigmoid(2 * x) - 1
    if x.requires_grad:
        return _SigmoidTanh.apply(x) if x.numel() >= FUSE_MIN and x.device.type == "cpu" else torch.tanh(x)
    if x.numel() >= INPLACE_MIN and x.device.type == "cpu":
        return x.mul_(2).sigmoid_().mul_(2).sub_(1)
    return x.tanh_()


def _transformed(x: Tensor) -> bool:
    """Whether ``x`` is seen through a torch.func transform (vmap, grad), which hides ``requires_grad``: the in-place
    shortcuts taken for tensors without a graph would overwrite what the backward pass needs."""
    return torch._C._functorch.is_functorch_wrapped_tensor(x)


class Tanh(nn.Module):
    """``nn.Tanh`` through :func:`tanh`; it overwrites its input when no gradient is recorded (see there)."""

    def forward(self, x: Tensor) -> Tensor:
        return tanh(x)


class _BernoulliLogProb(torch.autograd.Function):
    """sum_j x_j l_j - softplus(l_j) over the last dimension, with the gradient (x - sigmoid(l)) * grad with
    respect to the logits l in one fused backward pass (autograd would chain softplus, mul, sum and add)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits: Tensor, x: Tensor) -> Tensor:
        return nn.functional.softplus(logits).addcmul_(x, logits, value=-1).sum(-1).neg_()

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        logits, x = ctx.saved_tensors
        return torch.sigmoid(logits).sub_(x).mul_(grad.unsqueeze(-1).neg()), None


def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """log Bernoulli(x; sigmoid(logits)) summed over the last dimension: sum_j x_j l_j - softplus(l_j), stable for
    any logit. ``logits`` (..., batch, D) broadcasts against ``x`` (batch, D)."""
    # Compiled or under vmap: the plain operations below (the compiler fuses them; vmap hides requires_grad).
    if not (torch.compiler.is_compiling() or _transformed(logits)):
        if logits.numel() >= FUSE_MIN and logits.requires_grad and not x.requires_grad:
            return _BernoulliLogProb.apply(logits, x)
        if not torch.is_grad_enabled() or not (logits.requires_grad or x.requires_grad):
            return nn.functional.softplus(logits).addcmul_(x, logits, value=-1).sum(-1).neg_()
    return (x * logits).sum(-1) - nn.functional.softplus(logits).sum(-1)


def gaussian_terms(h: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Per-unit log N(h; mean, exp(log_std)^2), not summed."""
    z = (h - mean) * torch.exp(-log_std)
    return -(0.5 * z.square() + log_std + HALF_LOG_2PI)


def gaussian_log_prob(h: Tensor, mean: Tensor, log_std: Tensor, keep: Tensor | None = None) -> Tensor:
    """log N(h; mean, exp(log_std)^2) summed over the last dimension, over the units ``keep`` marks (all if None;
    then the two sums are taken apart, fewer passes than summing the terms)."""
    if keep is not None:
        return masked_sum(gaussian_terms(h, mean, log_std), keep)
    z = (h - mean) * torch.exp(-log_std)
    return -(0.5 * z.square().sum(-1) + log_std.sum(-1) + h.shape[-1] * HALF_LOG_2PI)


def standard_normal_log_prob(h: Tensor, keep: Tensor | None = None) -> Tensor:
    """log N(h; 0, I) summed over the last dimension, over the units ``keep`` marks (all if None)."""
    if keep is not None:
        return masked_sum(-(0.5 * h.square() + HALF_LOG_2PI), keep)
    return -(0.5 * h.square().sum(-1) + h.shape[-1] * HALF_LOG_2PI)


def gaussian_log_q(h: Tensor, eps: Tensor, mean: Tensor, log_std: Tensor, keep: Tensor | None, from_h: bool) -> Tensor:
    """log N(h; mean, exp(log_std)^2) of a reparameterised sample h = mean + std * eps, summed as above.

    Per unit it is -z^2/2 - log std - log(2 pi)/2 with z = (h - mean) / std. ``from_h``: z from the sample, so
    gradient reaches it through h (and through mean and log std unless the caller detached them). Otherwise z
    is the noise eps exactly, which carries no gradient; unmasked, the eps and log std parts are then summed
    apart, the log std part per example when ``log_std`` is (batch, d). The two forms round differently, and
    each keeps the rounding its estimators have always had (training runs reproduce bit for bit).
    """
    if not from_h and keep is None:
        return -(0.5 * eps.square().sum(-1) + (log_std.sum(-1) + eps.shape[-1] * HALF_LOG_2PI))
    z = (h - mean) * torch.exp(-log_std) if from_h else eps
    return masked_sum(-(0.5 * z.square() + log_std + HALF_LOG_2PI), keep)


def masked_sum(terms: Tensor, keep: Tensor | None) -> Tensor:
    """Sum per-unit log-density terms over the last dimension, over the units ``keep`` marks (all if None)."""
    return terms.sum(-1) if keep is None else (terms * keep).sum(-1)
