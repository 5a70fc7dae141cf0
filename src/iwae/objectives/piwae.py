r"""PIWAE's gradient routing (Rainforth et al. 2018): each network trains on the bound that suits it.

The value is the MIWAE bound :math:`\mathcal{L}_{M,K}` over m groups of k samples; the recognition network
:math:`\phi` follows the IWAE bound of all m k samples and the generative network :math:`\theta` the MIWAE bound:

.. math:: \nabla_\phi = \nabla_\phi \mathcal{L}_{MK} , \qquad \nabla_\theta = \nabla_\theta \mathcal{L}_{M,K} .

Two forward passes on the same noise route the two bounds' reparameterisation gradients to the two networks: one
with the generative parameters detached, one with the recognition parameters detached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from iwae import bounds
from iwae.models.latent_model import SampledModel
from iwae.objectives.base import RNG, Estimator, Noise, with_value

if TYPE_CHECKING:
    from iwae.objectives.loss import Objective

__all__ = ["PIWAERouting"]


class PIWAERouting(Estimator):
    """Encoder on IWAE over all m*k samples, decoder on MIWAE(m, k); the value is MIWAE(m, k)."""

    def loss(
        self, model: SampledModel, x: Tensor, objective: Objective, generator: RNG = None, noise: Noise = None
    ) -> Tensor:
        n, k = objective.samples_per_example, objective.k
        if noise is None:
            with torch.no_grad():
                noise = model.forward_samples(x, n, generator=generator).noise
        # Detached copies: each pass differentiates one network only.
        decoder = {f"decoder.{name}": p.detach() for name, p in model.decoder.named_parameters()}
        encoder = {f"encoder.{name}": p.detach() for name, p in model.encoder.named_parameters()}
        call = torch.func.functional_call
        log_w_enc = call(model, decoder, (x, n), {"noise": noise}, strict=False).log_w
        log_w_dec = call(model, encoder, (x, n), {"noise": noise}, strict=False).log_w
        surrogate = -(bounds.iwae(log_w_enc) + bounds.miwae(log_w_dec, k)).mean()
        # Detached: the value only; the gradient is the surrogate's.
        return with_value(surrogate, -bounds.miwae(log_w_dec.detach(), k).mean())
