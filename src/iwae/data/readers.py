"""Readers for the raw files: MNIST idx, binarized-MNIST amat, Omniglot ``chardata.mat`` and image zips.

Each reader checks what it reads (magic number, sizes, shape, range, NaN) and raises
:class:`~iwae.data.resources.DataFormatError` naming the file and the problem; none uses ``assert``.
gzip-compressed files are recognised by their magic bytes, whatever their name. All images come out
row-major and upright: pixel ``(r, c)`` of a 28x28 image is element ``28 * r + c``.

Hostile files: every size a file declares (idx dimensions, MATLAB element lengths, zip member sizes, PNG
dimensions) is checked against the bytes actually there, or against a fixed cap for compressed data
(:data:`MAX_DECODED` for gzip and MATLAB, :data:`MAX_PNG_BYTES` for a zip member), before anything of that size is
allocated. Zip members with absolute paths, ``..`` or symbolic links are refused.

Omniglot downsampling: the 105x105 originals are reduced to 28x28 by exact area averaging. Output pixel
``i`` covers input span ``[3.75 i, 3.75 (i + 1))``; its value is the mean over that square of the ink
(1 - paper), with partial input pixels weighted by their overlap. This anti-aliases without ringing, so
values stay in [0, 1]. It is a separable linear map ``A @ X @ A.T`` with ``A`` of shape (28, 105).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import scipy.io
from PIL import Image
from tqdm.auto import tqdm

from iwae.data.matfile import checked_mat
from iwae.data.resources import DataFormatError

__all__ = [
    "MAX_DECODED",
    "MAX_PNG_BYTES",
    "OmniglotArchive",
    "area_matrix",
    "parse_amat",
    "parse_idx",
    "read_bytes",
    "read_chardata",
    "read_omniglot_zip",
]

_GZIP_MAGIC = b"\x1f\x8b"
_ORIG, _SIDE = 105, 28  # Omniglot's original and the paper's image side
_DRAWINGS = 20  # drawings per Omniglot character
MAX_DECODED = 1 << 30  # bytes decompressed from one file at most: 5x the largest real one (chardata.mat's arrays)
MAX_PNG_BYTES = 1 << 20  # bytes of one Omniglot PNG at most (the real ones have about 300)


def read_bytes(path: Path, limit: int = MAX_DECODED) -> bytes:
    """The content of ``path``, decompressed if it is gzip data (at most ``limit`` bytes of it)."""
    data = Path(path).read_bytes()
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(limit + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise DataFormatError(f"{path}: corrupt or truncated gzip data ({err})") from err
    if len(out) > limit:
        raise DataFormatError(f"{path}: gzip data decompresses to more than {limit:,} bytes; not a data file")
    return out


def parse_idx(data: bytes, path: Path | str) -> np.ndarray:
    """An unsigned-byte idx array (e.g. MNIST images, magic 0x00000803) from its bytes.

    :param path: the file's name, for messages only.
    :returns: uint8 array with the header's dimensions (a read-only view of ``data``).
    """
    if len(data) < 4:
        raise DataFormatError(f"{path}: truncated idx file ({len(data)} bytes, no header)")
    magic = int.from_bytes(data[:4], "big")
    ndim = data[3]
    if data[:2] != b"\0\0" or data[2] != 0x08 or ndim == 0:
        raise DataFormatError(
            f"{path}: bad idx magic number 0x{magic:08x}; expected 0x000008NN (unsigned bytes, NN dimensions)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"{path}: truncated idx header ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = math.prod(dims)  # exact: a product of four 32-bit sizes overflows int64
    if len(data) - header != count:
        problem = "truncated" if len(data) - header < count else "trailing bytes"
        raise DataFormatError(
            f"{path}: {problem}: header announces shape {dims} = {count:,} bytes of data, found {len(data) - header:,}"
        )
    return np.frombuffer(data, np.uint8, count=count, offset=header).reshape(dims)


def parse_amat(data: bytes, path: Path | str) -> np.ndarray:
    """Binarized-MNIST ``.amat`` text (one image per line, 784 values ``0``/``1``) as (N, 784) uint8."""
    width = 2 * 784  # "d " per pixel, the last separator being the newline
    if data and len(data) % width == 0:
        chars = np.frombuffer(data, np.uint8).reshape(-1, width)  # (N, 1568) ASCII codes
        seps = chars[:, 1::2]
        if (seps[:, :-1] == ord(" ")).all() and (seps[:, -1] == ord("\n")).all():
            values = chars[:, 0::2] - ord("0")  # uint8 arithmetic: any non-digit wraps to > 1
            if (values > 1).any():
                raise DataFormatError(f"{path}: values other than 0 and 1")
            return values
    if not data.strip():
        raise DataFormatError(f"{path}: empty file, expected lines of 784 values")
    # Not the canonical layout (other spacing, line ends, "1.0"): parse generally, slower.
    try:
        values = np.loadtxt(io.BytesIO(data), dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise DataFormatError(f"{path}: not amat text ({err})") from err
    if values.shape[0] == 0 or values.shape[1] != 784:
        raise DataFormatError(f"{path}: expected lines of 784 values, found shape {values.shape}")
    if not np.isin(values, (0.0, 1.0)).all():
        raise DataFormatError(f"{path}: values other than 0 and 1")
    return values.astype(np.uint8)


def _check_intensities(x: np.ndarray, path: Path | str, what: str) -> None:
    if not np.isfinite(x).all():
        raise DataFormatError(f"{path}: {what} contains NaN or infinite values")
    if x.size and (x.min() < 0 or x.max() > 1):
        raise DataFormatError(f"{path}: {what} has values outside [0, 1] (min {x.min()}, max {x.max()})")


def read_chardata(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The paper's Omniglot file: ``data`` (784 x N) and ``testdata`` (784 x M), one image per column.

    Columns are MATLAB column-major 28x28 images; they are returned as rows in row-major order, upright.

    :returns: train pool (N, 784) and test (M, 784), float32 in [0, 1].
    """
    try:
        mat = scipy.io.loadmat(io.BytesIO(checked_mat(path, MAX_DECODED)))
    except DataFormatError:
        raise
    except Exception as err:  # scipy raises many types on foreign or damaged files
        raise DataFormatError(f"{path}: cannot read as a MATLAB v5 .mat file ({err})") from err
    out = []
    for key in ("data", "testdata"):
        if key not in mat:
            found = sorted(k for k in mat if not k.startswith("__"))
            raise DataFormatError(f"{path}: no variable {key!r} (found {found})")
        x = np.asarray(mat[key])
        if x.ndim != 2 or x.shape[0] != 784 or x.dtype.kind not in "biuf":
            raise DataFormatError(
                f"{path}: {key!r} must be a numeric 784 x N matrix (one 28x28 image per column), "
                f"found {x.dtype} of shape {x.shape}"
            )
        _check_intensities(x, path, repr(key))
        # Column j read in MATLAB order is image^T in C order: (N, c, r) -> transpose -> (N, r, c).
        images = x.T.reshape(-1, _SIDE, _SIDE).transpose(0, 2, 1)
        out.append(np.ascontiguousarray(images, dtype=np.float32).reshape(-1, _SIDE * _SIDE))
    return out[0], out[1]


def area_matrix(n_in: int = _ORIG, n_out: int = _SIDE) -> np.ndarray:
    """(n_out, n_in) weights of exact area averaging: row i is the overlap of each input pixel with output
    pixel i's span, divided by the span's length (rows sum to 1)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)  # output pixel boundaries, in input pixels
    left = np.maximum(edges[:-1, None], np.arange(n_in)[None, :])
    right = np.minimum(edges[1:, None], np.arange(1, n_in + 1)[None, :])
    return np.clip(right - left, 0, None) * (n_out / n_in)


@dataclass(frozen=True)
class OmniglotArchive:
    """One Omniglot archive, decoded.

    :param char_ids: global character ids (1..1623 over both archives), consecutive, shape (C,).
    :param images: 28x28 ink intensities in [0, 1], (C, 20, 784) float32; ``images[c, d]`` is drawing d + 1.
    :param fingerprint: sha256 of the decoded 105x105 images (1 = paper, 0 = ink, uint8) in path order.
    """

    char_ids: np.ndarray
    images: np.ndarray
    fingerprint: str


_PNG_NAME = re.compile(r"(?:^|/)(\d{4})_(\d{2})\.png$")


def read_omniglot_zip(path: Path) -> OmniglotArchive:
    """Decode ``images_{background,evaluation}.zip``: PNGs ``<alphabet>/characterNN/CCCC_DD.png`` of 105x105
    (white paper, black ink), 20 drawings for each of consecutive character ids CCCC."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataFormatError(f"{path}: not a readable zip archive ({err})") from err
    with zf:
        _check_members(zf, path)
        pngs = sorted(n for n in zf.namelist() if n.lower().endswith(".png"))
        where = {}  # PNG path -> (character id, drawing index 1..20)
        for name in pngs:
            m = _PNG_NAME.search(name)
            if m is None:
                raise DataFormatError(f"{path}: {name}: not named CCCC_DD.png")
            where[name] = (int(m[1]), int(m[2]))
        ids = sorted({c for c, _ in where.values()})
        if not ids or ids != list(range(ids[0], ids[0] + len(ids))):
            raise DataFormatError(f"{path}: character ids are not consecutive (found {len(ids)} ids)")
        drawings = set(where.values())
        if len(drawings) != len(where) or len(where) != len(ids) * _DRAWINGS:
            raise DataFormatError(
                f"{path}: expected drawings 01..{_DRAWINGS} once each for {len(ids)} characters "
                f"({len(ids) * _DRAWINGS} PNGs), found {len(where)} PNGs ({len(drawings)} distinct)"
            )
        if any(not 1 <= d <= _DRAWINGS for _, d in drawings):
            raise DataFormatError(f"{path}: drawing index outside 01..{_DRAWINGS}")
        a = area_matrix()
        images = np.empty((len(ids), _DRAWINGS, _SIDE * _SIDE), np.float32)
        digest = hashlib.sha256()
        bar = tqdm(pngs, desc=f"decoding {path.name}", unit="image", leave=False, disable=len(pngs) < 1000)
        for name in bar:  # sorted path order, as the fingerprint requires
            paper = _decode_png(zf, name, path)  # (105, 105), 1 = paper
            digest.update((paper > 0.5).astype(np.uint8).tobytes())
            c, d = where[name]
            small = a @ (1.0 - paper) @ a.T  # (28, 28) ink, area-averaged
            images[c - ids[0], d - 1] = np.clip(small, 0.0, 1.0).reshape(-1)
    return OmniglotArchive(np.arange(ids[0], ids[-1] + 1), images, digest.hexdigest())


def _check_members(zf: zipfile.ZipFile, path: Path) -> None:
    """Refuse members that could escape a folder (absolute paths, ``..``), symbolic links, and oversized ones."""
    for info in zf.infolist():
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or re.match(r"[A-Za-z]:", name):
            raise DataFormatError(f"{path}: member {name!r} has an absolute path or '..'; refusing the archive")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataFormatError(f"{path}: member {name!r} is a symbolic link; refusing the archive")
        if info.file_size > MAX_PNG_BYTES:
            raise DataFormatError(
                f"{path}: member {name!r} declares {info.file_size:,} bytes, more than an Omniglot PNG may have "
                f"({MAX_PNG_BYTES:,}); refusing the archive"
            )


def _decode_png(zf: zipfile.ZipFile, name: str, path: Path) -> np.ndarray:
    """One PNG as (105, 105) float64, 1 = white paper, 0 = ink; its size is checked before its pixels are read."""
    try:
        with zf.open(name) as member:  # yields at most the declared size, checked by _check_members; CRC-checked
            raw = member.read(MAX_PNG_BYTES + 1)
        with Image.open(io.BytesIO(raw)) as im:
            if im.size != (_ORIG, _ORIG):
                raise DataFormatError(f"{path}: {name}: size {im.size}, expected ({_ORIG}, {_ORIG})")
            # The originals are 1-bit (True = paper); accept 8-bit grey too.
            pixels = np.asarray(im) if im.mode == "1" else np.asarray(im.convert("L")) / 255.0
    except DataFormatError:
        raise
    except (OSError, SyntaxError, ValueError, zlib.error, zipfile.BadZipFile, EOFError, NotImplementedError) as err:
        # NotImplementedError: a member whose compression method (a damaged header byte, say) zipfile cannot read
        raise DataFormatError(f"{path}: {name}: cannot decode PNG ({err})") from err
    return pixels.astype(np.float64, copy=False)
