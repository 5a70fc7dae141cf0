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
    for kind, pos, start, stop in _elements(data, _HEADER, len(data), order, path):
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


def _elements(data: bytes, pos: int, end: int, order: str, where: Path | str) -> list[tuple[int, int, int, int]]:
    """(type, tag offset, data offset, offset of the next element) of each element in ``data[pos:end]``, every
    declared length checked against ``end``; matrices' sub-elements checked recursively."""
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
            _elements(data, start, start + length, order, where)
        found.append((kind, pos, start, stop))
        pos = stop
    return found
