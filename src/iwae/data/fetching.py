"""Fetch missing data files from their public homes.

A download is idempotent: a file already in the data directory (under its published name or an alias) is
kept if it passes its declared checks (:func:`check_local`: published size, hash and git blob id under the
published name; the content fingerprint under an alias), and downloaded again in its place if not. Missing
files are downloaded: each mirror is tried in turn with :func:`pooch.retrieve` (progress bar on stderr)
into a fresh hidden folder beside the destination (``.iwae-download-*``); pooch checks the published hash
(md5 for MNIST and the Omniglot archives, sha256 for the binarized-MNIST text); then we check the size and
git blob id where known (``chardata.mat`` has no published checksum, only its blob id), and only then is
the file renamed into place. A failed try removes its folder, so a corrupt or truncated download leaves
nothing behind; when every mirror fails, :class:`DownloadError` lists each URL and why.

Loading a data set checks the content of its files again (see :mod:`iwae.data.datasets`).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import pooch

from iwae.data.readers import read_omniglot_zip
from iwae.data.resources import (
    DATASETS,
    RESOURCES,
    SOURCES,
    DownloadError,
    check_choice,
    find_local,
    is_writable,
    locate,
    missing_error,
    resolve_data_dir,
)
from iwae.util.atomic import is_disk_full

__all__ = ["download", "ensure", "fetch", "file_hash", "git_blob_id", "check_local"]

_CHUNK = 1 << 20  # hash and download in 1 MiB pieces


def file_hash(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of the bytes of ``path`` (``algorithm`` is any :func:`hashlib.new` name)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def git_blob_id(path: Path) -> str:
    """Git's object id of the file: sha1 of ``b"blob <size>\\0"`` followed by the bytes."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_published(key: str, path: Path) -> None:
    """Checks beyond pooch's hash: size and git blob id of the published file. Raises ValueError."""
    res = RESOURCES[key]
    size = path.stat().st_size
    if res.size is not None and size != res.size:
        raise ValueError(f"size {size:,} bytes, expected {res.size:,}")
    if res.git_blob is not None and (got := git_blob_id(path)) != res.git_blob:
        raise ValueError(f"git blob id {got}, expected {res.git_blob}")


def check_local(key: str, path: Path) -> str | None:
    """What is wrong with ``path``, a local copy of resource ``key``, or None if it passes every declared check.

    Under the published name: the published size, git blob id and hash (``known_hash``), else the content
    fingerprint (a copy recompressed by its owner). Under an alias (e.g. the decompressed idx file): the content
    fingerprint (:mod:`iwae.data.resources`: the sha256 of the decompressed bytes, or of an Omniglot archive's
    decoded images).
    """
    res = RESOURCES[key]
    try:
        if path.name == Path(res.path).name:
            problem = _published_problem(key, path)
            # a copy recompressed by its owner fails the published file's checks but holds the same content
            if problem is None or (res.fingerprint is not None and _content_fingerprint(path) == res.fingerprint):
                return None
            return problem
        if res.fingerprint is not None and (got := _content_fingerprint(path)) != res.fingerprint:
            return f"content fingerprint {got}, expected {res.fingerprint}"
    except (OSError, EOFError, ValueError) as err:  # unreadable, or a gzip stream cut short
        return str(err)
    return None


def _published_problem(key: str, path: Path) -> str | None:
    """What differs between ``path`` and the published file of ``key`` (size, git blob id, hash), or None."""
    res = RESOURCES[key]
    try:
        _check_published(key, path)
    except ValueError as err:
        return str(err)
    if res.known_hash is not None:
        algorithm, _, want = res.known_hash.rpartition(":")
        if (got := file_hash(path, algorithm or "sha256")) != want:
            return f"{algorithm or 'sha256'} {got}, expected {want}"
    return None


def _content_fingerprint(path: Path) -> str:
    """The fingerprint of the content of ``path``: of an Omniglot archive (``.zip``) its decoded images', else the
    sha256 of its bytes, decompressed first if it is gzipped (``.gz``)."""
    if path.suffix == ".zip":
        return read_omniglot_zip(path).fingerprint
    h = hashlib.sha256()
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _downloader(url: str) -> pooch.HTTPDownloader | None:
    # pooch's default reads 1 KiB at a time; larger pieces are faster for the 78 MB amat.
    if url.startswith(("http://", "https://")):
        return pooch.HTTPDownloader(progressbar=True, chunk_size=_CHUNK)
    return None  # let pooch choose (e.g. ftp)


def fetch(key: str, data_dir: Path, replace: bool = False) -> Path:
    """Return the local copy of resource ``key`` under ``data_dir``, downloading it if missing (or if ``replace``:
    the download, once verified, is renamed over the file of the published name).

    :raises DownloadError: every mirror failed; nothing was written.
    """
    res = RESOURCES[key]
    if not replace and (local := find_local(key, data_dir)) is not None:
        return local
    dest = data_dir / res.path
    if not is_writable(dest.parent):
        raise DownloadError(
            f"cannot download `{res.path}`: {data_dir} is read-only; choose another data directory "
            "with --data-dir or IWAE_DATA_DIR"
        )
    made = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in res.urls:
        try:
            with tempfile.TemporaryDirectory(prefix=".iwae-download-", dir=dest.parent) as tmp:
                got = Path(
                    pooch.retrieve(
                        url,
                        known_hash=res.known_hash,
                        fname=dest.name,
                        path=tmp,
                        downloader=_downloader(url),
                        progressbar=True,
                    )
                )
                _check_published(key, got)
                os.replace(got, dest)  # same file system: atomic
            return dest
        # requests' errors are OSErrors; pooch's hash mismatch and ours are ValueErrors.
        except (OSError, ValueError) as err:
            if is_disk_full(err):  # no other mirror would fit either
                for d in made:
                    if d.is_dir() and not any(d.iterdir()):
                        d.rmdir()
                raise DownloadError(
                    f"no space left on device while downloading `{res.path}` into {data_dir} (no partial file was "
                    f"kept); free space and run `iwae download {_dataset_of(key)}` again"
                ) from err
            failures.append((url, err))
    for d in made:  # leave no empty folders behind either (innermost first)
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    if all(_offline(err) for _, err in failures):
        raise DownloadError(
            f"could not download `{res.path}`: no network connection to any of its {len(failures)} mirror(s); "
            f"copy the files into {data_dir} (README: Data) or run this again online"
        )
    tried = "\n".join(f"  {url}: {type(err).__name__}: {_first_line(err)}" for url, err in failures)
    raise DownloadError(f"could not download `{res.path}` into {data_dir} (no partial file was kept). Tried:\n{tried}")


def _dataset_of(key: str) -> str:
    """The data set whose files include resource ``key``."""
    return next(name for name, groups in SOURCES.items() if any(key in group for group in groups))


def _offline(err: BaseException) -> bool:
    """Whether ``err`` says that the host could not be reached at all (no network, a name that does not resolve)."""
    import requests

    # a proxy or TLS that refuses, or a mirror too slow to answer, is a network that is there: not offline
    reached = (requests.exceptions.SSLError, requests.exceptions.ProxyError, requests.exceptions.ReadTimeout)
    offline = (requests.ConnectionError, requests.exceptions.ConnectTimeout)
    return isinstance(err, offline) and not isinstance(err, reached)


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def ensure(name: str, data_dir: Path, download: bool = False) -> dict[str, Path]:
    """Local files of data set ``name`` keyed by resource, downloading them first if ``download``.

    Groups of :data:`~iwae.data.resources.SOURCES` are tried in order: for Omniglot, ``chardata.mat`` is
    preferred and the original archives are the fallback (with a warning, as they differ from the paper's).

    :raises DataNotFoundError: the files are missing and ``download`` is False.
    :raises DownloadError: the files are missing and could not be downloaded.
    """
    check_choice(name, DATASETS, "data set")
    if (found := locate(name, data_dir)) is not None:
        return found
    if not download:
        raise missing_error(name, data_dir)
    failures = []
    groups = SOURCES[name]
    for i, group in enumerate(groups):
        try:
            return {key: fetch(key, data_dir) for key in group}
        except DownloadError as err:
            failures.append(str(err))
            if i + 1 < len(groups):
                warnings.warn(f"{err}\nFalling back to {' and '.join(groups[i + 1])} for {name!r}.", stacklevel=3)
    raise missing_error(name, data_dir, "\n".join(failures), cls=DownloadError)


def download(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Download data set ``name`` into ``data_dir`` (see :func:`~iwae.data.resolve_data_dir`) unless present and
    sound: files already there are verified (:func:`check_local`) and those that fail are downloaded again.

    :param name: one of :data:`~iwae.data.DATASETS`.
    :returns: the local paths of its files.
    :raises DownloadError: a file could not be downloaded (no network, or every mirror's copy failed its
        checksum); a partial or corrupt download is never left in the data directory.
    """
    data_dir = resolve_data_dir(data_dir)
    check_choice(name, DATASETS, "data set")
    if (found := locate(name, data_dir)) is None:
        return list(ensure(name, data_dir, download=True).values())
    return [_verified(key, path, data_dir) for key, path in found.items()]


def _verified(key: str, path: Path, data_dir: Path) -> Path:
    """``path`` if it passes its checks, else a fresh download in its place (the failing copy then removed)."""
    if (problem := check_local(key, path)) is None:
        return path
    try:
        fresh = fetch(key, data_dir, replace=True)
    except DownloadError as err:
        raise DownloadError(f"`{path}` fails its check ({problem}), and {err}") from err
    if path != fresh:
        path.unlink(missing_ok=True)
    return fresh
