r"""Doubly reparameterised gradients (Tucker et al. 2018), in one backward pass: for the IWAE bound, and for
reweighted wake-sleep's wake-phi update.

Generative parameters :math:`\theta` get Eq. 14's gradient; recognition parameters :math:`\phi` get the squared
normalised weights on the path derivative, log q's parameters held fixed:

.. math:: \nabla_\theta = \sum_{i=1}^{k} \tilde w_i \nabla_\theta \log w_i , \qquad
    \nabla_\phi = \sum_{i=1}^{k} \tilde w_i^2 \frac{\partial \log w_i}{\partial h_i}
    \frac{\partial h_i}{\partial \phi} .

Unbiased for the gradient of Eq. 8. With L stochastic layers the factor :math:`\tilde w_i` multiplies the gradient
flowing into the recognition network through every sample :math:`h^l_i`. At k = 1 it equals STL. For Rainforth et
al. (2018)'s MIWAE bound, the mean of m IWAE bounds of k samples each, it applies to each group: the weights are
normalised within their group, and the surrogate is averaged over the m groups.

The same construction gives reweighted wake-sleep's recognition update a reparameterised estimator (Tucker et al.
2018's RWS-DReG): the wake-phi update :math:`\sum_i \tilde w_i \nabla_\phi \log q_\phi(h_i \mid x)` at held samples
has the expectation of

.. math:: \sum_{i=1}^{k} (\tilde w_i - \tilde w_i^2) \frac{\partial \log w_i}{\partial h_i}
    \frac{\partial h_i}{\partial \phi} ,

since :math:`\mathbb{E}_q[f(h) \nabla_\phi \log q_\phi(h)] = \mathbb{E}_\epsilon[\nabla_h f \,
\partial h / \partial \phi]` for :math:`f = \tilde w_i` (log q's parameters held), and :math:`\partial \tilde w_i /
\partial h_i = \tilde w_i (1 - \tilde w_i) \, \partial \log w_i / \partial h_i`. Its generative network gets Eq. 14's
gradient, as RWS's does.
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

__all__ = ["DReG", "RWSDReG"]


class DReG(Estimator):
    """DReG: the surrogate sum_i sg(w~_i) log w_i with log q's parameters detached, plus a hook per sample.

    The surrogate gives the decoder its Eq. 14 gradient and the encoder sum_i w~_i d log w_i/dh_i dh_i/dphi; a
    gradient hook on every sample multiplies the part that flows into the encoder by another factor,
    :meth:`encoder_factor` (w~_i: w~_i^2 in all). For MIWAE, w~ is normalised within each group of k and the sums
    are averaged over the m groups.
    """

    bounds: ClassVar[tuple[str, ...] | None] = ("iwae", "miwae")

    def encoder_factor(self, w_tilde: Tensor) -> Tensor:
        """The factor on sample i's gradient into the recognition network, beside the surrogate's w~_i."""
        return w_tilde

    def loss(
        self, model: SampledModel, x: Tensor, objective: Objective, generator: RNG = None, noise: Noise = None
    ) -> Tensor:
        factors: list[Tensor] = []  # filled once the forward pass has computed w~; read during backward

        def reweight(h: Tensor) -> Tensor:
            if not h.requires_grad:
                return h
            h = h.view_as(h)  # a fresh node, so the hook sees exactly the gradient flowing through this use of h
            h.register_hook(lambda g: g * factors[0].unsqueeze(-1))
            return h

        n, k = objective.samples_per_example, objective.k  # n = m k samples in m groups of k (one group: IWAE)
        out = model.forward_samples(x, n, noise=noise, generator=generator, stop_q_grad=True, sample_hook=reweight)
        log_w = out.log_w.detach()
        if n == k:
            w_tilde = torch.softmax(log_w, 0)  # (k, batch); detached: a coefficient, not a path
            surrogate, value = -(w_tilde * out.log_w).sum(0).mean(), bounds.iwae(log_w)
        else:  # MIWAE: group g holds rows g k .. g k + k - 1 (bounds.miwae)
            w_tilde = torch.softmax(log_w.reshape(n // k, k, -1), 1).reshape(n, -1)
            surrogate, value = -(w_tilde * out.log_w).sum(0).mean() * (k / n), bounds.miwae(log_w, k)
        factors.append(self.encoder_factor(w_tilde))
        # Detached: the value only; the gradient is the surrogate's.
        return with_value(surrogate, -value.mean())


class RWSDReG(DReG):
    """RWS-DReG: reweighted wake-sleep whose recognition update is doubly reparameterised (module docstring).

    The decoder's gradient is Eq. 14's at the samples drawn, as :class:`~iwae.objectives.rws.ReweightedWakeSleep`
    gives it; the encoder's, sum_i (w~_i - w~_i^2) d log w_i/dh_i dh_i/dphi, has the expectation of RWS's wake-phi
    update, typically with lower variance (Tucker et al. 2018). At k = 1 the encoder gets no gradient: the
    wake-phi update's expectation is zero there too. The value is minus L_k.
    """

    bounds: ClassVar[tuple[str, ...] | None] = ("iwae",)

    def encoder_factor(self, w_tilde: Tensor) -> Tensor:
        return 1 - w_tilde  # times the surrogate's w~_i: w~_i - w~_i^2
