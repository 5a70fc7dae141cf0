"""Data sets of Burda et al. (2016): dynamically binarized MNIST and Omniglot, and fixed-binarization MNIST.

Usage::

    x = iwae.data.load("mnist", "train")         # float32 (59600, 784), intensities in [0, 1]
    xb = iwae.data.binarize(x, generator=g)      # fresh 0/1 draw, each time an image is used

Data directory (:func:`resolve_data_dir`): the ``data_dir`` argument, else ``$IWAE_DATA_DIR``, else the
per-user cache directory ``pooch.os_cache("iwae")``. Its layout:

* ``mnist``: ``mnist/train-images-idx3-ubyte.gz``, ``mnist/t10k-images-idx3-ubyte.gz`` (or uncompressed);
* ``omniglot``: ``omniglot/chardata.mat`` (the paper's 28x28 file), else ``omniglot/images_background.zip``
  and ``omniglot/images_evaluation.zip`` (the original archives of 105x105 PNGs);
* ``binarized-mnist``: ``binarized_mnist/binarized_mnist_{train,valid,test}.amat`` (or ``.amat.gz``).

Missing files are fetched by ``iwae download NAME``, :func:`download` or ``load(..., download=True)``
(:mod:`iwae.data.fetching`); otherwise :class:`DataNotFoundError` says which files and how to get them.
Splits, binarization and verification: :mod:`iwae.data.datasets`. Omniglot without ``chardata.mat`` is a
rebuild that differs from the paper's data (downsampling, drawing choice, 8,115 test images instead of
8,070): see :mod:`iwae.data.omniglot`.

Provenance (every file, its URLs and checksums are declared in :data:`iwae.data.resources.RESOURCES`; the README's
"Data" section tabulates them): MNIST is LeCun, Cortes & Burges' idx files, from mirrors of the originals (the
published gzip's md5, and the sha256 of the decompressed file); binarized MNIST is Larochelle & Murray (2011)'s
fixed binarization, ``.amat`` text from Larochelle's site (its sha256), rows in a shuffled order without labels;
Omniglot is the paper's ``chardata.mat`` from the authors' repository (pinned by its git blob id, no published
checksum), else Lake et al.'s ``images_background.zip`` and ``images_evaluation.zip`` (md5 and git blob id of the
published archives, and a sha256 fingerprint of their decoded images).
"""

from importlib import import_module
from typing import Any

from iwae.data.fetching import download
from iwae.data.resources import (
    DATASETS,
    SPLITS,
    ChecksumError,
    DataFormatError,
    DataNotFoundError,
    DownloadError,
    resolve_data_dir,
)

__all__ = [
    "DATASETS",
    "SPLITS",
    "ChecksumError",
    "DataFormatError",
    "DataNotFoundError",
    "DownloadError",
    "binarize",
    "download",
    "is_binary",
    "load",
    "resolve_data_dir",
]


def __getattr__(name: str) -> Any:
    # The loaders need torch; the names, errors and downloads above do not (the command line's choices).
    if name in ("binarize", "is_binary", "load"):
        return getattr(import_module("iwae.data.datasets"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
