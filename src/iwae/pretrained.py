"""Models published in the repository, listed and loaded by name, without a network.

A published model is an exported run (:func:`iwae.runs.sharing.export_run`: its weights alone with a sha256, its
config without machine paths, its metrics and a model card) committed under ``results/<study>/weights/<name>/``;
its name is that folder's. They come with a checkout of the repository, not with a wheel: they are found in the
checkout the package runs from (``pip install -e .``), else in the current directory's (a checkout where ``pip
install .`` was run), else under ``root``::

    import iwae
    iwae.pretrained.available()                          # name -> the folder that holds it
    model, config, metrics = iwae.pretrained.load("mnist-2d-iwae-k5")
"""

from __future__ import annotations

from pathlib import Path

from iwae.runs.checkpoint import WEIGHTS_NAME
from iwae.runs.sharing import LoadedRun, load_run

__all__ = ["available", "load"]

_CHECKOUT = Path(__file__).resolve().parents[2]  # src/iwae/pretrained.py -> the repository's root


def _root() -> Path:
    """The checkout the package runs from, else the current directory, whichever holds ``results/``."""
    for candidate in (_CHECKOUT, Path.cwd()):
        if (candidate / "results").is_dir():
            return candidate
    raise FileNotFoundError(
        f"no results/ folder in {_CHECKOUT} (where iwae is installed) or in the current directory: published "
        "models come with a checkout of iwae (git clone, then pip install -e .); run from the checkout or pass "
        "root=CHECKOUT"
    )


def available(root: str | Path | None = None) -> dict[str, Path]:
    """The published models under ``root``'s ``results/`` (default: this checkout's, else the current directory's),
    by name, sorted.

    :raises FileNotFoundError: no ``results/`` folder there (an installed wheel carries none).
    """
    results = (Path(root) if root is not None else _root()) / "results"
    if not results.is_dir():
        raise FileNotFoundError(
            f"no results/ folder in {results.parent}: published models come with a checkout of iwae "
            "(git clone, then pip install -e .); pass root=CHECKOUT to read another one"
        )
    found: dict[str, Path] = {}
    for weights in sorted(results.glob(f"*/weights/*/{WEIGHTS_NAME}")):
        name = weights.parent.name
        if name in found:
            raise ValueError(f"two published models are named {name!r}: {found[name]} and {weights.parent}")
        found[name] = weights.parent
    return found


def load(name: str, root: str | Path | None = None, data_dir: str | Path | None = None) -> LoadedRun:
    """The published model ``name`` (:func:`available`): ``(model, config, metrics)``, the model in eval mode and
    its weights checked (sha256, finite values); ``data_dir`` as in :func:`iwae.load_run`.

    :raises KeyError: no published model has that name (the message lists those that do).
    """
    models = available(root)
    if name not in models:
        raise KeyError(f"no published model {name!r}; available: {', '.join(models) or 'none'}")
    return load_run(models[name], data_dir)
