r"""Evaluation: the L_k log-likelihood estimate (Section 5.1) and the activity statistic A_u (Section 5.2).

:func:`log_likelihood` works for any model object that implements the *log-weights protocol*:

    ``log_weights(x: Tensor, k: int) -> Tensor`` returning the (k, batch) log importance weights
    :math:`\log p(x, h_i) - \log q(h_i \mid x)` of k independent samples :math:`h_i \sim q(h \mid x)`,
    computed without side effects. Calls with a small k must be independent draws, so that many calls make one
    large sample.

So a user can score their own VAE with the paper's :math:`\mathcal{L}_{5000}` by giving it that one method.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from typing import Literal, NamedTuple, Protocol, overload

import torch
from torch import Tensor
from tqdm.auto import tqdm

from iwae.models.latent_model import SampledModel
from iwae.models.model import IWAE
from iwae.objectives.names import as_count
from iwae.util.cpu import flush_subnormals
from iwae.util.modes import eval_mode

__all__ = [
    "LogWeightModel", "LikelihoodEstimate", "log_likelihood", "active_units", "count_active", "prune_inactive",
    "check_bernoulli_images", "checked_batch", "iter_log_likelihood", "block_rows",
]  # fmt: skip

# Rows (samples x examples) per log_weights call. It bounds the memory (the decoder's logits are 784 floats a row)
# and sets the cache footprint. Measured on a 2-core CPU: 2048 rows ran 1.5x faster than 4096 or 16384, whose
# 12+ MiB buffers come fresh from the kernel on every call (a page fault per 4 KiB).
DEFAULT_CHUNK = 2048
# The recognition trunk of q(h^1 | x) runs once per call for each example in it, so each call draws at least this
# many samples per example (when k and chunk_size allow) rather than spreading a chunk over more examples.
_MIN_SAMPLES_PER_CALL = 64
# ... but never fewer examples per call than this, so a small chunk_size keeps whole small batches together.
_MIN_ROWS = 32


class LogWeightModel(Protocol):
    def log_weights(self, x: Tensor, k: int) -> Tensor: ...


class LikelihoodEstimate(NamedTuple):
    """Per-example L_k and its delta-method standard error over the k samples."""

    ll: Tensor
    stderr: Tensor


@overload
def log_likelihood(
    model: LogWeightModel,
    x: Tensor,
    k: int = ...,
    *,
    chunk_size: int = ...,
    generator: torch.Generator | None = ...,
    return_stderr: Literal[False] = ...,
    progress: bool = ...,
    desc: str | None = ...,
    bar: tqdm | None = ...,
    flush_denormal: bool = ...,
) -> Tensor: ...
@overload
def log_likelihood(
    model: LogWeightModel,
    x: Tensor,
    k: int = ...,
    *,
    chunk_size: int = ...,
    generator: torch.Generator | None = ...,
    return_stderr: Literal[True],
    progress: bool = ...,
    desc: str | None = ...,
    bar: tqdm | None = ...,
    flush_denormal: bool = ...,
) -> LikelihoodEstimate: ...
@torch.no_grad()
def log_likelihood(
    model: LogWeightModel,
    x: Tensor,
    k: int = 5000,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    generator: torch.Generator | None = None,
    return_stderr: bool = False,
    progress: bool = False,
    desc: str | None = None,
    bar: tqdm | None = None,
    flush_denormal: bool = True,
) -> Tensor | LikelihoodEstimate:
    r"""Per-example importance-sampled log-likelihood estimate :math:`\mathcal{L}_k` (Eq. 8), shape (batch,).

    .. math:: \mathcal{L}_k(x) = \log \frac{1}{k} \sum_{i=1}^{k} w_i \;\le\; \log p(x)

    The paper reports the test-set mean of :math:`\mathcal{L}_{5000}` (Section 5.1). The k samples are drawn in
    chunks of at most ``chunk_size`` rows (samples x examples) and combined with a streaming log-sum-exp, so memory
    stays bounded whatever k and the batch size are.

    :param model: any object with ``log_weights(x, k)`` (see the module docstring); a model with
        ``forward_samples`` (:class:`~iwae.models.model.IWAE`, :class:`~iwae.models.latent_model.SampledModel`)
        also takes ``generator``.
    :param return_stderr: also return the standard error of the estimate, from the delta method:
        :math:`\mathrm{se}^2 \approx \mathrm{Var}(w) / (k\, \bar w^2)`, the variance estimated from the same k
        weights; it understates the spread at small k (a few weights miss the rare large ones), and is NaN at k = 1.
    :param progress: show a progress bar of the samples drawn, labelled ``desc`` (default ``L_k``).
    :param bar: count the samples on this bar instead (e.g. one bar over a whole evaluation), labelled ``desc``.
    :param flush_denormal: on a CPU, flush subnormal floats to zero while estimating, then restore the setting
        found (:func:`iwae.util.cpu.flush_subnormals`).

    With a ``generator`` the estimates are reproducible for the same images, k, ``chunk_size`` and order: the
    noise is drawn block by block (a block of images, a share of the k samples), so another batching of the same
    images draws other samples for them (the same estimator, other noise).
    Binary images may come as bool or integer tensors; they are cast to the model's floating dtype.
    """
    x, k, chunk_size = _checked_input(model, x, k, chunk_size, generator)
    if x.shape[0] == 0:  # no examples: no estimates
        empty = torch.empty(0, dtype=x.dtype, device=x.device)
        return LikelihoodEstimate(empty, empty.clone()) if return_stderr else empty
    # Results go straight into preallocated tensors: small tensors kept alive across sub-batches (a list of
    # per-sub-batch results) pin heap memory between the large per-call buffers, and glibc's heap then grows by
    # megabytes per sub-batch instead of reusing them.
    ll_out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    se_out = torch.empty_like(ll_out)
    own = bar is None
    if own:
        bar = tqdm(total=x.shape[0] * k, desc=desc or f"L_{k}", unit="sample", disable=not progress, leave=False)
    elif desc:
        bar.set_description(desc)
    try:
        with closing(_blocks(model, x, k, chunk_size, generator, 0, bar, flush_denormal)) as blocks:
            for start, (ll, se) in blocks:
                ll_out[start : start + ll.shape[0]] = ll
                se_out[start : start + ll.shape[0]] = se
    finally:
        if own:
            bar.close()
    ll = ll_out.to(x.dtype)
    if return_stderr:
        return LikelihoodEstimate(ll, se_out.to(ll.dtype))
    return ll


@torch.no_grad()
def iter_log_likelihood(
    model: LogWeightModel,
    x: Tensor,
    k: int = 5000,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    generator: torch.Generator | None = None,
    start: int = 0,
    bar: tqdm | None = None,
    flush_denormal: bool = True,
) -> Iterator[tuple[int, LikelihoodEstimate]]:
    """:func:`log_likelihood`'s estimates block of images by block, as ``(first row, estimate)`` pairs in float64:
    for a long evaluation that saves its progress between blocks and continues later where it stopped.

    The blocks, and the noise each draws from ``generator``, are those of :func:`log_likelihood` with the same
    arguments, so the blocks together give its estimates exactly. To continue, pass as ``start`` the row after the
    last block done, with ``generator`` in the state it was in when that block was yielded
    (``generator.get_state()`` then, ``set_state`` now). No block is yielded that holds a non-finite log-weight
    (a FloatingPointError instead). The model stays in eval mode, and subnormals flushed, until the iteration ends
    or is closed: iterate it inside ``contextlib.closing`` when the loop may stop early.
    """
    x, k, chunk_size = _checked_input(model, x, k, chunk_size, generator)
    rows = block_rows(x.shape[0], k, chunk_size)
    if not 0 <= start <= x.shape[0] or (start % max(rows, 1) and start != x.shape[0]):
        raise ValueError(f"start must be 0 or the row after a block (a multiple of {rows}), got {start}")
    if x.shape[0] == 0:
        return iter(())
    return _blocks(model, x, k, chunk_size, generator, start, bar, flush_denormal)


def block_rows(n: int, k: int, chunk_size: int = DEFAULT_CHUNK) -> int:
    """Images per block of :func:`log_likelihood` and :func:`iter_log_likelihood` for n images and k samples: at
    most ``chunk_size`` rows of samples x images, and at least :data:`_MIN_SAMPLES_PER_CALL` samples of each per
    call where that leaves :data:`_MIN_ROWS` images."""
    return min(n, chunk_size, max(_MIN_ROWS, chunk_size // min(k, _MIN_SAMPLES_PER_CALL)))


def _checked_input(
    model: LogWeightModel, x: Tensor, k: object, chunk_size: object, generator: torch.Generator | None
) -> tuple[Tensor, int, int]:
    """``x`` checked for ``model`` and cast to its dtype, with k and chunk_size as ints; generator checked."""
    k, chunk_size = _count("k", k), _count("chunk_size", chunk_size)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x must have shape (batch, dim), got {tuple(x.shape)}")
    if generator is not None and not hasattr(model, "forward_samples"):
        raise ValueError(
            "generator needs a model with forward_samples (iwae.IWAE, or iwae.models.latent_model's protocol); "
            "seed torch globally instead"
        )
    check_bernoulli_images(model, x, stacklevel=5)
    return _as_model_dtype(model, x), k, chunk_size


@torch.no_grad()
def _blocks(
    model: LogWeightModel,
    x: Tensor,
    k: int,
    chunk_size: int,
    generator: torch.Generator | None,
    start: int,
    bar: tqdm | None,
    flush_denormal: bool,
    observe: Callable[[int, Tensor], None] | None = None,
) -> Iterator[tuple[int, LikelihoodEstimate]]:
    """The estimates of :func:`iter_log_likelihood`, from row ``start`` on (x already checked); ``observe(first
    row, log-weights)`` sees each call's (n, rows) float64 log-weights of the block beginning at ``first row``, before
    the block is yielded (:mod:`iwae.analysis.diagnostics` keeps their tail)."""
    rows = block_rows(x.shape[0], k, chunk_size)
    per_call = max(1, chunk_size // max(rows, 1))  # samples per log_weights call
    finite = None  # on a GPU, whether every log-weight so far was finite, read once a block (no sync per call)
    with flush_subnormals(flush_denormal), eval_mode(model):
        for first in range(start, x.shape[0], rows):
            xb = x[first : first + rows]
            lse1 = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
            lse2 = lse1.clone()
            done = 0
            while done < k:
                n = min(per_call, k - done)
                if generator is None:
                    lw = model.log_weights(xb, n)
                else:
                    lw = model.forward_samples(xb, n, generator=generator).log_w
                finite = _check_log_weights(lw, n, xb.shape[0], finite)
                lw = lw.double()
                if observe is not None:
                    observe(first, lw)
                lse1 = torch.logaddexp(lse1, torch.logsumexp(lw, 0))
                lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * lw, 0))
                done += n
                if bar is not None:
                    bar.update(n * xb.shape[0])
            ll = lse1 - math.log(k)
            # Var(w)/mean(w)^2 = mean(w^2)/mean(w)^2 - 1, computed in log space.
            rel_var = torch.expm1((lse2 - math.log(k)) - 2 * ll).clamp_min(0)
            se = torch.sqrt(rel_var / k) if k > 1 else torch.full_like(ll, math.nan)  # no spread from one weight
            if finite is not None and not finite:  # before a caller keeps the block
                raise FloatingPointError(_NOT_FINITE)
            yield first, LikelihoodEstimate(ll, se)


def _count(name: str, value: object) -> int:
    """``value`` as a positive int (:func:`iwae.objectives.names.as_count`), else a ValueError naming it."""
    if (count := as_count(value)) is None:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return count


def checked_batch(model: object, x: Tensor, stacklevel: int = 3, values: bool = True) -> Tensor:
    """A training batch as ``model`` reads it: (batch, dim) with at least one example, its ``values`` checked as
    :func:`check_bernoulli_images` checks them (``stacklevel`` as there), and cast to the model's dtype where it
    holds bool or integer values (another floating dtype is refused, naming both)."""
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (batch, dim) with at least one example, got {tuple(x.shape)}")
    if values:
        check_bernoulli_images(model, x, stacklevel=stacklevel + 1)
    return _as_model_dtype(model, x)


def _as_model_dtype(model: LogWeightModel, x: Tensor) -> Tensor:
    """Binary images held as bool or integers, cast to the model's floating dtype; another floating dtype than
    the model's is refused, naming both (a silent cast would hide a float64 model fed float32 images)."""
    param = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    if param is None or not param.dtype.is_floating_point:
        return x if x.dtype.is_floating_point else x.float()
    if not x.dtype.is_floating_point:
        return x.to(param.dtype)
    if x.dtype != param.dtype:
        raise ValueError(f"x is {x.dtype} but the model's parameters are {param.dtype}; cast one to the other")
    return x


def check_bernoulli_images(model: object, x: Tensor, stacklevel: int = 4) -> None:
    """For a model with a Bernoulli visible layer (``model.likelihood == "bernoulli"``): a ValueError for values
    outside [0, 1] (or NaN), a warning for grey levels (the paper scores binarized images); ``stacklevel`` as
    :func:`warnings.warn`'s, counted from here (4: the caller of :func:`log_likelihood`, through torch.no_grad's
    wrapper)."""
    if getattr(model, "likelihood", None) != "bernoulli" or x.numel() == 0:
        return
    lo, hi = (v.item() for v in torch.aminmax(x.float()))
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError("x holds NaN values; score images of 0s and 1s")
    if lo < 0 or hi > 1:
        raise ValueError(
            f"x holds values from {lo:g} to {hi:g}, but the model's visible layer is Bernoulli: it scores binary "
            "images; scale them to [0, 1] and binarize them (iwae.data.binarize)"
        )
    if not bool(((x == 0) | (x == 1)).all()):
        warnings.warn(
            "x holds grey levels, not only 0 and 1: a Bernoulli likelihood of grey levels is not the probability of "
            "any image, and not what the paper reports; binarize first (iwae.data.binarize)",
            stacklevel=stacklevel,
        )


_NOT_FINITE = "log_weights returned non-finite values (NaN or inf); the model is diverged"


def _check_log_weights(lw: Tensor, k: int, batch: int, finite: Tensor | None) -> Tensor | None:
    """Check the shape; on the CPU also that every value is finite, else fold the check into ``finite`` on the
    device (a check per call would make the host wait for the device each time)."""
    if tuple(lw.shape) != (k, batch):
        raise ValueError(f"log_weights(x, {k}) must return shape ({k}, {batch}), got {tuple(lw.shape)}")
    all_finite = torch.isfinite(lw).all()
    if lw.device.type == "cpu":
        if not all_finite:
            raise FloatingPointError(_NOT_FINITE)
        return None
    return all_finite if finite is None else finite & all_finite


@torch.no_grad()
def active_units(
    model: SampledModel, x: Tensor, *, batch_size: int = 1000, generator: torch.Generator | None = None
) -> list[Tensor]:
    r"""The activity statistic per unit and layer (Section 5.2).

    .. math:: A_u = \mathrm{Cov}_x\big(\mathbb{E}_{u \sim q(u \mid x)}[u]\big)

    For layer 1 the mean of q(h^1 | x); for layer l > 1 the mean of q(h^l | h^(l-1)) given one sample of h^(l-1)
    (as the authors' code does). The covariance is the population variance over the rows of ``x``, computed with
    the model in eval mode, in float64 (returned in the model's dtype, float32 or float64).

    :returns: one (d_l,) tensor of A_u per stochastic layer. Count the active units with :func:`count_active`.
    """
    return _posterior_mean_moments(model, x, batch_size, generator)[1]


def _posterior_mean_moments(
    model: SampledModel, x: Tensor, batch_size: int, generator: torch.Generator | None
) -> tuple[list[Tensor], list[Tensor]]:
    """Mean and population variance over x of E_q[h^l], per layer, accumulated in float64."""
    if not (hasattr(model, "posterior_means") and hasattr(model, "latent_dims")):
        raise TypeError(f"{type(model).__name__} lacks posterior_means or latent_dims (iwae.SampledModel's protocol), "
                        "which A_u reads")  # fmt: skip
    if x.shape[0] < 2:
        raise ValueError("active_units needs at least 2 examples to estimate a variance over x")
    x = _as_model_dtype(model, x)
    sums = [torch.zeros(d, dtype=torch.float64, device=x.device) for d in model.latent_dims]
    squares = [s.clone() for s in sums]
    with eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            for l, mean in enumerate(model.posterior_means(x[start : start + batch_size], generator=generator)):
                mean = mean.double()
                sums[l] += mean.sum(0)
                squares[l] += mean.square().sum(0)
    n, dtype = x.shape[0], x.dtype if x.dtype == torch.float64 else torch.float32
    means = [s / n for s in sums]
    variances = [(sq / n - mu.square()).clamp_min(0).to(dtype) for sq, mu in zip(squares, means)]
    return [mu.to(dtype) for mu in means], variances


def count_active(A: Sequence[Tensor], threshold: float = 0.01) -> list[int]:
    """Number of units with A_u > threshold in each layer (the paper's threshold is 1e-2)."""
    if isinstance(A, Tensor):
        raise TypeError("count_active takes the list of per-layer A_u tensors that active_units returns, got one "
                        "tensor; for one layer pass [A_u]")  # fmt: skip
    return [int((a > threshold).sum()) for a in A]


@torch.no_grad()
def prune_inactive(
    model: IWAE, x: Tensor, threshold: float = 0.01, *, generator: torch.Generator | None = None
) -> IWAE:
    """A copy of ``model`` with its inactive units removed (Section 5.2), for re-evaluating the likelihood.

    A unit with A_u <= threshold is held at its mean over ``x`` of E_q[u] and drops out of log p and log q.
    The paper reports that this changes the test log-likelihood by less than 0.06 nats.
    """
    if not isinstance(model, IWAE):
        raise TypeError(f"prune_inactive removes units of an iwae.IWAE, got {type(model).__name__}")
    means, A = _posterior_mean_moments(model, x, 1000, generator)
    return model.pruned([a > threshold for a in A], means)
