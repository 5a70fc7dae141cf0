"""Hostile input to the readers: truncated, bit-flipped and lying files raise DataFormatError naming the file,
without hanging and without allocating what a header claims before checking it against the bytes there."""

from __future__ import annotations

import gzip
import io
import stat
import struct
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_data_omniglot import synthetic_paper, write_zip

from iwae.data import omniglot, readers
from iwae.data.resources import DataFormatError

FUZZ = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


def _idx(images: np.ndarray) -> bytes:
    return bytes([0, 0, 8, images.ndim]) + struct.pack(f">{images.ndim}I", *images.shape) + images.tobytes()


IDX = _idx(np.random.default_rng(0).integers(0, 256, (3, 4, 4), dtype=np.uint8))
AMAT = b"".join(b" ".join(b"01"[v : v + 1] for v in row) + b"\n" for row in np.eye(3, 784, dtype=int))


def _chardata(compressed: bool) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(1)
    scipy.io.savemat(buf, {"data": rng.random((784, 2)), "testdata": rng.random((784, 1))}, do_compression=compressed)
    return buf.getvalue()


MATS = {False: _chardata(False), True: _chardata(True)}


def _zip_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        write_zip(Path(d) / "a.zip", "background", synthetic_paper(1, seed=0), 1)
        return (Path(d) / "a.zip").read_bytes()


ZIP = _zip_bytes()


@st.composite
def damaged(draw, data: bytes) -> bytes:
    """``data`` cut at a random length, or with one to three random bits flipped."""
    if draw(st.booleans()):
        return data[: draw(st.integers(0, len(data) - 1))]
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        bit = draw(st.integers(0, 8 * len(out) - 1))
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _read_file(reader, content: bytes, name: str):
    """``reader(path)`` on a temporary file holding ``content``: its result, or the DataFormatError it raised,
    which must name the file."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(content)
        try:
            return reader(path)
        except DataFormatError as err:
            assert name in str(err)
            return err


@FUZZ
@given(damaged(IDX))
def test_damaged_idx_is_read_whole_or_refused(blob):
    try:
        x = readers.parse_idx(blob, "x.idx")
    except DataFormatError as err:
        assert "x.idx" in str(err)
    else:  # a flip inside the pixels, or in an unused corner of the header, is still a valid file
        assert x.dtype == np.uint8 and x.size == len(blob) - 4 - 4 * x.ndim


@FUZZ
@given(damaged(gzip.compress(IDX, mtime=0)))
def test_damaged_gzip_is_read_whole_or_refused(blob):
    out = _read_file(readers.read_bytes, blob, "x.idx.gz")
    assert isinstance(out, DataFormatError) or out == IDX or blob[:2] != b"\x1f\x8b"


@FUZZ
@given(damaged(AMAT))
def test_damaged_amat_is_read_whole_or_refused(blob):
    try:
        x = readers.parse_amat(blob, "x.amat")
    except DataFormatError as err:
        assert "x.amat" in str(err)
    else:
        assert x.shape[1] == 784 and x.max() <= 1


@FUZZ
@given(st.booleans(), st.data())
def test_damaged_chardata_is_read_whole_or_refused(compressed, data):
    blob = data.draw(damaged(MATS[compressed]))
    out = _read_file(readers.read_chardata, blob, "chardata.mat")
    assert isinstance(out, DataFormatError) or all(x.shape[1] == 784 for x in out)


@settings(max_examples=40, deadline=3000)
@given(damaged(ZIP))
def test_damaged_archive_is_read_whole_or_refused(blob):
    out = _read_file(readers.read_omniglot_zip, blob, "images_background.zip")
    assert isinstance(out, DataFormatError) or out.images.shape == (1, 20, 784)


def test_archive_member_of_an_unknown_compression_method_is_refused():
    """A damaged byte in a member's compression method: zipfile raises NotImplementedError, refused as damage."""
    blob = bytearray(ZIP)
    blob[8:10] = (99).to_bytes(2, "little")  # the first local header's method (the central directory's says 8)
    at = blob.index(b"PK\x01\x02")  # the central directory entry of the same member, which zipfile reads
    blob[at + 10 : at + 12] = (99).to_bytes(2, "little")
    out = _read_file(readers.read_omniglot_zip, bytes(blob), "images_background.zip")
    assert isinstance(out, DataFormatError) and "cannot decode PNG" in str(out)


def _small_peak(fn, *args) -> int:
    """Peak bytes traced while ``fn(*args)`` raises DataFormatError."""
    tracemalloc.start()
    try:
        with pytest.raises(DataFormatError) as info:
            fn(*args)
        return tracemalloc.get_traced_memory()[1], str(info.value)
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("dims", "extra"),
    [((2**31, 28, 28), 100), ((2**32 - 1,) * 3, 100), ((2**32 - 1,) * 4, 100), ((2**16,) * 4, 0), ((0,), 100)],
    ids=["2^31 images", "-1 x -1 x -1", "overflows int64", "2^64 = 0 in int64", "zero"],
)
def test_idx_header_claiming_more_than_the_file_is_refused(dims, extra):
    blob = bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + bytes(extra)
    peak, message = _small_peak(readers.parse_idx, blob, "huge.idx")
    assert "huge.idx" in message and "header announces" in message and peak < 100_000


def test_gzip_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(bytes(8 << 20)))  # 8 MiB of zeros in 8 KiB
    with pytest.raises(DataFormatError, match="bomb.gz: gzip data decompresses to more than 1,048,576 bytes"):
        readers.read_bytes(path, limit=1 << 20)


@pytest.mark.parametrize("length", [2**31, 2**32 - 1])
def test_mat_element_claiming_more_than_the_file_is_refused(tmp_path, length):
    blob = bytearray(MATS[False])
    blob[128 + 4 : 128 + 8] = struct.pack("<I", length)  # the first element's length
    (tmp_path / "c.mat").write_bytes(bytes(blob))
    peak, message = _small_peak(readers.read_chardata, tmp_path / "c.mat")
    assert f"c.mat: element at byte 128 declares {length:,} bytes" in message and peak < 10 * len(blob)


def test_mat_bomb_is_refused(tmp_path, monkeypatch):
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"data": np.zeros((784, 1000)), "testdata": np.zeros((784, 1))}, do_compression=True)
    (tmp_path / "c.mat").write_bytes(buf.getvalue())  # 6 MB of zeros in a few KB
    monkeypatch.setattr(readers, "MAX_DECODED", 1 << 20)
    with pytest.raises(DataFormatError, match="c.mat: compressed elements inflate to more than 1,048,576 bytes"):
        readers.read_chardata(tmp_path / "c.mat")


def _archive(path: Path, name: str, data: bytes, mode: int = 0o644) -> None:
    """The one-character synthetic archive with an extra member ``name`` holding ``data``."""
    path.write_bytes(ZIP)
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(info, data, zipfile.ZIP_DEFLATED)


@pytest.mark.parametrize(
    "name", ["../../etc/0002_01.png", "/tmp/0002_01.png", "a/../../0002_01.png", "C:/x/0002_01.png", "a\\..\\b.png"]
)
def test_archive_member_escaping_its_folder_is_refused(tmp_path, name):
    _archive(tmp_path / "a.zip", name, b"x")
    with pytest.raises(DataFormatError, match=r"a.zip: member .* has an absolute path or '\.\.'"):
        readers.read_omniglot_zip(tmp_path / "a.zip")


def test_archive_symlink_member_is_refused(tmp_path):
    _archive(tmp_path / "a.zip", "images_background/link.png", b"/etc/passwd", stat.S_IFLNK | 0o777)
    with pytest.raises(DataFormatError, match="a.zip: member 'images_background/link.png' is a symbolic link"):
        readers.read_omniglot_zip(tmp_path / "a.zip")


def test_archive_member_declaring_a_huge_size_is_refused(tmp_path):
    _archive(tmp_path / "a.zip", "images_background/big.png", bytes(2 << 20))
    with pytest.raises(DataFormatError, match="a.zip: member 'images_background/big.png' declares 2,097,152 bytes"):
        readers.read_omniglot_zip(tmp_path / "a.zip")


def test_archive_member_inflating_past_its_declared_size_is_refused(tmp_path):
    """A zip bomb: the directory says 200 bytes, the deflate stream holds 8 MiB; reading stops at 200 bytes."""
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(io.BytesIO(ZIP)) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, bytes(8 << 20) if info.filename.endswith("_01.png") else src.read(info))
    blob = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header, central directory
        at = blob.find(signature)
        while at >= 0:
            if struct.unpack("<I", blob[at + offset : at + offset + 4])[0] == 8 << 20:
                blob[at + offset : at + offset + 4] = struct.pack("<I", 200)
            at = blob.find(signature, at + 4)
    path.write_bytes(bytes(blob))
    peak, message = _small_peak(readers.read_omniglot_zip, path)
    assert "a.zip: images_background/" in message and "_01.png: cannot decode PNG" in message
    assert peak < 4 << 20


def test_pickled_omniglot_cache_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "cache.npz").write_bytes(_evil_pickle(marker))
    with pytest.raises(DataFormatError, match="cache.npz: unreadable Omniglot cache"):
        omniglot._read_cache(tmp_path / "cache.npz")
    assert not marker.exists()


def _evil_pickle(marker: Path) -> bytes:
    """A pickle whose loading creates ``marker``."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    return pickle.dumps(Evil())
