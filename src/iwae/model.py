"""The generative and recognition networks of the IWAE (Burda et al. 2016, Sections 2-3, Appendix C).

Generative model  p(x, h) = p(h^L) p(h^(L-1) | h^L) ... p(x | h^1),   p(h^L) = N(0, I).
Recognition model q(h | x) = q(h^1 | x) q(h^2 | h^1) ... q(h^L | h^(L-1)).

Every Gaussian conditional is a tanh MLP trunk followed by two linear heads, the mean and the log standard
deviation (standard deviation = exp(linear), diagonal covariance). The visible layer is Bernoulli (logits) for
binary data or Gaussian for real-valued data.

The model's one job for inference is :meth:`IWAE.log_weights`: the log importance weights
``log w_i = log p(x, h_i) - log q(h_i | x)`` (Eq. 4 and Eq. 8) of ``k`` reparameterised samples, shape ``(k, batch)``.
Bounds (``iwae.bounds``) and gradient estimators (``iwae.estimators``) are functions of those.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["GaussianLayer", "BernoulliLayer", "IWAE", "LogWeights"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# Below this many elements the plain ATen kernels win in a training step: an autograd.Function costs tens of
# microseconds of Python (measured on a 2-core CPU: fused paths slower at k = 1 and 5, faster at k = 50, batch 20).
_FUSE_MIN = 1 << 17
# Without autograd the sigmoid form of tanh costs only three extra in-place kernel calls.
_INPLACE_MIN = 4096


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


def _tanh(x: Tensor) -> Tensor:
    """tanh, fast on CPU: ATen's float32 tanh costs several times its sigmoid there, so large tensors go through
    the identity tanh(x) = 2 sigmoid(2x) - 1 (within a few float32 ulps of torch.tanh); without autograd, in place.

    Without a graph to record (``x`` needs no gradient) it writes into ``x``: callers pass a fresh activation.
    Under ``torch.compile`` it is the same identity in plain operations, which the compiler fuses.
    """
    if torch.compiler.is_compiling():
        return 2 * torch.sigmoid(2 * x) - 1
    if x.requires_grad:
        return _SigmoidTanh.apply(x) if x.numel() >= _FUSE_MIN and x.device.type == "cpu" else torch.tanh(x)
    if x.numel() >= _INPLACE_MIN and x.device.type == "cpu":
        return x.mul_(2).sigmoid_().mul_(2).sub_(1)
    return x.tanh_()


class Tanh(nn.Module):
    """``nn.Tanh`` through :func:`_tanh`; it overwrites its input when no gradient is recorded (see there)."""

    def forward(self, x: Tensor) -> Tensor:
        return _tanh(x)


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """tanh MLP: Linear-tanh for each consecutive pair of ``sizes`` (an empty trunk when len(sizes) == 1)."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), Tanh()]
    return nn.Sequential(*layers)


class GaussianLayer(nn.Module):
    """A diagonal Gaussian conditional: tanh trunk, then mean and log-std linear heads."""

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int) -> None:
        super().__init__()
        self.trunk = _mlp([n_in, *hidden])
        width = hidden[-1] if hidden else n_in
        self.mean = nn.Linear(width, n_out)
        self.log_std = nn.Linear(width, n_out)

    def forward(self, inp: Tensor) -> tuple[Tensor, Tensor]:
        t = self.trunk(inp)
        return self.mean(t), self.log_std(t)


class BernoulliLayer(nn.Module):
    """A factorised Bernoulli conditional: tanh trunk, then a logits head."""

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int) -> None:
        super().__init__()
        self.trunk = _mlp([n_in, *hidden])
        self.logits = nn.Linear(hidden[-1] if hidden else n_in, n_out)

    def forward(self, inp: Tensor) -> Tensor:
        return self.logits(self.trunk(inp))


class LogWeights(NamedTuple):
    """Output of :meth:`IWAE.forward_samples`.

    ``log_w``: (k, batch) log importance weights; ``samples``: the latent samples [h^1, ..., h^L], each
    (k, batch, d_l); ``noise``: the standard-normal draws that made them, same shapes.
    """

    log_w: Tensor
    samples: list[Tensor]
    noise: list[Tensor]


class IWAE(nn.Module):
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
        # Pruning state (Section 5.2): units outside the mask are held at a fixed value and left out of
        # log p and log q. All units are active until :meth:`pruned` says otherwise.
        for l, d in enumerate(latent_dims):
            self.register_buffer(f"unit_mask_{l}", torch.ones(d, dtype=torch.bool))
            self.register_buffer(f"unit_fill_{l}", torch.zeros(d))
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
        if layers == 1:
            return cls(x_dim, [50], [[200, 200]], [[200, 200]], "bernoulli", output_bias, generator=generator)
        if layers == 2:
            return cls(
                x_dim, [100, 50], [[200, 200], [100, 100]], [[100, 100], [200, 200]], "bernoulli", output_bias,
                generator=generator,
            )  # fmt: skip
        raise ValueError(f"the paper has architectures with 1 or 2 stochastic layers, got layers={layers}")

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

    def _masks(self) -> list[tuple[Tensor, Tensor]] | None:
        """The pruning masks and fills, or None when every unit is active (the common case, skipped entirely).

        Whether all are active is remembered per mask tensor and version, so the host reads the masks only after
        they change (``pruned``, ``load_state_dict``, ``.to``), not on every call: no device synchronisation per
        step, which also lets a CUDA graph capture the step.
        """
        masks = [(getattr(self, f"unit_mask_{l}"), getattr(self, f"unit_fill_{l}")) for l in range(self.n_layers)]
        if torch.compiler.is_compiling() and "_masks_all_active" in self.__dict__:
            # The eager caller refreshed the flag (iwae.make_train_step does before each compiled call); the
            # compiler guards on its value and recompiles if pruning changes it.
            return None if self._masks_all_active else masks
        key = tuple((id(m), m._version) for m, _ in masks)
        if self.__dict__.get("_masks_key") != key:
            self.__dict__["_masks_all_active"] = all(bool(m.all()) for m, _ in masks)
            self.__dict__["_masks_key"] = key
        return None if self.__dict__["_masks_all_active"] else masks

    # ------------------------------------------------------------------ log-weights (Eq. 4, Eq. 8)
    def log_weights(self, x: Tensor, k: int) -> Tensor:
        """Log importance weights of ``k`` samples h_i ~ q(h | x) drawn by reparameterisation.

        .. math:: \\log w_i = \\log p(x, h_i) - \\log q(h_i \\mid x), \\quad h_i = h(x, \\epsilon_i, \\theta)

        :param x: (batch, x_dim) data.
        :param k: number of samples per example.
        :returns: (k, batch) tensor; differentiable with respect to all parameters.
        """
        return self.forward_samples(x, k).log_w

    def draw_noise(self, k: int, batch: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """Standard-normal draws [eps^1, ..., eps^L], each (k, batch, d_l): the noise :meth:`forward_samples`
        draws from ``generator`` when it is given none (the same draws, in the same order)."""
        p = next(self.parameters())
        shapes = [(k, batch, d) for d in self.latent_dims]
        return [torch.randn(shape, generator=generator, device=p.device, dtype=p.dtype) for shape in shapes]

    def forward(self, x: Tensor, k: int, **kwargs) -> LogWeights:
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
        :param sample_hook: applied to each sample h^l where log p, log q(h^l | .) and the generative network
            read it; the next recognition layer reads the raw sample. DReG uses it to reweight the gradient
            that flows into the recognition network through each sample.
        """
        if x.dim() != 2 or x.shape[1] != self.x_dim:
            raise ValueError(f"x must have shape (batch, {self.x_dim}), got {tuple(x.shape)}")
        if k < 1:
            raise ValueError(f"k must be a positive number of samples, got {k}")
        masks = self._masks()
        if noise is None:
            noise = self.draw_noise(k, x.shape[0], generator)
        log_q = x.new_zeros(())
        samples: list[Tensor] = []
        drawn: list[Tensor] = []
        inp = x  # q(h^1 | x): the deterministic trunk runs once per example, (batch, x_dim) -> (batch, d_1)
        for l, layer in enumerate(self.encoder):
            mean, log_std = layer(inp)
            eps = noise[l]
            h = torch.addcmul(mean, torch.exp(log_std), eps)  # mean + std * eps: (k, batch, d_l), broadcast over k
            if masks is not None:
                keep, fill = masks[l]
                h = torch.where(keep, h, fill)
            inp = h  # the next recognition layer reads the raw sample
            if sample_hook is not None:
                h = sample_hook(h)
            if stop_q_grad:
                # For l >= 2 the detached-parameter density still depends on h^(l-1) through its input.
                if l == 0:
                    m_d, s_d = mean.detach(), log_std.detach()
                else:
                    m_d, s_d = torch.func.functional_call(
                        layer, {n: p.detach() for n, p in layer.named_parameters()}, (samples[-1],)
                    )
                terms = _gaussian_terms(h, m_d, s_d)
            elif masks is None:
                # log N(h; mean, std) with h = mean + std * eps is -eps^2/2 - log std - log(2 pi)/2; summed over
                # units, the eps part carries no gradient and the log std part is per example for l = 1
                d = eps.shape[-1]
                terms = None
                log_q = log_q - (0.5 * eps.square().sum(-1) + (log_std.sum(-1) + d * _HALF_LOG_2PI))
            else:
                terms = -(0.5 * eps.square() + log_std + _HALF_LOG_2PI)
            if terms is not None:
                log_q = log_q + _masked_sum(terms, masks, l)
            samples.append(h)
            drawn.append(eps)
        top = samples[-1]
        if masks is None:
            log_p = -(0.5 * top.square().sum(-1) + top.shape[-1] * _HALF_LOG_2PI)
        else:
            log_p = _masked_sum(-(0.5 * top.square() + _HALF_LOG_2PI), masks, self.n_layers - 1)
        for j, layer in enumerate(self.decoder):
            l = self.n_layers - 1 - j  # this conditional reads h^(l+1) = samples[l]
            if l > 0:
                mean, log_std = layer(samples[l])
                if masks is None:
                    log_p = log_p + _gaussian_log_prob(samples[l - 1], mean, log_std)
                else:
                    log_p = log_p + _masked_sum(_gaussian_terms(samples[l - 1], mean, log_std), masks, l - 1)
            else:
                log_p = log_p + self._log_px(layer, samples[0], x)
        return LogWeights(log_p - log_q, samples, drawn)

    def _log_px(self, layer: nn.Module, h1: Tensor, x: Tensor) -> Tensor:
        """log p(x | h^1), (k, batch)."""
        if self.likelihood == "bernoulli":
            return _bernoulli_log_prob(layer(h1), x)
        mean, log_std = layer(h1)
        return _gaussian_log_prob(x, mean, log_std)

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

        For the Bernoulli visible layer these are the pixel probabilities sigmoid(logits) (Appendix E).
        """
        p = next(self.parameters())
        h = torch.randn((n, self.latent_dims[-1]), generator=generator, device=p.device, dtype=p.dtype)
        for layer in self.decoder[:-1]:
            mean, log_std = layer(h)
            h = mean + torch.exp(log_std) * torch.randn(mean.shape, generator=generator, device=p.device, dtype=p.dtype)
        return self.visible_means(h)

    def visible_means(self, h1: Tensor) -> Tensor:
        """Means of p(x | h^1) for samples h^1 (..., d_1): Bernoulli probabilities or Gaussian means."""
        out = self.decoder[-1](h1)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out[0]

    # ------------------------------------------------------------------ pruning (Section 5.2)
    def pruned(self, keep: Sequence[Tensor], fill: Sequence[Tensor] | None = None) -> IWAE:
        """A copy of the model with the units outside ``keep`` removed.

        A removed unit is held at ``fill`` (default 0; pass the data mean of E_q[u] for inactive units) and its
        log p and log q terms are left out of the log-weight, so the model has fewer latent dimensions.
        :param keep: one boolean tensor per layer, True for the units to keep.
        """
        if len(keep) != self.n_layers:
            raise ValueError(f"keep needs one mask per stochastic layer ({self.n_layers}), got {len(keep)}")
        model = copy.deepcopy(self)
        for l, mask in enumerate(keep):
            buf = getattr(model, f"unit_mask_{l}")
            buf.copy_(torch.as_tensor(mask, dtype=torch.bool, device=buf.device) & buf)
            if fill is not None:
                getattr(model, f"unit_fill_{l}").copy_(torch.as_tensor(fill[l]))
        return model


def _gaussian_terms(h: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Per-unit log N(h; mean, exp(log_std)^2), not summed."""
    z = (h - mean) * torch.exp(-log_std)
    return -(0.5 * z.square() + log_std + _HALF_LOG_2PI)


def _gaussian_log_prob(h: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(h; mean, exp(log_std)^2) summed over the last dimension (fewer passes than summing the terms)."""
    z = (h - mean) * torch.exp(-log_std)
    return -(0.5 * z.square().sum(-1) + log_std.sum(-1) + h.shape[-1] * _HALF_LOG_2PI)


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


def _bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """log Bernoulli(x; sigmoid(logits)) summed over the last dimension: sum_j x_j l_j - softplus(l_j), stable for
    any logit. ``logits`` (..., batch, D) broadcasts against ``x`` (batch, D)."""
    if not torch.compiler.is_compiling():  # compiled: the plain operations below, fused by the compiler
        if logits.numel() >= _FUSE_MIN and logits.requires_grad and not x.requires_grad:
            return _BernoulliLogProb.apply(logits, x)
        if not torch.is_grad_enabled() or not (logits.requires_grad or x.requires_grad):
            return nn.functional.softplus(logits).addcmul_(x, logits, value=-1).sum(-1).neg_()
    return (x * logits).sum(-1) - nn.functional.softplus(logits).sum(-1)


def _masked_sum(terms: Tensor, masks: list[tuple[Tensor, Tensor]] | None, layer: int) -> Tensor:
    """Sum per-unit log-density terms over the units of ``layer`` that the pruning mask keeps."""
    if masks is None:
        return terms.sum(-1)
    return (terms * masks[layer][0]).sum(-1)
