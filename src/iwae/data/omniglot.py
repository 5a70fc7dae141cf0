"""Omniglot at 28x28: the paper's ``chardata.mat`` if present, else a rebuild from the original archives.

Splits (the paper's protocol, Burda et al. 2016, Section 5; the shuffle seed is ours):

* from ``chardata.mat``: the 24,345 training images are permuted with
  ``numpy.random.default_rng(0).permutation(24345)``; the last 1,345 of that order are the validation set,
  the first 23,000 the training set; ``testdata`` (8,070) is the test set.
* from ``images_background.zip`` + ``images_evaluation.zip``: drawings 1-15 of each of the 1,623 characters,
  ordered by (character id, drawing), form the 24,345-image pool, split exactly as above; drawings 16-20
  are the test set (8,115), in (character id, drawing) order.

Differences of the rebuild from the paper's ``chardata.mat`` (``data`` 784 x 24,345 and ``testdata`` 784 x 8,070,
floats in [0, 1], MATLAB column-major images; every one of the 1,623 characters has exactly 15 training drawings):

1. chardata's downsampling is unknown (probably MATLAB ``imresize``), so pixel values differ; we use exact
   area averaging of the 105x105 images (see :mod:`iwae.data.readers`), ink = 1.
2. Which drawings chardata put in train and test is unknown; drawings 1-15 / 16-20 match its per-character
   counts (15 train drawings per character), not the identities.
3. The test set has 8,115 images, not 8,070: chardata lacks one (unknown) drawing of each of the 45
   Glagolitic characters.
4. The permutation differs from the reference code's, so train/validation membership differs too.

Log-likelihoods on the rebuild are therefore indicative, not directly comparable with the paper's.

Cache: decoding the 32,460 PNGs takes a few seconds, so the 28x28 result is saved as
``omniglot28_<key>.npz`` (float32, zlib-compressed, about 7 MB), where ``key`` hashes the preprocessing
version and the sha256 of both archives: a changed archive gets a new cache, old ones are left (delete them
freely). It goes into ``<data_dir>/omniglot/`` if that is writable, else into
``<cache dir>/omniglot/`` (``$IWAE_CACHE_DIR``, else ``pooch.os_cache("iwae")``), written to a temporary
file and renamed. A cache that fails its checks is rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from iwae.data.fetching import file_hash, git_blob_id
from iwae.data.readers import read_chardata, read_omniglot_zip
from iwae.data.resources import (
    RESOURCES,
    ChecksumError,
    DataFormatError,
    is_writable,
    resolve_cache_dir,
)

__all__ = ["CACHE_VERSION", "HOLD_OUT", "SEED", "cache_path", "omniglot_splits"]

HOLD_OUT = 1345  # validation images taken from the end of the shuffled training pool
SEED = 0  # numpy.random.default_rng(SEED).permutation shuffles the training pool
CACHE_VERSION = "area-v1"  # change when the preprocessing changes, to invalidate old caches
_TRAIN_DRAWINGS = 15  # drawings 1..15 of each character go to the training pool
_CHARDATA, _BACKGROUND, _EVALUATION = (
    "omniglot/chardata.mat",
    "omniglot/images_background.zip",
    "omniglot/images_evaluation.zip",
)


def _split_pool(pool: np.ndarray, test: np.ndarray, origin: str) -> dict[str, np.ndarray]:
    if len(pool) <= HOLD_OUT:
        raise DataFormatError(f"{origin}: {len(pool)} training images, need more than the {HOLD_OUT} held out")
    shuffled = pool[np.random.default_rng(SEED).permutation(len(pool))]
    return {"train": shuffled[:-HOLD_OUT], "validation": shuffled[-HOLD_OUT:], "test": test}


def omniglot_splits(files: dict[str, Path], data_dir: Path, verify: bool = True) -> dict[str, np.ndarray]:
    """Train/validation/test arrays, (N, 784) float32, from the files :func:`~iwae.data.fetching.ensure`
    found: ``chardata.mat``, or both archives (decoded once, then cached).

    :param verify: check the content against the published data (git blob id of ``chardata.mat``,
        image fingerprints of the archives) and raise :class:`ChecksumError` on a mismatch.
    """
    if _CHARDATA in files:
        path = files[_CHARDATA]
        pool, test = read_chardata(path)
        want = RESOURCES[_CHARDATA].git_blob
        if verify and want is not None and (got := git_blob_id(path)) != want:
            raise ChecksumError(
                f"`{path}`: git blob id {got}, expected {want} (the paper's chardata.mat); "
                "delete it and run `iwae download omniglot`, or load with verify=False"
            )
        return _split_pool(pool, test, str(path))
    background, evaluation = files[_BACKGROUND], files[_EVALUATION]
    images, fingerprints = _decoded_archives(background, evaluation, data_dir)
    if verify:
        for key, path, got in zip((_BACKGROUND, _EVALUATION), (background, evaluation), fingerprints):
            want = RESOURCES[key].fingerprint
            if want is None or got == want:
                continue
            # The recorded fingerprint was taken from a lossless rebuild, not from the published bytes (data
            # README): if the archive is byte-identical to the published one, report rather than refuse.
            if RESOURCES[key].known_hash == f"md5:{file_hash(path, 'md5')}":
                warnings.warn(
                    f"`{path}` is the published archive (md5 matches) but its image fingerprint {got} differs "
                    f"from the recorded {want}; please report this",
                    stacklevel=3,
                )
            else:
                raise ChecksumError(
                    f"`{path}`: image fingerprint {got}, expected {want} (sha256 of the decoded images "
                    "of the published archive); delete it and run `iwae download omniglot`, "
                    "or load with verify=False"
                )
    pool = images[:, :_TRAIN_DRAWINGS].reshape(-1, images.shape[-1])  # (C * 15, 784), by (char, drawing)
    test = images[:, _TRAIN_DRAWINGS:].reshape(-1, images.shape[-1])  # (C * 5, 784)
    return _split_pool(pool, test, f"{background} + {evaluation}")


def cache_path(background: Path, evaluation: Path, directory: Path) -> Path:
    """Where the decoded archives are cached in ``directory`` (see the module docstring)."""
    key = hashlib.sha256(CACHE_VERSION.encode())
    for p in (background, evaluation):
        key.update(file_hash(p).encode())
    return directory / f"omniglot28_{key.hexdigest()[:16]}.npz"


def _decoded_archives(background: Path, evaluation: Path, data_dir: Path) -> tuple[np.ndarray, list[str]]:
    """(C, 20, 784) images of both archives by character id, and their two fingerprints; cached."""
    dirs = [data_dir / "omniglot", resolve_cache_dir() / "omniglot"]
    name = cache_path(background, evaluation, dirs[0]).name
    for d in dirs:
        if (d / name).is_file():
            try:
                return _read_cache(d / name)
            except DataFormatError as err:
                warnings.warn(f"{err}; rebuilding it", stacklevel=4)
    print(f"decoding the Omniglot archives into 28x28 images, once (about 10 s); the result is cached as "
          f"{dirs[0] / name}, or in {dirs[1]} where the data folder is read-only", file=sys.stderr)  # fmt: skip
    parts = [read_omniglot_zip(background), read_omniglot_zip(evaluation)]
    if parts[1].char_ids[0] != parts[0].char_ids[-1] + 1:
        raise DataFormatError(
            f"{evaluation}: character ids start at {parts[1].char_ids[0]}, expected "
            f"{parts[0].char_ids[-1] + 1} (right after {background}'s)"
        )
    arrays = {
        "images": np.concatenate([p.images for p in parts]),  # (C, 20, 784)
        "char_ids": np.concatenate([p.char_ids for p in parts]),
        "fingerprints": np.array([p.fingerprint for p in parts]),
        "version": np.array(CACHE_VERSION),
    }
    _write_cache([d / name for d in dirs], arrays)
    return arrays["images"], [p.fingerprint for p in parts]


def _read_cache(path: Path) -> tuple[np.ndarray, list[str]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            images, fingerprints = z["images"], [str(f) for f in z["fingerprints"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise DataFormatError(f"{path}: unreadable Omniglot cache ({err})") from err
    if images.dtype != np.float32 or images.ndim != 3 or images.shape[1:] != (20, 784) or len(fingerprints) != 2:
        raise DataFormatError(f"{path}: Omniglot cache has unexpected {images.dtype} {images.shape}")
    if not (np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1):
        raise DataFormatError(f"{path}: Omniglot cache has values outside [0, 1]")
    return images, fingerprints


def _write_cache(candidates: list[Path], arrays: dict[str, np.ndarray]) -> Path | None:
    """Save to the first writable candidate, atomically; warn (and go on uncached) if none is."""
    reasons = []
    for path in candidates:
        if not is_writable(path.parent):
            reasons.append(f"{path.parent}: read-only")
            continue
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".omniglot28-", suffix=".npz.tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, **arrays)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the data files beside it are readable
            os.replace(tmp, path)
            return path
        except OSError as err:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            reasons.append(f"{path.parent}: {err}")
    warnings.warn("could not cache decoded Omniglot (" + "; ".join(reasons) + ")", stacklevel=5)
    return None
