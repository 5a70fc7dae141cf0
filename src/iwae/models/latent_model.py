r"""Your own model: the protocol the bounds, estimators, train step and evaluation ask of a model, and a base class
that fulfils it for any encoder and decoder with one Gaussian latent layer.

**The protocol** (:class:`SampledModel`). Every objective reads a model through two methods and two attributes:

- ``forward_samples(x, k, *, noise=None, generator=None, stop_q_grad=False, sample_hook=None) -> LogWeights``
  (:class:`iwae.LogWeights`): the (k, batch) log importance weights :math:`\log w_i = \log p(x, h_i) - \log q(h_i \mid
  x)` (Eq. 4) of k reparameterised samples :math:`h_i = \mu(x) + \sigma(x)\,\epsilon_i`, with the samples and the
  noise that made them. ``noise`` (the draws to use, as :meth:`draw_noise` makes them) or else ``generator`` (to draw
  them from) fixes the samples. The two keywords the path-derivative estimators need: ``stop_q_grad`` evaluates log q
  with q's distribution parameters detached, so that log q passes gradient only through the samples (STL, DReG,
  reweighted wake-sleep); ``sample_hook`` is applied to each sample wherever the log-weight reads it (in log p and as
  log q's argument), so that DReG can reweight the gradient that reaches the encoder through it; with several latent
  layers, the recognition layer that draws the next sample reads the raw sample, so that every gradient path from log
  w_i into the encoder crosses one hooked sample exactly once. A model that ignores either keyword is refused by the
  estimators that read it (a probe at their first step: :func:`iwae.objectives.base.check_path_keywords`).
  ``forward(x, k, **kwargs)``, the same as ``forward_samples``, lets reweighted wake-sleep and PIWAE call the model
  through ``torch.func.functional_call``.
- ``draw_noise(k, batch, generator=None, out=None) -> list[Tensor]``: the standard-normal draws, one
  (k, batch, d_l) tensor per latent layer.
- ``encoder`` and ``decoder``: the recognition and the generative network as submodules, for the estimators that
  update the two apart (reweighted wake-sleep, PIWAE).
- ``latent_dims`` (sizes of the latent layers) and ``posterior_means(x, generator=None)`` (E_q[h^l] per layer)
  for the active-units statistic A_u (Section 5.2).

:func:`iwae.log_likelihood` needs less: ``log_weights(x, k)`` alone (its module docstring). :func:`iwae.bdmc` needs
one method more, ``simulate(n, generator=None) -> Simulated``: data drawn from the model with the noise that
reproduces their latents; :func:`iwae.ais_log_likelihood` from the prior, ``log_px_at_prior_noise(x, noise)``:
log p(x | h) at the latents the prior's reparameterisation makes of noise shaped as ``draw_noise`` draws it; and
:func:`iwae.bdmc` from the prior, ``prior_noise(samples, generator=None)`` too: the noise that gives simulated
latents back.

**The base class** (:class:`GaussianLatentModel`): give it an encoder ``x -> (mean, log_std)`` of q(h | x), each
(batch, d), and a decoder ``h -> logits`` of the Bernoulli p(x | h), from (..., d) to (..., x_dim); the prior is
N(0, I). It implements the protocol, so every bound and estimator of :mod:`iwae.objectives` trains it and
:func:`iwae.log_likelihood` scores it (``examples/conv_mnist.py``: a convolutional encoder and decoder trained
with the IWAE bound and DReG).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from iwae.models._ops import bernoulli_log_prob, gaussian_log_q, standard_normal_log_prob
from iwae.models.model import LogWeights, Simulated

__all__ = ["SampledModel", "GaussianLatentModel"]


@runtime_checkable
class SampledModel(Protocol):
    """What :mod:`iwae.objectives` and the train step ask of a model (the module docstring describes each part);
    :class:`iwae.IWAE` and :class:`GaussianLatentModel` are two."""

    encoder: nn.Module
    decoder: nn.Module
    latent_dims: Sequence[int]

    def forward_samples(
        self,
        x: Tensor,
        k: int,
        *,
        noise: Sequence[Tensor] | None = None,
        generator: torch.Generator | None = None,
        stop_q_grad: bool = False,
        sample_hook: Callable[[Tensor], Tensor] | None = None,
    ) -> LogWeights: ...

    def draw_noise(
        self, k: int, batch: int, generator: torch.Generator | None = None, out: Sequence[Tensor] | None = None
    ) -> list[Tensor]: ...

    def log_weights(self, x: Tensor, k: int) -> Tensor: ...

    def posterior_means(self, x: Tensor, generator: torch.Generator | None = None) -> list[Tensor]: ...


class GaussianLatentModel(nn.Module):
    """One Gaussian latent layer h ~ N(0, I), a Bernoulli visible layer, and networks of your own.

    :param encoder: module mapping x (batch, x_dim) to the mean and log standard deviation of q(h | x), each
        (batch, latent_dim).
    :param decoder: module mapping samples h (..., latent_dim) to the logits of p(x | h), (..., x_dim); it is
        called on (k, batch, latent_dim) samples, so a convolutional decoder flattens the leading dimensions.
    :param latent_dim: the size of h.
    :param x_dim: the size of x (784 for 28x28 images).
    """

    likelihood: ClassVar[str] = "bernoulli"  # of the visible layer, as iwae.IWAE names it

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, x_dim: int = 784) -> None:
        super().__init__()
        if latent_dim < 1 or x_dim < 1:
            raise ValueError(f"latent_dim and x_dim must be positive, got {latent_dim} and {x_dim}")
        self.encoder, self.decoder = encoder, decoder
        self.latent_dims, self.x_dim = [latent_dim], x_dim

    def _q(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.encoder(x)
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise TypeError("the encoder must return (mean, log_std) of q(h | x), each (batch, latent_dim)")
        mean, log_std = out
        want = (x.shape[0], self.latent_dims[0])
        if tuple(mean.shape) != want or tuple(log_std.shape) != want:
            raise ValueError(
                f"the encoder returned mean {tuple(mean.shape)} and log_std {tuple(log_std.shape)}; expected {want}"
            )
        return mean, log_std

    def draw_noise(
        self, k: int, batch: int, generator: torch.Generator | None = None, out: Sequence[Tensor] | None = None
    ) -> list[Tensor]:
        """Standard-normal draws [eps], (k, batch, latent_dim), written into ``out`` if given."""
        shape = (k, batch, self.latent_dims[0])
        if out is not None:
            return [torch.randn(shape, generator=generator, out=out[0])]
        p = next(self.parameters())
        return [torch.randn(shape, generator=generator, device=p.device, dtype=p.dtype)]

    def forward_samples(
        self,
        x: Tensor,
        k: int,
        *,
        noise: Sequence[Tensor] | None = None,
        generator: torch.Generator | None = None,
        stop_q_grad: bool = False,
        sample_hook: Callable[[Tensor], Tensor] | None = None,
    ) -> LogWeights:
        """Log-weights log p(x, h_i) - log q(h_i | x) of k samples (Eq. 4), with the samples and the noise; the
        keywords as in :class:`SampledModel`."""
        if x.dim() != 2 or x.shape[1] != self.x_dim:
            raise ValueError(f"x must have shape (batch, {self.x_dim}), got {tuple(x.shape)}")
        if k < 1:
            raise ValueError(f"k must be a positive number of samples, got {k}")
        eps = list(self.draw_noise(k, x.shape[0], generator) if noise is None else noise)
        mean, log_std = self._q(x)
        h = torch.addcmul(mean, torch.exp(log_std), eps[0])  # (k, batch, d), reparameterised
        from_h = stop_q_grad or sample_hook is not None  # log q must read the sample itself
        if sample_hook is not None:
            h = sample_hook(h)
        if stop_q_grad:
            mean, log_std = mean.detach(), log_std.detach()
        log_q = gaussian_log_q(h, eps[0], mean, log_std, None, from_h)
        logits = self.decoder(h)
        if logits.shape != (*h.shape[:-1], self.x_dim):
            raise ValueError(f"the decoder returned {tuple(logits.shape)} for samples {tuple(h.shape)}; "
                             f"expected {(*h.shape[:-1], self.x_dim)}")  # fmt: skip
        log_p = standard_normal_log_prob(h) + bernoulli_log_prob(logits, x)
        return LogWeights(log_p - log_q, [h], eps)

    def forward(self, x: Tensor, k: int, **kwargs: Any) -> LogWeights:
        """Same as :meth:`forward_samples`."""
        return self.forward_samples(x, k, **kwargs)

    def log_weights(self, x: Tensor, k: int) -> Tensor:
        """(k, batch) log importance weights of k fresh samples."""
        return self.forward_samples(x, k).log_w

    def posterior_means(self, x: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """[E_q[h | x]], for the active-units statistic (Section 5.2)."""
        return [self._q(x)[0]]

    def log_px_at_prior_noise(self, x: Tensor, noise: Sequence[Tensor]) -> Tensor:
        """log p(x | h), (k, batch), at h = eps ~ N(0, I) = p(h) (noise [eps], (k, batch, latent_dim)): what annealing
        from the prior reads (:func:`iwae.ais_log_likelihood` with ``anneal_from="prior"``)."""
        return bernoulli_log_prob(self.decoder(noise[0]), x)

    def prior_noise(self, samples: Sequence[Tensor], generator: torch.Generator | None = None) -> list[Tensor]:
        """The prior's noise of latents [h]: h itself (p(h) = N(0, I)); as :meth:`iwae.IWAE.prior_noise`."""
        return [samples[0]]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws h ~ N(0, I) decoded to the Bernoulli means sigmoid(logits), (n, x_dim)."""
        p = next(self.parameters())
        h = torch.randn((1, n, self.latent_dims[0]), generator=generator, device=p.device, dtype=p.dtype)
        return torch.sigmoid(self.decoder(h))[0]  # the decoder sees (k, batch, latent_dim) samples, as in training

    @torch.no_grad()
    def simulate(self, n: int, generator: torch.Generator | None = None) -> Simulated:
        """n draws h ~ N(0, I), x ~ p(x | h), with the noise eps = (h - mu_q(x)) / sigma_q(x) that reproduces h
        (as :meth:`iwae.IWAE.simulate`: the start of reverse annealing in :func:`iwae.bdmc`)."""
        p = next(self.parameters())
        h = torch.randn((1, n, self.latent_dims[0]), generator=generator, device=p.device, dtype=p.dtype)
        x = torch.bernoulli(torch.sigmoid(self.decoder(h))[0], generator=generator)
        mean, log_std = self._q(x)
        return Simulated(x, [h[0]], [(h - mean) * torch.exp(-log_std)])
