"""torch.hub entry points: the models published in this repository (``results/*/weights/``), loaded by name.

    import torch
    model = torch.hub.load("path/to/iwae", "pretrained", name="mnist-l1-k1", source="local")
    model = torch.hub.load("path/to/iwae", "mnist_l1_k1", source="local")   # the same: one entry per model

From GitHub, name the repository instead of a checkout (``torch.hub.load("OWNER/iwae", "mnist_l1_k1")``;
``torch.hub.list("OWNER/iwae")`` lists ``pretrained`` and one entry per published model). Each
returns the model in eval mode, its weights checked (sha256, finite values); its ``TrainConfig`` and final numbers
are ``iwae.pretrained.load(name)``'s. The checkout's own ``iwae`` (its ``src/``) is imported, so that the code is the
code that made the weights.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

dependencies = ["torch", "numpy", "scipy", "matplotlib", "tqdm", "safetensors", "pooch", "PIL"]

_HERE = Path(__file__).resolve().parent


def _iwae() -> Any:
    """This checkout's ``iwae`` package; an ``iwae`` imported from elsewhere first is refused unless it is this one."""
    src = _HERE / "src"
    loaded = sys.modules.get("iwae")
    if loaded is None:
        sys.path.insert(0, str(src))
        try:
            import iwae
        finally:
            sys.path.remove(str(src))
        loaded = iwae
    if not Path(loaded.__file__).resolve().is_relative_to(src):
        raise ImportError(f"this process imported iwae from {Path(loaded.__file__).parent} before torch.hub loaded "
                          f"{_HERE}: load the published models with that installation's iwae.pretrained.load, or in "
                          "a process that has not imported iwae")  # fmt: skip
    return loaded


def pretrained(name: str = "mnist-l1-k1", data_dir: str | None = None) -> Any:
    """The published model ``name`` (``iwae.pretrained.available()`` lists them), in eval mode."""
    return _iwae().pretrained.load(name, root=_HERE, data_dir=data_dir).model


def _entry(name: str) -> Callable[..., Any]:
    def load(data_dir: str | None = None) -> Any:
        return pretrained(name, data_dir)

    load.__name__ = load.__qualname__ = name.replace("-", "_")
    load.__doc__ = f"The published model {name!r} (results/.../weights/{name}), in eval mode."
    return load


# one entry point per published model, named as its folder with underscores (torch.hub.list shows them)
for _weights in sorted(_HERE.glob("results/*/weights/*/model.safetensors")):
    _load = _entry(_weights.parent.name)
    globals()[_load.__name__] = _load
