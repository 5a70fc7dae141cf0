"""Pruning latent units (Burda et al. 2016, Section 5.2): a model with fewer latent dimensions.

A pruned unit is held at a fixed value (its fill) and its terms are left out of log p and log q. The state is a
boolean mask and a fill value per stochastic layer, kept as buffers so that it is saved with the model;
:class:`PrunableUnits` owns it for :class:`iwae.models.model.IWAE`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn

__all__ = ["PrunableUnits", "hold"]

_Model = TypeVar("_Model", bound="PrunableUnits")


class PrunableUnits(nn.Module):
    """The pruning state of a model whose latent layers have sizes ``latent_dims`` (bottom-up)."""

    latent_dims: list[int]

    def _init_pruning(self) -> None:
        """Register the masks (every unit kept) and the fills (zero) of every latent layer."""
        # ``_pruned`` says whether any unit is out, read from the masks only when they are set (:meth:`pruned`,
        # ``load_state_dict``), so no step reads them on the host.
        for l, d in enumerate(self.latent_dims):
            self.register_buffer(f"unit_mask_{l}", torch.ones(d, dtype=torch.bool))
            self.register_buffer(f"unit_fill_{l}", torch.zeros(d))
        self._pruned = False
        self.register_load_state_dict_post_hook(PrunableUnits._sync_pruning)

    @property
    def is_pruned(self) -> bool:
        """Whether any latent unit is pruned (:meth:`pruned`, or a pruned model's state loaded into this one)."""
        return self._pruned

    def _sync_pruning(self, *_: object) -> None:
        """Read :attr:`is_pruned` from the unit masks; also a ``load_state_dict`` post hook (its arguments unused)."""
        self._pruned = not all(bool(getattr(self, f"unit_mask_{l}").all()) for l in range(len(self.latent_dims)))

    def _unit_masks(self) -> list[tuple[Tensor, Tensor]] | None:
        """(keep, fill) per layer, or None when no unit is pruned (then the masks are skipped entirely).

        A plain Python flag decides, so ``torch.compile`` guards on it and recompiles when pruning changes.
        """
        if not self._pruned:
            return None
        n_layers = len(self.latent_dims)
        return [(getattr(self, f"unit_mask_{l}"), getattr(self, f"unit_fill_{l}")) for l in range(n_layers)]

    def pruned(self: _Model, keep: Sequence[Tensor], fill: Sequence[Tensor] | None = None) -> _Model:
        """A copy of the model with the units outside ``keep`` removed.

        A removed unit is held at ``fill`` (default 0; pass the data mean of E_q[u] for inactive units) and its
        log p and log q terms are left out of the log-weight, so the model has fewer latent dimensions.
        :param keep: one boolean tensor per layer, True for the units to keep.
        """
        n_layers = len(self.latent_dims)
        if len(keep) != n_layers:
            raise ValueError(f"keep needs one mask per stochastic layer ({n_layers}), got {len(keep)}")
        model = copy.deepcopy(self)
        for l, mask in enumerate(keep):
            buf = getattr(model, f"unit_mask_{l}")
            buf.copy_(torch.as_tensor(mask, dtype=torch.bool, device=buf.device) & buf)
            if fill is not None:
                getattr(model, f"unit_fill_{l}").copy_(torch.as_tensor(fill[l]))
        model._sync_pruning()
        return model


def hold(h: Tensor, masks: list[tuple[Tensor, Tensor]] | None, l: int) -> Tensor:
    """Sample ``h`` of layer ``l`` with its pruned units held at their fill value."""
    return h if masks is None else torch.where(masks[l][0], h, masks[l][1])
