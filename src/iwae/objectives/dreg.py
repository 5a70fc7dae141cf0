r"""Doubly reparameterised gradients for the IWAE bound (Tucker et al. 2018), in one backward pass.

Generative parameters :math:`\theta` get Eq. 14's gradient; recognition parameters :math:`\phi` get the squared
normalised weights on the path derivative, log q's parameters held fixed:

.. math:: \nabla_\theta = \sum_{i=1}^{k} \tilde w_i \nabla_\theta \log w_i , \qquad
    \nabla_\phi = \sum_{i=1}^{k} \tilde w_i^2 \frac{\partial \log w_i}{\partial h_i}
    \frac{\partial h_i}{\partial \phi} .

Unbiased for the gradient of Eq. 8. With L stochastic layers the factor :math:`\tilde w_i` multiplies the gradient
flowing into the recognition network through every sample :math:`h^l_i`. At k = 1 it equals STL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from iwae import bounds
from iwae.models.latent_model import SampledModel
from iwae.objectives.base import RNG, Estimator, Noise, with_value

if TYPE_CHECKING:
    from iwae.objectives.loss import Objective

__all__ = ["DReG"]


class DReG(Estimator):
    """DReG: the surrogate sum_i sg(w~_i) log w_i with log q's parameters detached, plus a hook per sample.

    The surrogate gives the decoder its Eq. 14 gradient and the encoder sum_i w~_i d log w_i/dh_i dh_i/dphi; a
    gradient hook on every sample multiplies the part that flows into the encoder by another w~_i, making it
    w~_i^2.
    """

    bounds: ClassVar[tuple[str, ...] | None] = ("iwae",)

    def loss(
        self, model: SampledModel, x: Tensor, objective: Objective, generator: RNG = None, noise: Noise = None
    ) -> Tensor:
        weights: list[Tensor] = []  # filled once the forward pass has computed w~; read during backward

        def reweight(h: Tensor) -> Tensor:
            if not h.requires_grad:
                return h
            h = h.view_as(h)  # a fresh node, so the hook sees exactly the gradient flowing through this use of h
            h.register_hook(lambda g: g * weights[0].unsqueeze(-1))
            return h

        out = model.forward_samples(
            x, objective.k, noise=noise, generator=generator, stop_q_grad=True, sample_hook=reweight
        )
        w_tilde = torch.softmax(out.log_w.detach(), 0)  # (k, batch); detached: a coefficient, not a path
        weights.append(w_tilde)
        surrogate = -(w_tilde * out.log_w).sum(0).mean()
        # Detached: the value only; the gradient is the surrogate's.
        return with_value(surrogate, -bounds.iwae(out.log_w.detach()).mean())
