r"""Plain reparameterisation (Eq. 7, Eq. 14) and sticking the landing (Roeder et al. 2017).

Both differentiate the bound itself, through samples :math:`h_i = h(\epsilon_i, x; \phi)` drawn as a deterministic
function of standard-normal noise. For the k-sample VAE bound this is Eq. 7,

.. math:: \nabla \mathcal{L}^{\mathrm{VAE}}_k = \frac{1}{k} \sum_{i=1}^{k} \nabla \log w_i ,

for the IWAE bound Eq. 14, the normalised-weight average

.. math:: \nabla \mathcal{L}_k = \sum_{i=1}^{k} \tilde w_i \nabla \log w_i ,
    \qquad \tilde w_i = w_i \Big/ \sum_{j=1}^{k} w_j ,

and for MIWAE and CIWAE the gradient of their value. STL evaluates log q with q's distribution parameters
detached, which drops the score-function term :math:`-\nabla_\phi \log q_\phi(h)` at fixed h: the recognition
network learns only through the samples, the generative network's gradient is unchanged. With L stochastic
layers every conditional q(h^l | h^(l-1)) is treated alike, still as a function of the sample below it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from torch import Tensor

from iwae.models.latent_model import SampledModel
from iwae.objectives.base import RNG, Estimator, Noise

if TYPE_CHECKING:
    from iwae.objectives.loss import Objective

__all__ = ["Reparam", "StickingTheLanding"]


class Reparam(Estimator):
    """The bound's own reparameterisation gradient: minus the batch-mean bound is the surrogate itself."""

    compilable: ClassVar[bool] = True
    stop_q_grad: ClassVar[bool] = False  # log q with q's parameters detached (STL)

    def loss(
        self, model: SampledModel, x: Tensor, objective: Objective, generator: RNG = None, noise: Noise = None
    ) -> Tensor:
        n = objective.samples_per_example
        out = model.forward_samples(x, n, noise=noise, generator=generator, stop_q_grad=self.stop_q_grad)
        return -objective.per_example(out.log_w).mean()


class StickingTheLanding(Reparam):
    """STL (Roeder et al. 2017): the path derivative only; decoder gradients are those of :class:`Reparam`."""

    path_keywords: ClassVar[bool] = True

    stop_q_grad: ClassVar[bool] = True
