"""Bounds and estimators of one's own, named in tests/test_own_objectives.py (``--bound own_objectives:iwae_again``):
a module that is no test file, importable where the tests run (pytest puts tests/ on the path)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from iwae import bounds
from iwae.objectives.base import Bound, with_value
from iwae.objectives.dreg import iwae_path_weights
from iwae.objectives.reparam import Reparam

# The package's IWAE bound (Eq. 8) and Rényi bound written again, outside the package: trained, they must give the
# package's numbers bit for bit.
iwae_again = Bound(lambda log_w, k, params: bounds.iwae(log_w), path_weights=iwae_path_weights)
vr_again = Bound(lambda log_w, k, params: bounds.vr(log_w, params["alpha"]), params=("alpha",))


class ReparamAgain(Reparam):
    """The package's reparameterisation estimator under another name."""


reparam_again = ReparamAgain()


class IwaeOnly(Reparam):
    """Reparameterisation, declared for the IWAE bound alone."""

    bounds: ClassVar[tuple[str, ...] | None] = ("iwae",)


iwae_only = IwaeOnly()


class RandomlyScaled(Reparam):
    """Reparameterisation with its gradient scaled by a factor drawn from torch's global generator at each step (its
    value unchanged): a run of it is reproducible only if its global draws come from the run's own stream."""

    compilable: ClassVar[bool] = False

    def loss(self, model, x: Tensor, objective, generator=None, noise=None) -> Tensor:  # type: ignore[no-untyped-def]
        loss = super().loss(model, x, objective, generator, noise)
        return with_value(loss * (0.5 + torch.rand((), device=x.device)), loss)


randomly_scaled = RandomlyScaled()

not_a_bound = bounds.iwae  # a function of the log-weights, not a Bound
reads_its_own_parameter = Bound(lambda log_w, k, params: bounds.iwae(log_w), params=("tau",))  # (no such PARAMS)
