r"""PIWAE's gradient routing (Rainforth et al. 2018): each network trains on the bound that suits it.

A tighter bound helps the generative network but lowers the signal-to-noise ratio of the recognition network's
gradient (the paper's argument), so the generative network :math:`\theta` ascends the IWAE bound of all m k
samples and the recognition network :math:`\phi` the MIWAE bound :math:`\mathcal{L}_{M,K}` of m groups of k:

.. math:: \nabla_\theta = \nabla_\theta \mathcal{L}_{MK} , \qquad \nabla_\phi = \nabla_\phi \mathcal{L}_{M,K} .

The value is the IWAE bound of all m k samples, the generative network's target and the tighter of the two.

Two forward passes on the same noise route the two bounds' reparameterisation gradients to the two networks: one
with the generative parameters detached, one with the recognition parameters detached.

With ``estimator="dreg"`` the recognition network's MIWAE gradient is doubly reparameterised (Tucker et al. 2018;
:mod:`iwae.objectives.dreg`): its pass holds log q's parameters too, so that the gradient flows only through the
samples, and weights each log w_i by w~_gi^2 / m, the squared weight normalised within its group. Every gradient
path from log w_i into the recognition network crosses one of its samples once (the protocol of
:mod:`iwae.models.latent_model`), so this weight gives what DReG's hooks give. The generative network's gradient is
unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from iwae import bounds
from iwae.models.latent_model import SampledModel
from iwae.objectives.base import RNG, Estimator, Noise, detached_networks, weighted_sum, with_value
from iwae.objectives.dreg import miwae_path_weights

if TYPE_CHECKING:
    from iwae.objectives.loss import Objective

__all__ = ["PIWAERouting"]


class PIWAERouting(Estimator):
    """Decoder on IWAE over all m*k samples, encoder on MIWAE(m, k); the value is IWAE over all m*k samples. The
    encoder's gradient is the reparameterisation gradient, or with ``estimator="dreg"`` DReG's."""

    def loss(
        self, model: SampledModel, x: Tensor, objective: Objective, generator: RNG = None, noise: Noise = None
    ) -> Tensor:
        n, k = objective.samples_per_example, objective.k
        if noise is None:
            with torch.no_grad():
                noise = model.forward_samples(x, n, generator=generator).noise
        # Detached copies: each pass differentiates one network only.
        encoder, decoder = detached_networks(model, "piwae")
        call = torch.func.functional_call
        dreg = objective.estimator == "dreg"
        held = {"stop_q_grad": True} if dreg else {}  # a model of one's own may lack the keyword for reparam
        log_w_enc = call(model, decoder, (x, n), {"noise": noise, **held}, strict=False).log_w
        log_w_dec = call(model, encoder, (x, n), {"noise": noise}, strict=False).log_w
        if dreg:  # MIWAE's DReG weights c_i f_i = w~_gi^2 / m on the path derivative (q's parameters held)
            c, f = miwae_path_weights(log_w_enc.detach(), k, objective.params)
            encoder_target = weighted_sum(c * f, log_w_enc)
        else:
            encoder_target = bounds.miwae(log_w_enc, k)
        surrogate = -(encoder_target + bounds.iwae(log_w_dec)).mean()
        # Detached: the value only; the gradient is the surrogate's.
        return with_value(surrogate, -bounds.iwae(log_w_dec.detach()).mean())
