"""iwae.data on small synthetic files written at run time: readers, splits, errors, binarize, data dirs."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pooch
import pytest
import scipy.io
import torch

import iwae.data as data
from iwae.data import omniglot, readers


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte idx file, written independently of the reader."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def l_shape(side: int = 28) -> np.ndarray:
    """An upright "L": a vertical bar on the left and a foot along the bottom, ink = 1."""
    img = np.zeros((side, side), np.float32)
    s = side // 7
    img[s : side - s, s : 2 * s] = 1.0  # vertical bar, left
    img[side - 2 * s : side - s, s : side - s] = 1.0  # foot, bottom
    return img


def assert_upright_l(img: np.ndarray) -> None:
    """Ink heavier on the left than the right, and at the bottom than the top."""
    cols, rows = img.sum(0), img.sum(1)
    half = len(cols) // 2
    assert cols[:half].sum() > 2 * cols[half:].sum()
    assert rows[half:].sum() > 1.5 * rows[:half].sum()


def write_mnist(root: Path, n_train: int = 500, n_test: int = 30, gz: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
    }
    (root / "mnist").mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        raw = idx_bytes(a)
        (root / "mnist" / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


# ---- idx / MNIST ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_round_trip_and_splits(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    train = arrays["train-images-idx3-ubyte"].reshape(-1, 784) / np.float32(255)
    x = data.load("mnist", "train", tmp_path, verify=False)
    assert x.dtype == torch.float32 and x.shape == (100, 784)
    np.testing.assert_array_equal(x.numpy(), train[:100])
    np.testing.assert_array_equal(data.load("mnist", "validation", tmp_path, verify=False).numpy(), train[100:])
    test = data.load("mnist", "test", tmp_path, verify=False)
    np.testing.assert_array_equal(test.numpy(), arrays["t10k-images-idx3-ubyte"].reshape(-1, 784) / np.float32(255))


def test_idx_keeps_row_major_orientation(tmp_path):
    img = (l_shape() * 255).astype(np.uint8)
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist/train-images-idx3-ubyte").write_bytes(idx_bytes(np.stack([img] * 401)))
    (tmp_path / "mnist/t10k-images-idx3-ubyte").write_bytes(idx_bytes(img[None]))
    assert_upright_l(data.load("mnist", "test", tmp_path, verify=False)[0].reshape(28, 28).numpy())


def test_idx_bad_magic_is_refused():
    raw = bytearray(idx_bytes(np.zeros((2, 28, 28))))
    raw[2] = 0x0D  # float type code instead of unsigned byte
    with pytest.raises(data.DataFormatError, match=r"images\.idx: bad idx magic number 0x00000d03"):
        readers.parse_idx(bytes(raw), "images.idx")


@pytest.mark.parametrize(
    ("cut", "message"),
    [(3, "truncated idx file .3 bytes, no header"), (10, "truncated idx header"), (100, "truncated: header")],
)
def test_idx_truncated_is_refused(cut, message):
    raw = idx_bytes(np.zeros((2, 28, 28)))
    with pytest.raises(data.DataFormatError, match=f"x.idx: {message}"):
        readers.parse_idx(raw[:cut], "x.idx")


def test_idx_trailing_bytes_are_refused():
    with pytest.raises(data.DataFormatError, match="trailing bytes"):
        readers.parse_idx(idx_bytes(np.zeros((2, 28, 28))) + b"\0", "x.idx")


def test_truncated_gzip_is_refused(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "mnist/train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(data.DataFormatError, match="train-images-idx3-ubyte.gz: corrupt or truncated gzip .*; delete "
                       f"that file and run `iwae download mnist --data-dir {tmp_path}`"):  # fmt: skip
        data.load("mnist", "train", tmp_path, verify=False)


def test_mnist_wrong_image_shape_is_refused(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "mnist/t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((3, 27, 28)))))
    with pytest.raises(data.DataFormatError, match=r"expected N x 28 x 28 images, found shape \(3, 27, 28\)"):
        data.load("mnist", "test", tmp_path, verify=False)


def test_mnist_content_checksum_names_file_and_remedy(tmp_path):
    write_mnist(tmp_path)
    with pytest.raises(
        data.ChecksumError,
        match=r"t10k-images-idx3-ubyte.gz`: sha256 of the content \w+, expected 0fa7.*`iwae download mnist`",
    ):
        data.load("mnist", "test", tmp_path)


# ---- amat / binarized MNIST -------------------------------------------------------------------------------


def amat_text(values: np.ndarray, sep: str = " ", end: str = "\n") -> bytes:
    return "".join(sep.join(map(str, row)) + end for row in values).encode()


def test_amat_round_trip_plain_and_gzipped(tmp_path):
    rng = np.random.default_rng(2)
    splits = {s: rng.integers(0, 2, (n, 784), dtype=np.uint8) for s, n in [("train", 7), ("valid", 3), ("test", 2)]}
    (tmp_path / "binarized_mnist").mkdir()
    for s, v in splits.items():
        path = tmp_path / f"binarized_mnist/binarized_mnist_{s}.amat"
        if s == "valid":
            path.with_suffix(".amat.gz").write_bytes(gzip.compress(amat_text(v)))
        else:
            path.write_bytes(amat_text(v))
    for split, part in [("train", "train"), ("validation", "valid"), ("test", "test")]:
        x = data.load("binarized-mnist", split, tmp_path, verify=False)
        np.testing.assert_array_equal(x.numpy(), splits[part].astype(np.float32))
    assert data.is_binary("binarized-mnist") and not data.is_binary("mnist") and not data.is_binary("omniglot")


def test_amat_other_layout_is_parsed_generally():
    values = np.random.default_rng(3).integers(0, 2, (4, 784))
    np.testing.assert_array_equal(readers.parse_amat(amat_text(values, "\t", "\r\n"), "x.amat"), values)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (amat_text(np.full((2, 784), 2)), "values other than 0 and 1"),
        (amat_text(np.zeros((2, 783), int)), r"expected lines of 784 values, found shape \(2, 783\)"),
        (b"0 1 x\n", "not amat text"),
    ],
)
def test_amat_bad_content_is_refused(text, message):
    with pytest.raises(data.DataFormatError, match=f"x.amat: {message}"):
        readers.parse_amat(text, "x.amat")


# ---- chardata.mat ----------------------------------------------------------------------------------------


def save_chardata(path: Path, train: np.ndarray, test: np.ndarray) -> None:
    """Images (N, 28, 28) stored as MATLAB does: one column-major image per column of a 784 x N matrix."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def cols(x):
        return np.stack([img.flatten(order="F") for img in x], axis=1).astype(np.float64)

    scipy.io.savemat(path, {"data": cols(train), "testdata": cols(test), "target": np.zeros((1, len(train)))})


def test_chardata_is_read_upright(tmp_path):
    rng = np.random.default_rng(4)
    train = rng.random((5, 28, 28)) * 0.5
    train[2] = l_shape()
    save_chardata(tmp_path / "c.mat", train, l_shape()[None])
    pool, test = readers.read_chardata(tmp_path / "c.mat")
    assert pool.shape == (5, 784) and test.shape == (1, 784) and pool.dtype == np.float32
    np.testing.assert_allclose(pool, train.reshape(5, 784), atol=1e-7)  # row-major, same order
    assert_upright_l(test[0].reshape(28, 28))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.nan, "'data' contains NaN"),
        (1.5, r"'data' has values outside \[0, 1\]"),
        (-0.1, r"'data' has values outside \[0, 1\] \(min -0.1"),
    ],
)
def test_chardata_bad_values_are_refused(tmp_path, bad, message):
    train = np.zeros((3, 28, 28))
    train[1, 5, 5] = bad
    save_chardata(tmp_path / "c.mat", train, np.zeros((1, 28, 28)))
    with pytest.raises(data.DataFormatError, match=f"c.mat: {message}"):
        readers.read_chardata(tmp_path / "c.mat")


def test_chardata_wrong_layout_is_refused(tmp_path):
    scipy.io.savemat(tmp_path / "a.mat", {"data": np.zeros((783, 4)), "testdata": np.zeros((784, 1))})
    with pytest.raises(data.DataFormatError, match=r"'data' must be a numeric 784 x N matrix.*\(783, 4\)"):
        readers.read_chardata(tmp_path / "a.mat")
    scipy.io.savemat(tmp_path / "b.mat", {"data": np.zeros((784, 4))})
    with pytest.raises(data.DataFormatError, match=r"b.mat: no variable 'testdata' \(found \['data'\]\)"):
        readers.read_chardata(tmp_path / "b.mat")
    (tmp_path / "c.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(data.DataFormatError, match="c.mat: cannot read as a MATLAB"):
        readers.read_chardata(tmp_path / "c.mat")


def test_chardata_split_is_a_seeded_shuffle(tmp_path, monkeypatch):
    monkeypatch.setattr(omniglot, "HOLD_OUT", 4)
    train = np.random.default_rng(5).random((20, 28, 28))
    save_chardata(tmp_path / "omniglot/chardata.mat", train, train[:3])
    shuffled = train.reshape(20, 784)[np.random.default_rng(0).permutation(20)]
    got = {s: data.load("omniglot", s, tmp_path, verify=False).numpy() for s in data.SPLITS}
    np.testing.assert_allclose(got["train"], shuffled[:16], atol=1e-7)
    np.testing.assert_allclose(got["validation"], shuffled[16:], atol=1e-7)
    assert got["test"].shape == (3, 784)
    with pytest.raises(data.ChecksumError, match="chardata.mat`: git blob id .* expected 016a3536"):
        data.load("omniglot", "test", tmp_path)


# ---- binarize --------------------------------------------------------------------------------------------


def test_binarize_draws_bernoulli_of_the_intensity():
    p = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    x = p.expand(20_000, 5)
    xb = data.binarize(x, torch.Generator().manual_seed(0))
    assert xb.shape == x.shape and xb.dtype == x.dtype and xb.device == x.device
    assert set(xb.unique().tolist()) <= {0.0, 1.0}
    sd = (p * (1 - p) / len(x)).sqrt()
    assert ((xb.mean(0) - p).abs() <= 5 * sd + 1e-12).all()  # exact at p = 0 and p = 1
    assert xb[:, 0].eq(0).all() and xb[:, 4].eq(1).all()


def test_binarize_is_seedable_and_fresh_each_call():
    x = torch.rand(64, 784, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(7)
    first, second = data.binarize(x, g), data.binarize(x, g)
    assert not torch.equal(first, second)  # a fresh draw per call
    g.manual_seed(7)
    assert torch.equal(data.binarize(x, g), first)  # same seed, same draw
    assert data.binarize(x.double(), g).dtype == torch.float64


def test_binarize_carries_no_gradient():
    x = torch.full((3, 4), 0.5, requires_grad=True)
    assert not data.binarize(x).requires_grad


def test_binarize_names_raw_pixels():
    pixels = torch.tensor([[0, 128, 255]], dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"got torch.uint8; for 0..255 pixels pass x.float\(\) / 255"):
        data.binarize(pixels)
    with pytest.raises(ValueError, match="got values from 0 to 255; scale them first"):
        data.binarize(pixels.float())


# ---- data directory and errors ---------------------------------------------------------------------------


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("IWAE_DATA_DIR", str(tmp_path / "env"))
    assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert data.resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("IWAE_DATA_DIR")
    assert data.resolve_data_dir() == Path(pooch.os_cache("iwae")).expanduser()


def test_load_reads_the_env_data_dir(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    monkeypatch.setenv("IWAE_DATA_DIR", str(tmp_path))
    assert data.load("mnist", "test", verify=False).shape == (30, 784)


def test_missing_files_error_names_files_place_and_remedy(tmp_path):
    with pytest.raises(data.DataNotFoundError) as info:
        data.load("mnist", "train", tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(
        data.DataNotFoundError,
        match=rf"'mnist' not found in {tmp_path}: expected `mnist/train-images-idx3-ubyte.gz` and "
        r"`mnist/t10k-images-idx3-ubyte.gz` there\. Get it with `iwae download mnist --data-dir .*IWAE_DATA_DIR",
    ):
        data.load("mnist", "train", tmp_path)
    with pytest.raises(
        data.DataNotFoundError,
        match=r"`omniglot/chardata.mat` or `omniglot/images_background.zip` and `omniglot/images_evaluation.zip`",
    ):
        data.load("omniglot", "test", tmp_path)


def test_half_present_data_set_is_missing(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "mnist/t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(data.DataNotFoundError, match="iwae download mnist"):
        data.load("mnist", "train", tmp_path)


def test_unknown_name_or_split_lists_the_choices(tmp_path):
    with pytest.raises(
        ValueError, match="unknown data set 'cifar'; choose one of: 'mnist', 'omniglot', 'binarized-mnist'"
    ):
        data.load("cifar", "train", tmp_path)
    with pytest.raises(ValueError, match="unknown split 'valid'; choose one of: 'train', 'validation', 'test'"):
        data.load("mnist", "valid", tmp_path)
    with pytest.raises(ValueError, match="choose one of"):
        data.is_binary("MNIST")
    assert data.DATASETS == ("mnist", "omniglot", "binarized-mnist")
