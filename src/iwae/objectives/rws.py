r"""Reweighted wake-sleep (Bornschein & Bengio 2015), the relative of IWAE that the paper discusses in Section 2.

The generative network ascends :math:`\mathcal{L}_k` at the samples drawn, and the recognition network follows the
wake-phase update (Le et al. 2019's wake-phi), at those samples held fixed:

.. math:: \Delta\theta \propto \sum_i \tilde w_i \nabla_\theta \log p_\theta(x, h_i), \qquad
    \Delta\phi \propto \sum_i \tilde w_i \nabla_\phi \log q_\phi(h_i \mid x), \qquad
    \tilde w_i = w_i \Big/ \sum_j w_j ,

so the recognition network fits q to the posterior (an inclusive KL) instead of ascending the bound through the
samples. Two passes on the same noise with the samples detached give the two parts: one with q's parameters
detached (its log-weights move the generative network only) and one with p's parameters detached (its negated
log-weights move the recognition network only, by :math:`\nabla_\phi \log q`). The loss's value is minus L_k.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from iwae import bounds
from iwae.models.latent_model import SampledModel
from iwae.objectives.base import RNG, Estimator, Noise, detached_networks, weighted_sum, with_value

if TYPE_CHECKING:
    from iwae.objectives.loss import Objective

__all__ = ["ReweightedWakeSleep"]


def _held(h: Tensor) -> Tensor:
    return h.detach()


class ReweightedWakeSleep(Estimator):
    """RWS: the generative network on L_k's gradient, the recognition network on wake-phi, samples held fixed."""

    path_keywords: ClassVar[bool] = True

    bounds: ClassVar[tuple[str, ...] | None] = ("iwae",)

    def loss(
        self, model: SampledModel, x: Tensor, objective: Objective, generator: RNG = None, noise: Noise = None
    ) -> Tensor:
        n = objective.samples_per_example
        noise = list(model.draw_noise(n, x.shape[0], generator) if noise is None else noise)
        # generative network: q's parameters and the samples detached, so log w moves theta only
        wake = model.forward_samples(x, n, noise=noise, stop_q_grad=True, sample_hook=_held).log_w
        w_tilde = torch.softmax(wake.detach(), 0)  # (n, batch); a coefficient, not a path
        # recognition network: p's parameters and the samples detached, so -log w = log q moves phi only
        _, decoder = detached_networks(model, "rws")
        call = torch.func.functional_call
        recog = call(model, decoder, (x, n), {"noise": noise, "sample_hook": _held}, strict=False).log_w
        surrogate = -weighted_sum(w_tilde, wake - recog).mean()
        # Detached: the value only (minus L_k); the gradient is the surrogate's.
        return with_value(surrogate, -bounds.iwae(wake.detach()).mean())
