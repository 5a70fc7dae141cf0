"""The generative and recognition networks of the IWAE (Burda et al. 2016, Sections 2-3, Appendix C).

Generative model  p(x, h) = p(h^L) p(h^(L-1) | h^L) ... p(x | h^1),   p(h^L) = N(0, I).
Recognition model q(h | x) = q(h^1 | x) q(h^2 | h^1) ... q(h^L | h^(L-1)).

Every Gaussian conditional is a tanh MLP trunk followed by two linear heads, the mean and the log standard
deviation (standard deviation = exp(linear), diagonal covariance). The visible layer is Bernoulli (logits) for
binary data or Gaussian for real-valued data.

The model's one job for inference is :meth:`IWAE.log_weights`: the log importance weights
``log w_i = log p(x, h_i) - log q(h_i | x)`` (Eq. 4 and Eq. 8) of ``k`` reparameterised samples, shape ``(k, batch)``.
Bounds (``iwae.bounds``) and gradient estimators (``iwae.objectives``) are functions of those.
The conditionals are :mod:`iwae.models.layers`; the pruning of latent units (Section 5.2) is :mod:`iwae.models.pruning`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from iwae.models._ops import bernoulli_log_prob, gaussian_log_prob, gaussian_log_q, standard_normal_log_prob
from iwae.models.layers import BernoulliLayer, GaussianLayer, q_params
from iwae.models.pruning import PrunableUnits, hold
from iwae.util.modes import forked_rng

__all__ = ["GaussianLayer", "BernoulliLayer", "IWAE", "LogWeights", "Simulated"]

# The paper's architectures (Section 5.1, Appendix C): latent sizes bottom-up for 1 and 2 stochastic layers, and
# the hidden sizes of every conditional, two tanh layers of 200 units next to x and two of 100 between latent layers.
_PAPER_LATENT_DIMS = {1: (50,), 2: (100, 50)}
_PAPER_HIDDEN_NEXT_TO_X = (200, 200)
_PAPER_HIDDEN_ABOVE = (100, 100)


class LogWeights(NamedTuple):
    """Output of :meth:`IWAE.forward_samples`.

    ``log_w``: (k, batch) log importance weights; ``samples``: the latent samples [h^1, ..., h^L], each
    (k, batch, d_l); ``noise``: the standard-normal draws that made them, same shapes.
    """

    log_w: Tensor
    samples: list[Tensor]
    noise: list[Tensor]


class Simulated(NamedTuple):
    """Output of :meth:`IWAE.simulate`: data drawn from the generative model with the latents that made them.

    ``x``: (n, x_dim) data; ``samples``: [h^1, ..., h^L], each (n, d_l), drawn from p(h) (so each is an exact
    draw from the posterior p(h | x) of its x); ``noise``: [eps^1, ..., eps^L], each (1, n, d_l), the noise that
    the recognition model turns into those samples, ``forward_samples(x, 1, noise=noise)``.
    """

    x: Tensor
    samples: list[Tensor]
    noise: list[Tensor]


class IWAE(PrunableUnits):
    """Importance weighted autoencoder with L >= 1 stochastic layers (Burda et al. 2016).

    :param x_dim: dimension of the visible layer (784 for 28x28 images).
    :param latent_dims: sizes of h^1 ... h^L, bottom-up.
    :param q_hidden: hidden sizes of each recognition conditional, bottom-up: ``q_hidden[l]`` is the trunk of
        q(h^(l+1) | h^l) (with h^0 = x).
    :param p_hidden: hidden sizes of each generative conditional, top-down (h^L side first):
        ``p_hidden[0]`` is the trunk of p(h^(L-1) | h^L) (or p(x | h^1) when L = 1), ``p_hidden[-1]`` that of
        p(x | h^1).
    :param likelihood: ``"bernoulli"`` (binary data) or ``"gaussian"`` (real-valued data).
    :param output_bias: per-pixel mean of the training set; if given, the visible bias starts at
        logit(clip(mean, 0.001, 0.999)) (Bernoulli) or at the mean (Gaussian).
    :param generator: source of the initial weights (default: the global generator).
    """

    def __init__(
        self,
        x_dim: int,
        latent_dims: Sequence[int],
        q_hidden: Sequence[Sequence[int]],
        p_hidden: Sequence[Sequence[int]],
        likelihood: str = "bernoulli",
        output_bias: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        latent_dims = [int(d) for d in latent_dims]
        n_layers = len(latent_dims)
        if n_layers < 1 or min(latent_dims) < 1 or x_dim < 1:
            raise ValueError(f"need x_dim >= 1 and at least one latent layer of size >= 1, got {latent_dims}")
        if len(q_hidden) != n_layers or len(p_hidden) != n_layers:
            raise ValueError(
                f"q_hidden and p_hidden need one list of hidden sizes per stochastic layer ({n_layers}), "
                f"got {len(q_hidden)} and {len(p_hidden)}"
            )
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        self.x_dim = int(x_dim)
        self.latent_dims = latent_dims
        self.likelihood = likelihood
        self.config = {
            "x_dim": self.x_dim,
            "latent_dims": latent_dims,
            "q_hidden": [list(map(int, h)) for h in q_hidden],
            "p_hidden": [list(map(int, h)) for h in p_hidden],
            "likelihood": likelihood,
        }
        below = [self.x_dim, *latent_dims[:-1]]
        # (torch's layers draw their default initialisation from the global generator; with a generator of its own,
        # those draws, overwritten below, are not taken from the caller's stream)
        with nullcontext() if generator is None else forked_rng(torch.device("cpu")):
            # encoder[l] is q(h^(l+1) | h^l), bottom-up.
            self.encoder = nn.ModuleList(GaussianLayer(below[l], q_hidden[l], latent_dims[l]) for l in range(n_layers))
            # decoder[j] is p(h^(L-1-j) | h^(L-j)), top-down; the last entry is p(x | h^1).
            top_down = list(reversed(range(n_layers)))  # layer index l of the conditioning variable h^(l+1)
            self.decoder = nn.ModuleList()
            for j, l in enumerate(top_down):
                if l == 0:
                    visible = BernoulliLayer if likelihood == "bernoulli" else GaussianLayer
                    self.decoder.append(visible(latent_dims[0], p_hidden[j], self.x_dim))
                else:
                    self.decoder.append(GaussianLayer(latent_dims[l], p_hidden[j], latent_dims[l - 1]))
        self._init_pruning()  # every unit kept, until :meth:`pruned` (Section 5.2)
        self.reset_parameters(output_bias, generator=generator)

    # ------------------------------------------------------------------ construction
    @classmethod
    def paper(
        cls,
        layers: int = 1,
        x_dim: int = 784,
        output_bias: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> IWAE:
        """The paper's architectures (Section 5.1, Appendix C).

        ``layers=1``: x -> 200 -> 200 -> h1(50), and back. ``layers=2``: x -> 200 -> 200 -> h1(100) -> 100 -> 100
        -> h2(50), and back.
        """
        if layers not in _PAPER_LATENT_DIMS:
            raise ValueError(f"the paper has architectures with 1 or 2 stochastic layers, got layers={layers}")
        return cls.from_latent_dims(_PAPER_LATENT_DIMS[layers], x_dim, output_bias, generator=generator)

    @classmethod
    def from_latent_dims(
        cls,
        latent_dims: Sequence[int],
        x_dim: int = 784,
        output_bias: Tensor | None = None,
        *,
        q_hidden: Sequence[Sequence[int]] | None = None,
        p_hidden: Sequence[Sequence[int]] | None = None,
        generator: torch.Generator | None = None,
    ) -> IWAE:
        """A Bernoulli IWAE with latent sizes ``latent_dims`` (bottom-up) and, where not given, the paper's hidden
        sizes (Appendix C): 200, 200 in the conditionals next to x, 100, 100 in those between latent layers
        (``q_hidden`` bottom-up and ``p_hidden`` top-down, as in :class:`IWAE`).

        ``IWAE.from_latent_dims([50])`` and ``IWAE.from_latent_dims([100, 50])`` are :meth:`paper`'s architectures.
        """
        above = [_PAPER_HIDDEN_ABOVE] * (len(latent_dims) - 1)
        q_hidden = q_hidden or [_PAPER_HIDDEN_NEXT_TO_X, *above]
        p_hidden = p_hidden or [*above, _PAPER_HIDDEN_NEXT_TO_X]
        return cls(x_dim, latent_dims, q_hidden, p_hidden, "bernoulli", output_bias, generator=generator)

    def reset_parameters(self, output_bias: Tensor | None = None, generator: torch.Generator | None = None) -> None:
        """Glorot & Bengio (2010) uniform weights, zero biases; visible bias from the data mean if given."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, generator=generator)
                nn.init.zeros_(m.bias)
        if output_bias is not None:
            mean = torch.as_tensor(output_bias, dtype=torch.float32).reshape(-1)
            if mean.numel() != self.x_dim or not torch.isfinite(mean).all():
                raise ValueError(f"output_bias must be {self.x_dim} finite values (a training-set mean)")
            head = self.decoder[-1]
            with torch.no_grad():
                if self.likelihood == "bernoulli":
                    head.logits.bias.copy_(torch.logit(mean.clamp(0.001, 0.999)))
                else:
                    head.mean.bias.copy_(mean)

    @property
    def n_layers(self) -> int:
        return len(self.latent_dims)

    # ------------------------------------------------------------------ log-weights (Eq. 4, Eq. 8)
    def log_weights(self, x: Tensor, k: int) -> Tensor:
        """Log importance weights of ``k`` samples h_i ~ q(h | x) drawn by reparameterisation.

        .. math:: \\log w_i = \\log p(x, h_i) - \\log q(h_i \\mid x), \\quad h_i = h(x, \\epsilon_i, \\theta)

        :param x: (batch, x_dim) data.
        :param k: number of samples per example.
        :returns: (k, batch) tensor; differentiable with respect to all parameters.
        """
        return self.forward_samples(x, k).log_w

    def draw_noise(
        self, k: int, batch: int, generator: torch.Generator | None = None, out: Sequence[Tensor] | None = None
    ) -> list[Tensor]:
        """Standard-normal draws [eps^1, ..., eps^L], each (k, batch, d_l): the noise :meth:`forward_samples`
        draws from ``generator`` when it is given none (the same draws, in the same order); written into ``out``
        (tensors of those shapes, e.g. a fleet's buffers) if given."""
        p = next(self.parameters())
        shapes = [(k, batch, d) for d in self.latent_dims]
        if out is not None:
            return [torch.randn(shape, generator=generator, out=o) for shape, o in zip(shapes, out)]
        return [torch.randn(shape, generator=generator, device=p.device, dtype=p.dtype) for shape in shapes]

    def forward(self, x: Tensor, k: int, **kwargs: Any) -> LogWeights:
        """Same as :meth:`forward_samples` (so that ``torch.func.functional_call`` can run the model)."""
        return self.forward_samples(x, k, **kwargs)

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
        """Log-weights with the samples and noise that made them (the general form of :meth:`log_weights`).

        :param noise: optional standard-normal draws [eps^1, ..., eps^L], each (k, batch, d_l); drawn from
            ``generator`` when omitted.
        :param stop_q_grad: evaluate log q with q's distribution parameters detached, so log q passes gradient
            only through the samples (the "path" derivative of Roeder et al. 2017, used by STL and DReG).
        :param sample_hook: applied to each sample h^l wherever the log-weight reads it: in log p and the
            generative network, and in log q(h^l | h^(l-1)) as its argument and its condition; only the
            recognition network that draws the next sample reads the raw sample. DReG uses it to reweight the
            gradient that flows into the recognition network through each sample.
        """
        if x.dim() != 2 or x.shape[1] != self.x_dim:
            raise ValueError(f"x must have shape (batch, {self.x_dim}), got {tuple(x.shape)}")
        if k < 1:
            raise ValueError(f"k must be a positive number of samples, got {k}")
        masks = self._unit_masks()
        keeps = [None] * self.n_layers if masks is None else [keep for keep, _ in masks]
        noise = list(self.draw_noise(k, x.shape[0], generator) if noise is None else noise)
        from_h = stop_q_grad or sample_hook is not None  # log q must read the samples themselves
        log_q = x.new_zeros(())
        samples: list[Tensor] = []
        inp = x  # q(h^1 | x): the deterministic trunk runs once per example, (batch, x_dim) -> (batch, d_1)
        for l, layer in enumerate(self.encoder):
            mean, log_std = layer(inp)
            h = inp = hold(torch.addcmul(mean, torch.exp(log_std), noise[l]), masks, l)  # (k, batch, d_l)
            if sample_hook is not None:
                h = sample_hook(h)
            if from_h:
                mean, log_std = q_params(layer, mean, log_std, samples[-1] if l > 0 else None, stop_q_grad)
            log_q = log_q + gaussian_log_q(h, noise[l], mean, log_std, keeps[l], from_h)
            samples.append(h)
        log_p = standard_normal_log_prob(samples[-1], keeps[-1])
        for j, layer in enumerate(self.decoder[:-1]):
            l = self.n_layers - 1 - j  # this conditional reads h^(l+1) = samples[l]
            mean, log_std = layer(samples[l])
            log_p = log_p + gaussian_log_prob(samples[l - 1], mean, log_std, keeps[l - 1])
        log_p = log_p + self._log_px(samples[0], x)
        return LogWeights(log_p - log_q, samples, noise)

    def _log_px(self, h1: Tensor, x: Tensor) -> Tensor:
        """log p(x | h^1), (k, batch)."""
        if self.likelihood == "bernoulli":
            return bernoulli_log_prob(self.decoder[-1](h1), x)
        mean, log_std = self.decoder[-1](h1)
        return gaussian_log_prob(x, mean, log_std)

    # ------------------------------------------------------------------ recognition means, sampling
    def posterior_means(self, x: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """E_q[h^l] for each layer: the mean of q(h^1 | x), then of q(h^l | h^(l-1)) given one sample h^(l-1).

        This is the quantity whose variance over x is the activity statistic A_u (Section 5.2).
        """
        means = []
        inp = x
        for layer in self.encoder:
            mean, log_std = layer(inp)
            means.append(mean)
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            inp = mean + torch.exp(log_std) * eps
        return means

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw h^L ~ N(0, I), then each layer down; return the visible layer's means, shape (n, x_dim).

        For the Bernoulli visible layer these are the pixel probabilities sigmoid(logits) (Appendix E). Pruned
        units are held at their fill value in every layer drawn, as in :meth:`forward_samples`.
        """
        return self.visible_means(self._ancestral(n, generator)[0])

    def _randn(self, shape: Sequence[int], generator: torch.Generator | None) -> Tensor:
        p = next(self.parameters())
        return torch.randn(shape, generator=generator, device=p.device, dtype=p.dtype)

    def _ancestral(self, n: int, generator: torch.Generator | None) -> list[Tensor]:
        """[h^1, ..., h^L], each (n, d_l), drawn from the prior top-down, pruned units held at their fill value."""
        noise = [self._randn((n, d), generator) for d in reversed(self.latent_dims)]  # top layer first
        return self.prior_samples(noise[::-1])

    def prior_samples(self, noise: Sequence[Tensor]) -> list[Tensor]:
        """[h^1, ..., h^L] that the prior's reparameterisation makes of standard-normal noise [eps^1, ..., eps^L]
        (each (..., d_l)): h^L = eps^L, then h^l = mu_p(h^(l+1)) + sigma_p(h^(l+1)) eps^l top-down; pruned units
        held at their fill value. For noise ~ N(0, I) they are draws from p(h)."""
        masks = self._unit_masks()
        h = hold(noise[-1], masks, self.n_layers - 1)
        samples = [h]
        for j, layer in enumerate(self.decoder[:-1]):
            mean, log_std = layer(h)  # p(h^l | h^(l+1)) with l = n_layers - 1 - j
            h = hold(mean + torch.exp(log_std) * noise[-2 - j], masks, self.n_layers - 2 - j)
            samples.insert(0, h)
        return samples

    def prior_noise(self, samples: Sequence[Tensor], generator: torch.Generator | None = None) -> list[Tensor]:
        """The noise [eps^1, ..., eps^L] from which :meth:`prior_samples` makes the latents [h^1, ..., h^L] (each
        (..., d_l)): eps^L = h^L, eps^l = (h^l - mu_p(h^(l+1))) / sigma_p(h^(l+1)). A pruned unit's noise, which
        no latent reads, is drawn from N(0, 1) (``generator``): for latents drawn from the posterior, the noise is
        then a posterior draw in the prior's noise space (the start of reverse annealing from the prior)."""
        masks = self._unit_masks()
        noise = [samples[-1]]
        for j, layer in enumerate(self.decoder[:-1]):
            l = self.n_layers - 2 - j  # this conditional gives samples[l] from samples[l + 1]
            mean, log_std = layer(samples[l + 1])
            noise.insert(0, (samples[l] - mean) * torch.exp(-log_std))
        if masks is not None:
            noise = [torch.where(keep, e, self._randn(e.shape, generator)) for e, (keep, _) in zip(noise, masks)]
        return noise

    def log_px_at_prior_noise(self, x: Tensor, noise: Sequence[Tensor]) -> Tensor:
        """log p(x | h^1), (k, batch), at the latents :meth:`prior_samples` makes of the noise [eps^1, ..., eps^L]
        (each (k, batch, d_l)): the likelihood that annealing from the prior reads (:func:`iwae.ais_log_likelihood`
        with ``anneal_from="prior"``), for which E_eps[p(x | h^1(eps))] = p(x)."""
        return self._log_px(self.prior_samples(noise)[0], x)

    @torch.no_grad()
    def simulate(self, n: int, generator: torch.Generator | None = None) -> Simulated:
        """n data drawn from the model, x ~ p(x | h^1) after h ~ p(h), with the recognition noise that reproduces
        their latents (:class:`Simulated`): each latent is an exact posterior draw for its x, the start that
        reverse annealing needs (bidirectional Monte Carlo, :func:`iwae.bdmc`).

        The noise inverts the reparameterisation layer by layer, eps^l = (h^l - mu_q) / sigma_q given h^(l-1).
        A pruned unit's noise, which no log-weight reads, is drawn from N(0, 1): its posterior.
        """
        samples = self._ancestral(n, generator)
        if self.likelihood == "bernoulli":
            x = torch.bernoulli(self.visible_means(samples[0]), generator=generator)
        else:
            mean, log_std = self.decoder[-1](samples[0])
            x = mean + torch.exp(log_std) * self._randn(mean.shape, generator)
        masks = self._unit_masks()
        noise, inp = [], x
        for l, (layer, h) in enumerate(zip(self.encoder, samples)):
            mean, log_std = layer(inp)
            eps = (h - mean) * torch.exp(-log_std)
            if masks is not None:
                eps = torch.where(masks[l][0], eps, self._randn(eps.shape, generator))
            noise.append(eps.unsqueeze(0))
            inp = h
        return Simulated(x, samples, noise)

    def visible_means(self, h1: Tensor) -> Tensor:
        """Means of p(x | h^1) for samples h^1 (..., d_1): Bernoulli probabilities or Gaussian means."""
        out = self.decoder[-1](h1)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out[0]
