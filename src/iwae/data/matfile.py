"""A MATLAB v5 ``.mat`` file checked before scipy reads it: every declared length within the bytes there.

A v5 file is a 128-byte header (text, then the version and the endian mark ``IM``/``MI`` at bytes 124-127)
followed by data elements, each an 8-byte tag (type, length) and that many bytes padded to 8; an element of
at most 4 bytes may pack its tag into 4 bytes. A matrix (``miMATRIX``) holds sub-elements (flags, dimensions,
name, data), a compressed element (``miCOMPRESSED``) a zlib stream of further elements. scipy trusts those
lengths and allocates what a tag claims before reading it; :func:`checked_mat` walks every tag first, inflates
compressed elements (at most ``limit`` bytes in all) and returns an equivalent uncompressed file for scipy.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from iwae.data.resources import DataFormatError

__all__ = ["checked_mat"]

_HEADER = 128
_MATRIX, _COMPRESSED = 14, 15  # element types miMATRIX, miCOMPRESSED
_INT8, _INT32, _UINT32 = 1, 5, 6
# Bytes per value of the numeric element types (miINT8 .. miUINT64; 8 and 10-11 are reserved).
_SIZES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8}
_NUMERIC_CLASSES = range(6, 16)  # mxDOUBLE_CLASS .. mxUINT64_CLASS; cells, structs, objects, chars, sparse refused
_COMPLEX = 0x800


def checked_mat(path: Path, limit: int) -> bytes:
    """The file at ``path`` as an uncompressed MATLAB v5 file, every element's declared length checked.

    :param limit: bytes the decompressed elements may take in all.
    :raises DataFormatError: naming the file and the byte offset of the first inconsistent element.
    """
    data = Path(path).read_bytes()
    if len(data) < _HEADER or data[126:128] not in (b"IM", b"MI"):
        raise DataFormatError(f"{path}: cannot read as a MATLAB v5 .mat file (no v5 header)")
    order = "<" if data[126:128] == b"IM" else ">"
    out = [data[:_HEADER]]
    budget = limit
    for kind, pos, start, stop, _ in _elements(data, _HEADER, len(data), order, path):
        if kind != _COMPRESSED:
            out.append(data[pos:stop])
            continue
        inflater = zlib.decompressobj()
        try:
            inner = inflater.decompress(data[start:stop], budget + 1)
        except zlib.error as err:
            raise DataFormatError(f"{path}: corrupt compressed element at byte {pos} ({err})") from err
        if len(inner) > budget:
            raise DataFormatError(f"{path}: compressed elements inflate to more than {limit:,} bytes")
        budget -= len(inner)
        _elements(inner, 0, len(inner), order, f"{path} (compressed element at byte {pos})")
        out.append(inner)
    return b"".join(out)


def _elements(data: bytes, pos: int, end: int, order: str, where: Path | str) -> list[tuple[int, int, int, int, int]]:
    """(type, tag offset, data offset, offset of the next element, declared length) of each element in
    ``data[pos:end]``, every declared length checked against ``end``; each matrix checked by :func:`_matrix`."""
    found = []
    while pos < end:
        if end - pos < 8:
            raise DataFormatError(f"{where}: truncated element tag at byte {pos}")
        kind, length = struct.unpack(order + "II", data[pos : pos + 8])
        if kind >> 16:  # small data element: length in the upper half, data in the tag's second word
            kind, length, start, stop = kind & 0xFFFF, kind >> 16, pos + 4, pos + 8
            if length > 4:
                raise DataFormatError(f"{where}: small element at byte {pos} declares {length} bytes (at most 4)")
        else:
            start = pos + 8
            if length > end - start:
                raise DataFormatError(
                    f"{where}: element at byte {pos} declares {length:,} bytes, only {end - start:,} remain"
                )
            stop = start + length if kind == _COMPRESSED else min(end, start + -(-length // 8) * 8)
        if kind == _MATRIX:
            _matrix(data, start, start + length, order, f"{where}: matrix at byte {pos}")
        found.append((kind, pos, start, stop, length))
        pos = stop
    return found


def _matrix(data: bytes, start: int, end: int, order: str, where: str) -> None:
    """A real numeric matrix: array flags, dimensions, name, then exactly prod(dims) values of a numeric type.

    scipy's reader trusts a matrix's structure (its class, dimensions and sub-elements) as it trusts lengths, and a
    damaged one can crash it; the data sets need real numeric matrices only, so nothing else is passed on.
    """
    parts = _elements(data, start, end, order, where) if end > start else []
    if len(parts) != 4:
        raise DataFormatError(f"{where}: {len(parts)} sub-elements, expected flags, dimensions, name and data")
    (f_kind, _, f_start, _, f_len), (d_kind, _, d_start, _, d_len), (n_kind, *_), (v_kind, _, _, _, v_len) = parts
    if f_kind != _UINT32 or f_len != 8 or d_kind != _INT32 or d_len < 8 or d_len % 4 or n_kind != _INT8:
        raise DataFormatError(f"{where}: malformed array flags, dimensions or name")
    (flags,) = struct.unpack(order + "I", data[f_start : f_start + 4])
    if flags & 0xFF not in _NUMERIC_CLASSES or flags & _COMPLEX:
        raise DataFormatError(f"{where}: not a real numeric matrix (array flags {flags:#x})")
    dims = struct.unpack(order + f"{d_len // 4}i", data[d_start : d_start + d_len])
    count = 1
    for d in dims:
        if d < 0:
            raise DataFormatError(f"{where}: negative dimension {d}")
        count *= d
    if v_kind not in _SIZES or v_len != count * _SIZES[v_kind]:
        raise DataFormatError(f"{where}: {v_len:,} data bytes of type {v_kind} for dimensions {dims}")
