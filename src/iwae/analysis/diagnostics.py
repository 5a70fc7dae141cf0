r"""How far an importance-sampled :math:`\mathcal{L}_k` can be trusted, image by image: the effective sample size
of its k weights and the Pareto :math:`\hat k` of their upper tail.

:math:`\mathcal{L}_{5000}` (Section 5.1) is an average of weights :math:`w_i = p(x, h_i) / q(h_i \mid x)`. Where q
misses part of the posterior, a few rare, huge weights carry the average: the estimate then sits far below log p(x)
for a long time, and its delta-method standard error, read from the same weights, cannot exceed one nat however far
short it falls. The
generalized Pareto shape :math:`\xi` of the weights' tail says how heavy that tail is (Vehtari, Simpson, Gelman,
Yao & Gabry, *Pareto smoothed importance sampling*, JMLR 2024; Yao et al. 2018 used it to diagnose variational
approximations):

- :math:`\xi < 1/2`: the weights have a finite variance; the central limit theorem holds, and the standard error
  means what it says;
- :math:`1/2 \le \xi < 0.7`: infinite variance, but the average still converges at a practical pace;
- :math:`\xi \ge 0.7` (or :math:`1 - 1/\log_{10} k` for small k): the estimate is unreliable at this k; more
  samples, or a better q, are needed.

:math:`\hat k` here is Zhang & Stephens (2009)'s empirical Bayes estimate of :math:`\xi` from the largest
:math:`M = \min(k/5, 3\sqrt{k})` weights above the next one, with Vehtari et al.'s weakly informative prior (10
pseudo-observations at 0.5). The effective sample size is :math:`(\sum_i w_i)^2 / \sum_i w_i^2`, between 1 and k.
"""

from __future__ import annotations

import math
from contextlib import closing
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from iwae.evaluate import DEFAULT_CHUNK, LogWeightModel, _blocks, _checked_input

__all__ = ["WeightDiagnostics", "weight_diagnostics", "pareto_khat", "tail_size", "khat_threshold"]

_PRIOR_WEIGHT = 10  # pseudo-observations of Vehtari et al.'s prior on the shape
_PRIOR_SHAPE = 0.5


class WeightDiagnostics(NamedTuple):
    """Per-example L_k, its delta-method standard error, the effective sample size and Pareto k-hat of its weights."""

    ll: Tensor
    stderr: Tensor
    ess: Tensor
    khat: Tensor


def tail_size(k: int) -> int:
    """M, the weights in the fitted tail: ceil(min(k / 5, 3 sqrt(k))) (Vehtari et al. 2024), at least 5."""
    return max(5, math.ceil(min(k / 5, 3 * math.sqrt(k))))


def khat_threshold(k: int) -> float:
    """The k-hat above which an estimate from k weights is unreliable: min(1 - 1 / log10(k), 0.7)."""
    return min(1 - 1 / math.log10(k), 0.7)


def pareto_khat(log_w: Tensor) -> Tensor:
    """Pareto k-hat of each column's weights from (k, batch) log-weights, shape (batch,), in float64.

    The largest :func:`tail_size` ``(k)`` weights above the next largest are fitted. A column whose tail is flat
    (every one of them equal) gets -inf; one whose tail spans more than float64 can hold (fewer than 5 of those
    weights within a factor of about 1e-308 of the largest, the rest one weight's shadow) gets +inf. k must be at
    least 10; a NaN or +inf log-weight, or a column whose weights are all 0 (log-weight -inf), is refused."""
    if log_w.dim() != 2:
        raise ValueError(f"log_w must have shape (k, batch), got {tuple(log_w.shape)}")
    k = log_w.shape[0]
    if k < 10:
        raise ValueError(f"a tail needs at least 10 weights to fit, got k = {k}")
    if torch.isnan(log_w).any() or (log_w == math.inf).any():
        raise ValueError("log_w holds NaN or +inf: no tail to fit")
    top = torch.topk(log_w.double(), tail_size(k) + 1, dim=0).values  # descending
    if (top[0] == -math.inf).any():
        raise ValueError("a column of log_w is all -inf (every weight 0): no tail to fit")
    return _khat_of_top(top)


def _khat_of_top(top: Tensor) -> Tensor:
    """k-hat from each column's M + 1 largest log-weights, in descending order (finite largest)."""
    # Exceedances over the threshold t (the (M+1)-th largest), as weights relative to the largest w_1:
    # (w_i - t) / w_1 = (w_i / w_1)(1 - t / w_i), each factor in [0, 1] (no overflow, no cancellation).
    x = (torch.exp(top[:-1] - top[:1]) * -torch.expm1(top[-1:] - top[:-1])).flip(0)  # ascending
    # Exceedances below float64's smallest normal number count as 0 (a subnormal flush, on or off, changes nothing).
    fitted = (x >= torch.finfo(torch.float64).tiny).sum(0)  # the largest ones: a suffix of each column
    khat = torch.where(fitted == 0, -math.inf, math.inf).to(x.dtype)  # flat; or too few for a fit
    for n in fitted.unique().tolist():
        if n >= 5:
            columns = fitted == n
            khat[columns] = _gpd_shape(x[-n:, columns])
    return khat


def _gpd_shape(x: Tensor) -> Tensor:
    r"""Zhang & Stephens (2009)'s estimate of the generalized Pareto shape from (n, batch) positive exceedances in
    ascending order, with the prior of 10 pseudo-observations at 0.5.

    In their parameterisation :math:`\theta = -\xi / \sigma`: for each :math:`\theta_j` of a grid set by the sample's
    largest value and lower quartile, the profile log-likelihood :math:`n(\log(-\theta/\xi(\theta)) - \xi(\theta) -
    1)` with :math:`\xi(\theta) = \frac1n \sum_i \log(1 - \theta x_i)`; :math:`\hat\theta` is the likelihood-weighted
    mean of the grid, and :math:`\hat\xi = \xi(\hat\theta)`."""
    n = x.shape[0]
    grid = 30 + math.isqrt(n)
    j = torch.arange(1, grid + 1, dtype=x.dtype, device=x.device).unsqueeze(1)
    theta = 1 / x[-1] + (1 - torch.sqrt(grid / (j - 0.5))) / (3 * x[int(n / 4 + 0.5) - 1])  # (grid, batch)
    xi = torch.log1p(-theta.unsqueeze(1) * x.unsqueeze(0)).mean(1)  # (grid, batch)
    profile = n * (torch.log(-theta / xi) - xi - 1)
    # (a grid point at theta = 0 exactly, the exponential's limit, has no value here: it is left out)
    profile = torch.where(torch.isfinite(profile), profile, -math.inf)
    theta_hat = (torch.softmax(profile, 0) * theta).sum(0)
    shape = torch.log1p(-theta_hat * x).mean(0)
    return (n * shape + _PRIOR_WEIGHT * _PRIOR_SHAPE) / (n + _PRIOR_WEIGHT)


@torch.no_grad()
def weight_diagnostics(
    model: LogWeightModel,
    x: Tensor,
    k: int = 5000,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    generator: torch.Generator | None = None,
    progress: bool = False,
    desc: str | None = None,
    flush_denormal: bool = True,
) -> WeightDiagnostics:
    """:func:`iwae.evaluate.log_likelihood`'s estimate with the diagnostics of its weights, per example.

    The weights are those of ``log_likelihood(model, x, k, chunk_size=..., generator=...)`` (the same draws, so the
    same ``ll`` and ``stderr`` exactly); their tail is kept as they stream by, so memory stays bounded as there. ESS
    is :math:`k / (1 + k\\,\\mathrm{se}^2)`, the delta method's relative variance read the other way; k-hat is
    :func:`pareto_khat`'s (k >= 10)."""
    x, k, chunk_size = _checked_input(model, x, k, chunk_size, generator)
    if k < 10:
        raise ValueError(f"the weights' tail needs k >= 10 importance samples, got k = {k}")
    keep = tail_size(k) + 1
    n = x.shape[0]
    out = torch.full((4, n), math.nan, dtype=torch.float64, device=x.device)
    if n == 0:  # no examples: no estimates
        return WeightDiagnostics(out[0].to(x.dtype), out[1].to(x.dtype), out[2], out[3])
    tops: dict[int, Tensor] = {}

    def observe(first: int, lw: Tensor) -> None:
        held = tops.get(first)
        both = lw if held is None else torch.cat([held, lw])
        tops[first] = torch.topk(both, min(keep, both.shape[0]), dim=0).values

    bar = tqdm(total=n * k, desc=desc or f"L_{k} and its weights' tail", unit="sample", disable=not progress,
               leave=False)  # fmt: skip
    try:
        with closing(_blocks(model, x, k, chunk_size, generator, 0, bar, flush_denormal, observe)) as blocks:
            for first, (ll, se) in blocks:
                rows = slice(first, first + ll.shape[0])
                out[0, rows], out[1, rows] = ll, se
                out[2, rows] = k / (1 + k * se**2)
                out[3, rows] = _khat_of_top(tops.pop(first))
    finally:
        bar.close()
    return WeightDiagnostics(out[0].to(x.dtype), out[1].to(x.dtype), out[2], out[3])
