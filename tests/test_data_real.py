"""The real data sets in ``$IWAE_DATA_DIR`` (CI: ../shared/data): sizes, values, orientation, known means.

Reference values are from the data directory's README. Skipped only where IWAE_DATA_DIR is unset (every test
asks for the ``data_dir`` fixture of tests/conftest.py); files missing from a directory that is set fail the tests.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import iwae.data as data
from iwae.data.readers import parse_idx, read_bytes


def timed_load(name: str, split: str, data_dir: str) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    x = data.load(name, split, data_dir)
    return x, time.perf_counter() - start


@pytest.fixture(scope="module")
def mnist(data_dir) -> dict[str, torch.Tensor]:
    out = {}
    for split in data.SPLITS:
        out[split], seconds = timed_load("mnist", split, data_dir)
        print(f"load('mnist', {split!r}): {seconds:.2f} s")  # measured, not asserted (-s to see)
    return out


def test_mnist_splits_and_means(mnist):
    assert {s: tuple(x.shape) for s, x in mnist.items()} == {
        "train": (59_600, 784),
        "validation": (400, 784),
        "test": (10_000, 784),
    }
    assert all(x.dtype == torch.float32 and x.min() == 0 and x.max() == 1 for x in mnist.values())
    full_train = torch.cat([mnist["train"], mnist["validation"]]).double()
    assert full_train.mean().item() == pytest.approx(33.3184 / 255, abs=1e-6)  # README: 0.130660
    assert mnist["test"].double().mean().item() == pytest.approx(33.7912 / 255, abs=1e-6)
    assert mnist["train"].double().mean().item() == pytest.approx(0.1307, abs=1e-3)


def test_mnist_digits_are_upright(mnist, data_dir):
    """Mean "1" is a vertical stroke (ink spread more along rows than columns); mean "7" is wider at the top
    (its bar) than at the bottom (its stem); mean "6" has more ink in its lower half (its loop)."""
    labels = parse_idx(read_bytes(Path(data_dir) / "mnist/t10k-labels-idx1-ubyte.gz"), "labels")
    images = mnist["test"].numpy().reshape(-1, 28, 28)
    one, seven, six = (images[labels == digit].mean(0) for digit in (1, 7, 6))
    coords = np.arange(28)

    def spread(profile):
        p = profile / profile.sum()
        return np.sqrt((p * (coords - (p * coords).sum()) ** 2).sum())

    assert spread(one.sum(1)) > 2 * spread(one.sum(0))  # tall and thin
    assert spread(seven[4:12].sum(0)) > 1.4 * spread(seven[16:24].sum(0))  # bar on top, stem below
    assert six[14:].sum() > 1.3 * six[:14].sum()  # loop at the bottom


@pytest.mark.slow  # a few seconds: the default run stays under 3 minutes
def test_binarized_mnist_is_fixed_binary_and_aligned_with_mnist(mnist, data_dir):
    x = {s: data.load("binarized-mnist", s, data_dir) for s in data.SPLITS}
    assert {s: tuple(v.shape) for s, v in x.items()} == {
        "train": (50_000, 784),
        "validation": (10_000, 784),
        "test": (10_000, 784),
    }
    for split, mean in [("train", 0.130562), ("validation", 0.131127), ("test", 0.132512)]:
        assert set(x[split].unique().tolist()) == {0.0, 1.0}
        assert x[split].double().mean().item() == pytest.approx(mean, abs=1e-6)
    assert data.is_binary("binarized-mnist")
    # Its mean image matches grey MNIST's, and not the transposed one: same orientation.
    a, b = x["test"].mean(0).numpy(), mnist["test"].mean(0).numpy()
    corr = np.corrcoef(a, b)[0, 1]
    assert corr > 0.99 and corr > np.corrcoef(a, b.reshape(28, 28).T.ravel())[0, 1] + 0.05


@pytest.fixture(scope="module")
def user_cache(tmp_path_factory) -> Path:
    """A fresh ``$IWAE_CACHE_DIR`` for this module's loads, kept out of the user's own cache dir."""
    return tmp_path_factory.mktemp("iwae-cache")


@pytest.fixture(scope="module")
def omniglot(data_dir, user_cache) -> dict[str, torch.Tensor]:
    """All Omniglot splits, decoded once per module and cached in the data dir or, where that is read-only,
    in ``user_cache``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IWAE_CACHE_DIR", str(user_cache))
        out = {}
        for split in data.SPLITS:
            out[split], seconds = timed_load("omniglot", split, data_dir)
            print(f"load('omniglot', {split!r}): {seconds:.2f} s")  # first one decodes and caches
        _, seconds = timed_load("omniglot", "train", data_dir)
        print(f"load('omniglot', 'train') again, cached: {seconds:.2f} s")
    return out


def has_chardata(data_dir: str) -> bool:
    return (Path(data_dir) / "omniglot/chardata.mat").is_file()


@pytest.mark.slow  # the real archives' decode takes ~9 s; tests/test_data_omniglot.py decodes small ones
def test_omniglot_splits(omniglot, data_dir):
    n_test = 8_070 if has_chardata(data_dir) else 8_115
    assert {s: tuple(x.shape) for s, x in omniglot.items()} == {
        "train": (23_000, 784),
        "validation": (1_345, 784),
        "test": (n_test, 784),
    }
    assert all(x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1 for x in omniglot.values())
    assert 0.02 < omniglot["train"].mean().item() < 0.25  # ink = 1 is the minority


@pytest.mark.slow  # the real archives' decode takes ~9 s; tests/test_data_omniglot.py decodes small ones
def test_omniglot_ink_is_centred(omniglot):
    mean = omniglot["train"].mean(0).reshape(28, 28)
    assert mean[10:18, 10:18].mean() > 3 * mean[:4].mean() and mean[10:18, 10:18].mean() > 3 * mean[:, :4].mean()


@pytest.mark.slow  # the real archives' decode takes ~9 s; tests/test_data_omniglot.py decodes small ones
def test_omniglot_matches_the_lossless_originals(omniglot, data_dir):
    """Test image (c, d) is drawing 16 + d of character c: compare with the README's npz arrays of the 105x105
    originals, inverted and area-averaged independently (repeat 4x4, average 15x15 blocks)."""
    if has_chardata(data_dir):
        pytest.skip("chardata.mat is used, not the archives")
    test = omniglot["test"].numpy().reshape(-1, 5, 784)  # (1623, 5, 784)
    for part, offset in [("background", 0), ("evaluation", 964)]:
        npz = Path(data_dir) / f"omniglot/images_{part}.npz"
        if not npz.is_file():
            pytest.skip(f"{npz} not available")
        paper = np.load(npz)["images"]  # (C, 20, 105, 105) bool, True = paper
        for c, d in [(0, 0), (7, 4), (len(paper) - 1, 2)]:
            ink = np.kron(1.0 - paper[c, 15 + d], np.ones((4, 4))).reshape(28, 15, 28, 15).mean(axis=(1, 3))
            np.testing.assert_allclose(test[offset + c, d], ink.ravel(), atol=1e-6)


@pytest.mark.slow  # the real archives' decode takes ~9 s; tests/test_data_omniglot.py decodes small ones
def test_decoded_omniglot_is_cached_in_the_data_dir_or_else_the_user_cache(omniglot, data_dir, user_cache):
    """The decoded archives are cached beside them where the data dir is writable, else in the user cache dir
    (never written into a read-only data dir); chardata.mat needs no cache at all."""
    folder, elsewhere = Path(data_dir) / "omniglot", user_cache / "omniglot"

    def caches(d: Path) -> list[str]:
        return sorted(p.name for p in d.glob("omniglot28_*.npz")) if d.is_dir() else []

    assert not list(folder.glob(".omniglot28-*")) and not list(elsewhere.glob(".omniglot28-*"))  # no temporaries
    if has_chardata(data_dir):
        assert caches(elsewhere) == []
    elif os.access(folder, os.W_OK) and folder.stat().st_mode & 0o222:  # no write bit: read-only, root or not
        assert len(caches(folder)) >= 1 and caches(elsewhere) == []
    else:
        assert caches(folder) == [] and len(caches(elsewhere)) == 1


def test_binarized_mnist_test_set_is_in_class_order_and_spread_evaluates_all_of_it(data_dir):
    """Its first 1,000 images carry about 30% more ink than the rest (zeros first): evaluating on "the first N"
    would measure one digit; iwae.runs.evaluate_run.spread takes N examples evenly through the split instead."""
    from iwae.runs.evaluate_run import spread

    x = data.load("binarized-mnist", "test", data_dir)
    whole = x.mean().item()
    assert x[:1000].mean().item() > 1.2 * whole
    assert abs(x[spread(x.shape[0], 1000)].mean().item() - whole) < 0.005
