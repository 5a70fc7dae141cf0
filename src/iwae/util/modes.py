"""A model's train/eval mode for a block of work, each submodule's own mode found restored after it; and the global
random state a probe of a model may draw from, put back after it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch

__all__ = ["eval_mode", "forked_rng"]


@contextmanager
def eval_mode(model: object) -> Iterator[None]:
    """The block with ``model`` in eval mode (dropout off, batch norm's running statistics used and left as they
    are); after it, every submodule's ``training`` flag as it was found. A model without modes is left alone."""
    modules = getattr(model, "modules", None)
    if modules is None:
        yield
        return
    modes = [(module, module.training) for module in modules()]
    model.eval()  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def forked_rng(device: torch.device) -> AbstractContextManager[None]:
    """torch's global generators (the CPU's, and ``device``'s if it is a CUDA device) as found, after the block: a
    probe's draws from them (a model's own dropout, say) are not a run's."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
