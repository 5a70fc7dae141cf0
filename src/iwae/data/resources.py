"""Declared data files: where each data set lives on disk and on the web, and how to check it.

Every file a data set needs is a :class:`Resource` in the registry :data:`RESOURCES`, keyed by its path
relative to the data directory. A resource carries two kinds of check (the README's "Data" section lists where
each file comes from):

* ``known_hash`` / ``git_blob`` / ``size``: the bytes of the file *as published*. Checked on download only.
* ``fingerprint``: the *content*, for copies a user already has, which may be recompressed: sha256 of the
  decompressed bytes (MNIST idx, binarized-MNIST amat text), or, for the Omniglot zips, sha256 of the decoded
  105x105 images (1 = paper, 0 = ink, uint8, row-major) concatenated in sorted order of their paths. Checked
  by the readers when loading with ``verify=True``.

:data:`SOURCES` lists, per data set, the groups of resources that can each provide it, preferred first
(Omniglot: the paper's ``chardata.mat``, else the two original archives). Tests swap entries of both dicts
(``monkeypatch.setitem``) to point at local servers and synthetic files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pooch

__all__ = [
    "DATASETS",
    "RESOURCES",
    "SOURCES",
    "SPLITS",
    "SPLIT_SIZES",
    "TEST_SIZES",
    "MNIST_HOLD_OUT",
    "ChecksumError",
    "DataFormatError",
    "DataNotFoundError",
    "DownloadError",
    "Resource",
    "check_choice",
    "find_local",
    "is_writable",
    "locate",
    "missing_error",
    "resolve_cache_dir",
    "resolve_data_dir",
]


class DataNotFoundError(FileNotFoundError):
    """A data set's files are not in the data directory (and could not be downloaded)."""


class DownloadError(DataNotFoundError):
    """Every URL of a file failed: no connection, HTTP error, or a checksum/size mismatch."""


class DataFormatError(ValueError):
    """A data file is corrupt or not in the expected format; the message names the file and the problem."""


class ChecksumError(DataFormatError):
    """A local data file parses but its content differs from the published data set."""


@dataclass(frozen=True)
class Resource:
    """One published data file.

    :param path: where it goes, relative to the data directory, under its published file name.
    :param urls: mirrors, tried in order.
    :param known_hash: pooch-style hash of the published bytes (``"md5:..."``, ``"sha256:..."``), or None.
    :param size: size in bytes of the published file, or None if unknown.
    :param fingerprint: sha256 of the content (see the module docstring), or None if unknown.
    :param git_blob: git blob id of the published bytes in its repository, or None.
    :param aliases: other local file names accepted instead of ``path`` (e.g. a gzipped or plain variant).
    """

    path: str
    urls: tuple[str, ...]
    known_hash: str | None
    size: int | None
    fingerprint: str | None
    git_blob: str | None = None
    aliases: tuple[str, ...] = ()

    def candidates(self, data_dir: Path) -> list[Path]:
        """Local paths that may hold this file, the published name first."""
        return [data_dir / self.path, *(data_dir / a for a in self.aliases)]


_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_BMNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
_OMNIGLOT_MIRRORS = (
    "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/",
    "https://github.com/brendenlake/omniglot/raw/master/python/",
)


def _mnist(name: str, md5: str, size: int, fingerprint: str) -> Resource:
    return Resource(
        path=f"mnist/{name}.gz",
        urls=tuple(m + f"{name}.gz" for m in _MNIST_MIRRORS),
        known_hash=f"md5:{md5}",
        size=size,
        fingerprint=fingerprint,
        aliases=(f"mnist/{name}",),
    )


def _bmnist(split: str, size: int, sha256: str) -> Resource:
    name = f"binarized_mnist_{split}.amat"
    # The published .amat is plain text, so its sha256 is also the content fingerprint.
    return Resource(
        path=f"binarized_mnist/{name}",
        urls=(_BMNIST_URL + name,),
        known_hash=f"sha256:{sha256}",
        size=size,
        fingerprint=sha256,
        aliases=(f"binarized_mnist/{name}.gz",),
    )


def _omniglot_zip(part: str, md5: str, blob: str, fingerprint: str) -> Resource:
    name = f"images_{part}.zip"
    return Resource(
        path=f"omniglot/{name}",
        urls=tuple(m + name for m in _OMNIGLOT_MIRRORS),
        known_hash=f"md5:{md5}",
        size=None,
        fingerprint=fingerprint,
        git_blob=blob,
    )


RESOURCES: dict[str, Resource] = {
    r.path: r
    for r in (
        _mnist(
            "train-images-idx3-ubyte",
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            9_912_422,
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        _mnist(
            "t10k-images-idx3-ubyte",
            "9fb629c4189551a2d022fa330f9573f3",
            1_648_877,
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        _bmnist("train", 78_400_000, "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"),
        _bmnist("valid", 15_680_000, "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2"),
        _bmnist("test", 15_680_000, "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"),
        # The paper's 28x28 Omniglot. No checksum is published; the git blob id pins its bytes.
        Resource(
            path="omniglot/chardata.mat",
            urls=(
                "https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/chardata.mat",
                "https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT/chardata.mat",
            ),
            known_hash=None,
            size=None,
            fingerprint=None,
            git_blob="016a3536ffe5e1d38e42563a18d7a78bfaf643ec",
        ),
        _omniglot_zip(
            "background",
            "68d2efa1b9178cc56df9314c21c6e718",
            "71fd167eb6fdd312049395fbd247147a4b234231",
            "5136181e46a5c4481987a003a75de2f4cf3f818021561dc11172103e93786500",
        ),
        _omniglot_zip(
            "evaluation",
            "6b91aef0f799c5bb55b94e3f2daec811",
            "8ccde0ed1565641f1fa8c57cdc6ff634e15fc5c1",
            "7d185baeb97389a40b707202ec2d5748c285d5bc14f99203039b1f1532988399",
        ),
    )
}

# Per data set: groups of resource keys, each sufficient on its own; the first group found locally is used,
# and a download tries the groups in order.
SOURCES: dict[str, tuple[tuple[str, ...], ...]] = {
    "mnist": (("mnist/train-images-idx3-ubyte.gz", "mnist/t10k-images-idx3-ubyte.gz"),),
    "omniglot": (
        ("omniglot/chardata.mat",),
        ("omniglot/images_background.zip", "omniglot/images_evaluation.zip"),
    ),
    "binarized-mnist": (tuple(f"binarized_mnist/binarized_mnist_{s}.amat" for s in ("train", "valid", "test")),),
}

DATASETS: tuple[str, ...] = tuple(SOURCES)
SPLITS: tuple[str, ...] = ("train", "validation", "test")  # each data set's splits (iwae.data.datasets)
MNIST_HOLD_OUT = 400  # the last 400 training images validate (no shuffle), as in the paper
# Images per split, as in iwae.data.datasets' table; Omniglot's test size is that of the rebuilt archives (chardata:
# 8,070).
SPLIT_SIZES: dict[str, dict[str, int]] = {
    "mnist": {"train": 60_000 - MNIST_HOLD_OUT, "validation": MNIST_HOLD_OUT, "test": 10_000},
    "omniglot": {"train": 23_000, "validation": 1_345, "test": 8_115},
    "binarized-mnist": {"train": 50_000, "validation": 10_000, "test": 10_000},
}
# The test set's possible sizes: Omniglot's is chardata's 8,070 (the paper's) or the rebuilt archives' 8,115.
TEST_SIZES: dict[str, tuple[int, ...]] = {name: (sizes["test"],) for name, sizes in SPLIT_SIZES.items()} | {
    "omniglot": (8_070, SPLIT_SIZES["omniglot"]["test"])
}


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$IWAE_DATA_DIR``, else the per-user cache directory
    (``pooch.os_cache("iwae")``, e.g. ``~/.cache/iwae`` on Linux). The directory need not exist yet."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("IWAE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(pooch.os_cache("iwae")).expanduser()


def resolve_cache_dir() -> Path:
    """Where derived files go when the data directory is read-only: ``$IWAE_CACHE_DIR``, else the per-user
    cache directory ``pooch.os_cache("iwae")``."""
    env = os.environ.get("IWAE_CACHE_DIR")
    return Path(env).expanduser() if env else Path(pooch.os_cache("iwae")).expanduser()


def is_writable(directory: Path) -> bool:
    """Whether we may write into ``directory`` (or create it). A directory without any write permission bit
    counts as read-only even for root, so a shared read-only data directory is never written to."""
    d = directory
    while not d.exists():
        if d.parent == d:
            return False
        d = d.parent
    return d.is_dir() and os.access(d, os.W_OK) and bool(d.stat().st_mode & 0o222)


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError listing them."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(map(repr, choices))}")
    return value


def find_local(key: str, data_dir: Path) -> Path | None:
    """The local copy of resource ``key`` under ``data_dir``, or None."""
    return next((p for p in RESOURCES[key].candidates(data_dir) if p.is_file()), None)


def locate(name: str, data_dir: Path) -> dict[str, Path] | None:
    """Local files of the first complete group of :data:`SOURCES` ``[name]``, keyed by resource, or None."""
    for group in SOURCES[name]:
        found = {key: find_local(key, data_dir) for key in group}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def missing_error(
    name: str, data_dir: Path, detail: str = "", cls: type[DataNotFoundError] = DataNotFoundError
) -> DataNotFoundError:
    """The error for data set ``name`` missing from ``data_dir``: which files, where, and how to get them."""
    options = [" and ".join(f"`{k}`" for k in group) for group in SOURCES[name]]
    above, detail = Path(data_dir).parent, f"\n{detail}" if detail else ""
    if any(all(_present(above, k) for k in group) for group in SOURCES[name]):  # the data set's own folder given
        return cls(f"data set {name!r} not found in {data_dir}, but in the folder above it: point --data-dir or "
                   f"IWAE_DATA_DIR at {above}, the folder that holds {name}'s folder{detail}")  # fmt: skip
    if issubclass(cls, DownloadError):  # (downloading is what failed: the way left is to copy the files by hand)
        return cls(f"could not download data set {name!r} into {data_dir}:{detail}\nCopy {' or '.join(options)} "
                   "there by hand, or point --data-dir or IWAE_DATA_DIR at a directory that has it")  # fmt: skip
    return cls(
        f"data set {name!r} not found in {data_dir}: expected {' or '.join(options)} there. "
        f"Get it with `iwae download {name} --data-dir {data_dir}` (in Python iwae.data.download({name!r}, "
        f"{str(data_dir)!r}), or load(..., download=True)), or point --data-dir or IWAE_DATA_DIR at a directory "
        f"that has it.{detail}"
    )


def _present(data_dir: Path, key: str) -> bool:
    """Whether ``data_dir`` holds resource ``key`` under its published name or an alias (unchecked)."""
    res = RESOURCES[key]
    return any((data_dir / path).is_file() for path in (res.path, *res.aliases))
