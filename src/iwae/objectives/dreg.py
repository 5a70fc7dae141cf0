r"""Doubly reparameterised gradients (Tucker et al. 2018), in one backward pass: for the IWAE bound and the other
bounds of log-weights, and for reweighted wake-sleep's wake-phi update.

Generative parameters :math:`\theta` get Eq. 14's gradient; recognition parameters :math:`\phi` get the squared
normalised weights on the path derivative, log q's parameters held fixed:

.. math:: \nabla_\theta = \sum_{i=1}^{k} \tilde w_i \nabla_\theta \log w_i , \qquad
    \nabla_\phi = \sum_{i=1}^{k} \tilde w_i^2 \frac{\partial \log w_i}{\partial h_i}
    \frac{\partial h_i}{\partial \phi} .

Unbiased for the gradient of Eq. 8. With L stochastic layers the factor :math:`\tilde w_i` multiplies the gradient
flowing into the recognition network through every sample :math:`h^l_i`. At k = 1 it equals STL.

The same holds for any bound :math:`\mathcal{L}(\log w_1, \dots, \log w_k)` of the log-weights. With
:math:`c_i = \partial \mathcal{L} / \partial \log w_i`, the reparameterisation gradient is
:math:`\sum_i c_i (\text{path}_i - \nabla_\phi \log q_\phi(h_i))`, and the score term's expectation is that of a path
term, :math:`\mathbb{E}_q[f(h) \nabla_\phi \log q_\phi(h)] = \mathbb{E}_\epsilon[\nabla_h f \, \partial h / \partial
\phi]` for :math:`f = c_i` (log q's parameters held), so the recognition network may take

.. math:: \nabla_\phi = \sum_{i=1}^{k} \Big(c_i - \frac{\partial c_i}{\partial \log w_i}\Big)
    \frac{\partial \log w_i}{\partial h_i} \frac{\partial h_i}{\partial \phi} ,

in closed form for each bound, declared with it in :mod:`iwae.objectives.registry` (:func:`iwae_path_weights` and
the others): IWAE :math:`\tilde w_i^2`; MIWAE the same within each group of k, over m; CIWAE :math:`\beta / k + (1 -
\beta) \tilde w_i^2`; the Rényi bound, with :math:`c_i \propto w_i^{1-\alpha}`, :math:`c_i (\alpha + (1 - \alpha)
c_i)` (at alpha = 0 IWAE's, towards 1 the ELBO's STL). A bound without them has no DReG, unless its own gradient
routing implements one (PIWAE's encoder takes MIWAE's, :mod:`iwae.objectives.piwae`).

Reweighted wake-sleep's recognition update gets a reparameterised estimator the same way (Tucker et al. 2018's
RWS-DReG): the wake-phi update :math:`\sum_i \tilde w_i \nabla_\phi \log q_\phi(h_i \mid x)` at held samples has the
expectation of :math:`\sum_i (\tilde w_i - \tilde w_i^2) \frac{\partial \log w_i}{\partial h_i} \frac{\partial
h_i}{\partial \phi}`, by the same identity with :math:`f = \tilde w_i`. Its generative network gets Eq. 14's
gradient, as RWS's does.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from iwae import bounds
from iwae.models.latent_model import SampledModel
from iwae.objectives.base import RNG, Bound, Estimator, Noise, weighted_sum, with_value

if TYPE_CHECKING:
    from iwae.objectives.loss import Objective

__all__ = ["DReG", "RWSDReG", "iwae_path_weights", "miwae_path_weights", "ciwae_path_weights", "vr_path_weights"]


# Each bound's (c, f), declared with the bound in iwae.objectives.registry: c_i = dL/d log w_i, and f_i with
# c_i f_i = c_i - dc_i/d log w_i (module docstring), from the (n, batch) log-weights, k and the bound's parameters.


def iwae_path_weights(log_w: Tensor, k: int, params: dict[str, float]) -> tuple[Tensor, Tensor]:
    """L_k: c_i = f_i = w~_i, so the encoder's weight is w~_i^2."""
    w_tilde = torch.softmax(log_w, 0)
    return w_tilde, w_tilde


def miwae_path_weights(log_w: Tensor, k: int, params: dict[str, float]) -> tuple[Tensor, Tensor]:
    """MIWAE: IWAE's within each group of k (rows g k .. g k + k - 1, as :func:`iwae.bounds.miwae`), over m."""
    n = log_w.shape[0]
    w_tilde = torch.softmax(log_w.reshape(n // k, k, -1), 1).reshape(n, -1)
    return w_tilde * (k / n), w_tilde


def ciwae_path_weights(log_w: Tensor, k: int, params: dict[str, float]) -> tuple[Tensor, Tensor]:
    """CIWAE, beta ELBO + (1 - beta) IWAE: the two parts' weights added, c_i = beta / k + (1 - beta) w~_i."""
    beta = params["beta"]
    w_tilde = torch.softmax(log_w, 0)
    c = beta / k + (1 - beta) * w_tilde
    path = beta / k + (1 - beta) * w_tilde**2
    return c, torch.where(c > 0, path / c, 0.0)


def vr_path_weights(log_w: Tensor, k: int, params: dict[str, float]) -> tuple[Tensor, Tensor]:
    """The Rényi bound: c_i = softmax((1 - alpha) log w)_i, dc_i/d log w_i = (1 - alpha) c_i (1 - c_i)."""
    alpha = params["alpha"]
    c = torch.softmax((1 - alpha) * log_w, 0)
    return c, alpha + (1 - alpha) * c


class _PathReweighted(Estimator):
    """The surrogate sum_i sg(c_i) log w_i with log q's parameters detached, plus a hook per sample.

    The surrogate gives the decoder the gradient with weights c_i and the encoder sum_i c_i d log w_i/dh_i
    dh_i/dphi; a gradient hook on every sample multiplies the part that flows into the encoder by a factor f_i, so
    that it gets c_i f_i (:meth:`weights`).
    """

    path_keywords: ClassVar[bool] = True

    @abstractmethod
    def weights(self, objective: Objective, log_w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(c, f, value)`` for the (n, batch) log-weights: the decoder's weights c_i, the factor f_i on sample
        i's path into the encoder beside c_i, and the bound per example."""

    def loss(
        self, model: SampledModel, x: Tensor, objective: Objective, generator: RNG = None, noise: Noise = None
    ) -> Tensor:
        factors: list[Tensor] = []  # filled once the forward pass has computed the weights; read during backward

        def reweight(h: Tensor) -> Tensor:
            if not h.requires_grad:
                return h
            h = h.view_as(h)  # a fresh node, so the hook sees exactly the gradient flowing through this use of h
            h.register_hook(lambda g: g * factors[0].unsqueeze(-1))
            return h

        n = objective.samples_per_example  # m k for MIWAE, else k
        out = model.forward_samples(x, n, noise=noise, generator=generator, stop_q_grad=True, sample_hook=reweight)
        c, factor, value = self.weights(objective, out.log_w.detach())  # detached: coefficients, not paths
        factors.append(factor)
        surrogate = -weighted_sum(c, out.log_w).mean()
        # Detached: the value only; the gradient is the surrogate's.
        return with_value(surrogate, -value.mean())


class DReG(_PathReweighted):
    """DReG: the decoder gets the bound's gradient, the encoder c_i - dc_i/d log w_i on each sample's path.

    Defined for every bound that declares its ``path_weights`` (:class:`~iwae.objectives.base.Bound`): L_k, MIWAE,
    CIWAE and the Rényi bound.
    """

    def defined_for(self, name: str, bound: Bound) -> bool:
        return super().defined_for(name, bound) and bound.path_weights is not None

    def weights(self, objective: Objective, log_w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return *objective.path_weights(log_w), objective.per_example(log_w)


class RWSDReG(_PathReweighted):
    """RWS-DReG: reweighted wake-sleep whose recognition update is doubly reparameterised (module docstring).

    The decoder's gradient is Eq. 14's at the samples drawn, as :class:`~iwae.objectives.rws.ReweightedWakeSleep`
    gives it; the encoder's, sum_i (w~_i - w~_i^2) d log w_i/dh_i dh_i/dphi, has the expectation of RWS's wake-phi
    update, typically with lower variance (Tucker et al. 2018). At k = 1 the encoder gets no gradient: the
    wake-phi update's expectation is zero there too. The value is minus L_k.
    """

    bounds: ClassVar[tuple[str, ...] | None] = ("iwae",)

    def weights(self, objective: Objective, log_w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        w_tilde = torch.softmax(log_w, 0)
        return w_tilde, 1 - w_tilde, bounds.iwae(log_w)  # times the surrogate's w~_i: w~_i - w~_i^2
