"""Load a split of a data set as a tensor of intensities, and binarize it afresh.

| name | train | validation | test | binarization |
| --- | --- | --- | --- | --- |
| ``mnist`` | first 59,600 training images | last 400 training images | 10,000 | dynamic |
| ``omniglot`` | 23,000 | 1,345 | 8,070 (chardata) / 8,115 (archives) | dynamic |
| ``binarized-mnist`` | 50,000 | 10,000 | 10,000 | fixed (Larochelle & Murray 2011) |

Splits follow Burda et al. (2016), Section 5; Omniglot's are described in :mod:`iwae.data.omniglot`. Each
row is a 28x28 image flattened row by row, upright; MNIST intensities are pixel / 255. Dynamic binarization
(:func:`binarize`) draws each pixel as Bernoulli(intensity) every time an image is used; fixed-binarization
data (:func:`is_binary`) is used as it is.

Verification of files a user already has (``verify=True``, the default): each load parses the file (format
errors raise :class:`DataFormatError`) and then hashes the decompressed bytes it has just read, comparing
them with the published content's sha256 (:class:`ChecksumError` on a mismatch). This keeps no state and
costs about 0.03 s for MNIST's training file (decompressing it takes 0.15 s). Omniglot's archives are
fingerprinted once, when they are decoded, and the result is kept in the cache (:mod:`iwae.data.omniglot`).
Pass ``verify=False`` for your own files in the same layout.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from iwae.data.fetching import ensure
from iwae.data.omniglot import omniglot_splits
from iwae.data.readers import parse_amat, parse_idx, read_bytes
from iwae.data.resources import (
    DATASETS,
    MNIST_HOLD_OUT,
    RESOURCES,
    SPLIT_SIZES,
    SPLITS,
    ChecksumError,
    DataFormatError,
    check_choice,
    resolve_data_dir,
)

__all__ = ["MNIST_HOLD_OUT", "SPLITS", "SPLIT_SIZES", "binarize", "is_binary", "load"]

_SIDE = 28


def is_binary(name: str) -> bool:
    """True for data that is already 0/1 (``binarized-mnist``): the trainer must not binarize it again."""
    return check_choice(name, DATASETS, "data set") == "binarized-mnist"


def load(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    verify: bool = True,
) -> torch.Tensor:
    """One split of a data set as intensities.

    :param name: ``"mnist"``, ``"omniglot"`` or ``"binarized-mnist"`` (:data:`~iwae.data.DATASETS`).
    :param split: ``"train"``, ``"validation"`` or ``"test"``.
    :param data_dir: directory holding the files (layout in :data:`~iwae.data.resources.RESOURCES`); default
        from :func:`~iwae.data.resolve_data_dir`.
    :param download: fetch missing files first (:func:`~iwae.data.download`).
    :param verify: compare the content with the published data set (see the module docstring).
    :returns: float32 tensor (N, 784) with values in [0, 1] (exactly 0/1 for ``binarized-mnist``), on CPU.
    :raises ValueError: unknown ``name`` or ``split``.
    :raises DataNotFoundError: files missing (and not downloaded); the message says how to get them.
    :raises DataFormatError: a file is corrupt, in the wrong format, or (``ChecksumError``) not the
        published data.
    """
    check_choice(name, DATASETS, "data set")
    check_choice(split, SPLITS, "split")
    root = resolve_data_dir(data_dir)
    files = ensure(name, root, download=download)
    try:
        if name == "mnist":
            x = _mnist(files, split, verify)
        elif name == "binarized-mnist":
            x = _binarized_mnist(files, split, verify)
        else:
            x = omniglot_splits(files, root, verify)[split]
    except DataFormatError as err:
        if isinstance(err, ChecksumError):  # (says what to do already)
            raise
        raise DataFormatError(f"{err}; delete that file and run `iwae download {name} --data-dir {root}`") from err
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh binarization: each entry is an independent draw from Bernoulli(``x``).

    Call it every time an image is used (dynamic binarization, Burda et al. 2016, Section 5). Not
    differentiable: the result carries no gradient.

    :param x: intensities in [0, 1], any shape, dtype and device.
    :param generator: source of randomness on ``x``'s device (seed it for reproducible draws); default the
        global generator.
    :returns: 0/1 tensor of ``x``'s shape, dtype and device.
    :raises TypeError: integer pixels (``uint8`` 0..255); :raises ValueError: values outside [0, 1].
    """
    if not x.dtype.is_floating_point:
        raise TypeError(f"binarize takes intensities in [0, 1] as floats, got {x.dtype}; for 0..255 pixels pass "
                        "x.float() / 255")  # fmt: skip
    try:
        return torch.bernoulli(x.detach(), generator=generator)
    except RuntimeError as err:
        if "p_in" not in str(err):  # not torch's range check: not ours to rename
            raise
        lo, hi = (v.item() for v in torch.aminmax(x.detach()))
        raise ValueError(
            f"binarize takes intensities in [0, 1], got values from {lo:g} to {hi:g}; scale them "
            "first (0..255 pixels: x / 255)"
        ) from None


def _verify_content(key: str, path: Path, data: bytes, name: str) -> None:
    want = RESOURCES[key].fingerprint
    if want is None:
        return
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise ChecksumError(
            f"`{path}`: sha256 of the content {got}, expected {want} (the published {Path(key).name}); "
            f"delete it and run `iwae download {name}`, or load with verify=False"
        )


def _mnist(files: dict[str, Path], split: str, verify: bool) -> np.ndarray:
    key = "mnist/t10k-images-idx3-ubyte.gz" if split == "test" else "mnist/train-images-idx3-ubyte.gz"
    path = files[key]
    data = read_bytes(path)
    images = parse_idx(data, path)
    if images.ndim != 3 or images.shape[1:] != (_SIDE, _SIDE):
        raise DataFormatError(f"{path}: expected N x {_SIDE} x {_SIDE} images, found shape {images.shape}")
    if verify:
        _verify_content(key, path, data, "mnist")
    if split != "test":
        if len(images) <= MNIST_HOLD_OUT:
            raise DataFormatError(f"{path}: {len(images)} images, need more than the {MNIST_HOLD_OUT} held out")
        images = images[:-MNIST_HOLD_OUT] if split == "train" else images[-MNIST_HOLD_OUT:]
    # uint8 (N, 28, 28) -> float32 (N, 784) in [0, 1], in one pass.
    return np.divide(images.reshape(len(images), -1), np.float32(255), dtype=np.float32)


def _binarized_mnist(files: dict[str, Path], split: str, verify: bool) -> np.ndarray:
    part = {"train": "train", "validation": "valid", "test": "test"}[split]
    key = f"binarized_mnist/binarized_mnist_{part}.amat"
    path = files[key]
    data = read_bytes(path)
    values = parse_amat(data, path)  # (N, 784) uint8 in {0, 1}
    if verify:
        _verify_content(key, path, data, "binarized-mnist")
    return values.astype(np.float32)
