"""The conditionals the IWAE is built from (Burda et al. 2016, Appendix C): tanh MLP trunks with linear heads.

A Gaussian conditional has two heads, the mean and the log standard deviation (diagonal covariance); the Bernoulli
visible layer has one, the logits. :class:`iwae.models.model.IWAE` stacks them into the generative and recognition
networks.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from iwae.models._ops import Tanh

__all__ = ["GaussianLayer", "BernoulliLayer", "mlp", "q_params"]


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """tanh MLP: Linear-tanh for each consecutive pair of ``sizes`` (an empty trunk when len(sizes) == 1)."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), Tanh()]
    return nn.Sequential(*layers)


class GaussianLayer(nn.Module):
    """A diagonal Gaussian conditional: tanh trunk, then mean and log-std linear heads."""

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int) -> None:
        super().__init__()
        self.trunk = mlp([n_in, *hidden])
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
        self.trunk = mlp([n_in, *hidden])
        self.logits = nn.Linear(hidden[-1] if hidden else n_in, n_out)

    def forward(self, inp: Tensor) -> Tensor:
        return self.logits(self.trunk(inp))


def q_params(
    layer: GaussianLayer, mean: Tensor, log_std: Tensor, cond: Tensor | None, stop_q_grad: bool
) -> tuple[Tensor, Tensor]:
    """Mean and log-std of q(h^l | cond) for log q to read from the sample: recomputed from the (hooked) sample
    ``cond`` = h^(l-1), or the layer's own output for l = 1 (``cond`` None); parameters detached if ``stop_q_grad``
    (for l >= 2 the detached-parameter density still depends on h^(l-1) through its input)."""
    if cond is None:
        return (mean.detach(), log_std.detach()) if stop_q_grad else (mean, log_std)
    if not stop_q_grad:
        return layer(cond)
    # layer(cond) with its parameters detached, its operations written out: torch.compile traces this whole, where
    # torch.func.functional_call broke the graph twice (a parameter dict swapped in and out of the module)
    t = cond
    for module in layer.trunk:
        t = F.linear(t, module.weight.detach(), module.bias.detach()) if isinstance(module, nn.Linear) else module(t)
    mean_head, log_std_head = layer.mean, layer.log_std
    return (
        F.linear(t, mean_head.weight.detach(), mean_head.bias.detach()),
        F.linear(t, log_std_head.weight.detach(), log_std_head.bias.detach()),
    )
