r"""The Section 3.1 estimator (Burda et al. 2016): backpropagate through one sample chosen by its weight.

k forward passes run without a graph; per example one index :math:`I \sim \mathrm{Categorical}(\tilde w)` is
drawn, and one forward and backward pass runs on that sample's noise alone. Its expectation is Eq. 14's estimate,

.. math:: \mathbb{E}_{I}\big[\nabla \log w_I\big] = \sum_{i=1}^{k} \tilde w_i \nabla \log w_i ,

so it is unbiased for the IWAE gradient at the cost of one backward pass per example instead of k.
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

__all__ = ["SampleOne"]


class SampleOne(Estimator):
    """Section 3.1: one sample per example, drawn with probability w~_i, carries the gradient."""

    bounds: ClassVar[tuple[str, ...] | None] = ("iwae",)

    def loss(
        self, model: SampledModel, x: Tensor, objective: Objective, generator: RNG = None, noise: Noise = None
    ) -> Tensor:
        k = objective.k
        with torch.no_grad():  # k forward passes, no graph kept
            out = model.forward_samples(x, k, noise=noise, generator=generator)
            bound = bounds.iwae(out.log_w)
            probs = torch.softmax(out.log_w, 0).T  # (batch, k), the normalised weights w~
            idx = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (batch,)
            cols = torch.arange(x.shape[0], device=x.device)
            chosen = [eps[idx, cols].unsqueeze(0) for eps in out.noise]  # each (1, batch, d_l)
        # One forward and backward pass on the chosen noise: the same h_i, now with a graph.
        log_w = model.forward_samples(x, 1, noise=chosen).log_w[0]
        return with_value(-log_w.mean(), -bound.mean())
