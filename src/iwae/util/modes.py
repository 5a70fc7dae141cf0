"""A model's train/eval mode for a block of work, each submodule's own mode found restored after it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["eval_mode"]


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
