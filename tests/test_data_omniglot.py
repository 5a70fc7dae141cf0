"""Omniglot from the original archives, on small synthetic zips: decoding, downsampling, splits, cache."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import iwae.data as data
from iwae.data import omniglot, readers, resources

N_BG, N_EV = 3, 2  # characters in the synthetic background and evaluation archives


def area_reference(ink: np.ndarray) -> np.ndarray:
    """Exact area averaging 105 -> 28, computed another way: 105 * 4 = 420 = 28 * 15, so repeat each pixel
    4x4 and average 15x15 blocks."""
    big = np.kron(ink, np.ones((4, 4)))
    return big.reshape(28, 15, 28, 15).mean(axis=(1, 3))


def synthetic_paper(n_chars: int, seed: int) -> np.ndarray:
    """(C, 20, 105, 105) bool, True = white paper, with a few ink rectangles per drawing."""
    rng = np.random.default_rng(seed)
    paper = np.ones((n_chars, 20, 105, 105), bool)
    for img in paper.reshape(-1, 105, 105):
        for _ in range(3):
            r, c = rng.integers(0, 90, 2)
            h, w = rng.integers(3, 15, 2)
            img[r : r + h, c : c + w] = False
    return paper


def write_zip(path: Path, part: str, paper: np.ndarray, first_id: int, skip: tuple = (), size=105) -> None:
    """An archive laid out as the originals: images_<part>/<alphabet>/characterNN/CCCC_DD.png, 1-bit PNGs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for c, drawings in enumerate(paper):
            for d, img in enumerate(drawings):
                if (c, d) in skip:
                    continue
                buf = io.BytesIO()
                Image.fromarray(img).resize((size, size)).save(buf, format="PNG")  # bool array -> mode "1"
                name = f"images_{part}/Alphabet_{c % 2}/character{c + 1:02d}/{first_id + c:04d}_{d + 1:02d}.png"
                zf.writestr(name, buf.getvalue())


@pytest.fixture
def archives(tmp_path, monkeypatch):
    """A data dir with both archives (5 characters in all); returns (data dir, paper (5, 20, 105, 105))."""
    monkeypatch.setattr(omniglot, "HOLD_OUT", 10)
    monkeypatch.setenv("IWAE_CACHE_DIR", str(tmp_path / "user-cache"))
    paper = synthetic_paper(N_BG + N_EV, seed=0)
    # An upright "L" (bar on the left, foot at the bottom) as drawing 16 of character 1: test image 0.
    paper[0, 15] = True
    paper[0, 15, 15:90, 15:30] = False
    paper[0, 15, 75:90, 15:90] = False
    write_zip(tmp_path / "omniglot/images_background.zip", "background", paper[:N_BG], 1)
    write_zip(tmp_path / "omniglot/images_evaluation.zip", "evaluation", paper[N_BG:], 1 + N_BG)
    return tmp_path, paper


def expected_splits(paper: np.ndarray) -> dict[str, np.ndarray]:
    small = np.stack([[area_reference(1.0 - img) for img in char] for char in paper]).reshape(len(paper), 20, 784)
    pool = small[:, :15].reshape(-1, 784)
    shuffled = pool[np.random.default_rng(0).permutation(len(pool))]
    return {"train": shuffled[:-10], "validation": shuffled[-10:], "test": small[:, 15:].reshape(-1, 784)}


def load_all(root: Path) -> dict[str, np.ndarray]:
    return {s: data.load("omniglot", s, root, verify=False).numpy() for s in data.SPLITS}


def test_area_matrix_is_exact_area_averaging():
    a = readers.area_matrix()
    assert a.shape == (28, 105)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, atol=1e-12)
    ink = np.random.default_rng(1).random((105, 105))
    np.testing.assert_allclose(a @ ink @ a.T, area_reference(ink), atol=1e-12)


def test_archives_give_inverted_downsampled_upright_splits(archives):
    root, paper = archives
    got = load_all(root)
    want = expected_splits(paper)
    assert {s: x.shape for s, x in got.items()} == {"train": (65, 784), "validation": (10, 784), "test": (25, 784)}
    for split in data.SPLITS:
        np.testing.assert_allclose(got[split], want[split], atol=1e-6)
    test0 = got["test"][0].reshape(28, 28)
    cols, rows = test0.sum(0), test0.sum(1)
    assert cols[:14].sum() > 2 * cols[14:].sum() and rows[14:].sum() > 1.5 * rows[:14].sum()  # upright L
    assert test0.max() == pytest.approx(1.0) and got["test"].min() == 0.0  # ink = 1, paper = 0


def test_cache_is_written_to_the_data_dir_and_reused(archives, monkeypatch):
    root, _ = archives
    first = load_all(root)
    cached = list((root / "omniglot").glob("omniglot28_*.npz"))
    assert len(cached) == 1
    assert not list((root / "omniglot").glob(".omniglot28-*"))  # no temporary file left

    def no_decoding(path):
        raise AssertionError("archives decoded again despite the cache")

    monkeypatch.setattr(omniglot, "read_omniglot_zip", no_decoding)
    for split, x in load_all(root).items():
        np.testing.assert_array_equal(x, first[split])


def test_read_only_data_dir_caches_in_the_user_cache_dir(archives):
    root, _ = archives
    folder = root / "omniglot"
    before = sorted(p.name for p in folder.iterdir())
    folder.chmod(0o555)
    try:
        load_all(root)
        assert sorted(p.name for p in folder.iterdir()) == before
    finally:
        folder.chmod(0o755)
    assert len(list((root / "user-cache/omniglot").glob("omniglot28_*.npz"))) == 1


def test_corrupt_cache_is_rebuilt_with_a_warning(archives):
    root, paper = archives
    load_all(root)
    (cache,) = (root / "omniglot").glob("omniglot28_*.npz")
    cache.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable Omniglot cache.*rebuilding it"):
        x = data.load("omniglot", "test", root, verify=False).numpy()
    np.testing.assert_allclose(x, expected_splits(paper)["test"], atol=1e-6)


def test_changed_archive_gets_a_new_cache(archives):
    root, paper = archives
    load_all(root)
    write_zip(root / "omniglot/images_evaluation.zip", "evaluation", ~paper[N_BG:], 1 + N_BG)  # ink <-> paper
    x = data.load("omniglot", "test", root, verify=False).numpy()
    assert len(list((root / "omniglot").glob("omniglot28_*.npz"))) == 2
    np.testing.assert_allclose(x[-5:], 1.0 - expected_splits(paper)["test"][-5:], atol=1e-6)


def test_fingerprint_is_sha256_of_decoded_images_in_path_order(archives):
    root, paper = archives
    archive = readers.read_omniglot_zip(root / "omniglot/images_background.zip")
    digest = hashlib.sha256()
    with zipfile.ZipFile(root / "omniglot/images_background.zip") as zf:
        for name in sorted(zf.namelist()):
            digest.update(np.asarray(Image.open(io.BytesIO(zf.read(name))), dtype=np.uint8).tobytes())
    assert archive.fingerprint == digest.hexdigest()
    np.testing.assert_array_equal(archive.char_ids, [1, 2, 3])
    with pytest.raises(data.ChecksumError, match=r"images_background.zip`: image fingerprint \w+, expected 5136"):
        data.load("omniglot", "train", root)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"skip": ((1, 4),)}, r"expected drawings 01..20 once each for 3 characters \(60 PNGs\), found 59"),
        ({"size": 104}, r"0001_01.png: size \(104, 104\), expected \(105, 105\)"),
        ({"first_id": 5}, "character ids start at 5, expected 4"),
    ],
)
def test_malformed_archives_are_refused(archives, kwargs, message):
    root, paper = archives
    part = "evaluation" if "first_id" in kwargs else "background"
    chars = paper[N_BG:] if part == "evaluation" else paper[:N_BG]
    write_zip(root / f"omniglot/images_{part}.zip", part, chars, **{"first_id": 1, **kwargs})
    with pytest.raises(data.DataFormatError, match=message):
        data.load("omniglot", "train", root, verify=False)


def test_gap_in_character_ids_is_refused(tmp_path):
    path = tmp_path / "a.zip"
    write_zip(path, "background", synthetic_paper(2, seed=2), 1)
    with zipfile.ZipFile(path, "a") as zf:  # a third character, id 9
        buf = io.BytesIO()
        Image.fromarray(np.ones((105, 105), bool)).save(buf, format="PNG")
        for d in range(1, 21):
            zf.writestr(f"images_background/A/character03/0009_{d:02d}.png", buf.getvalue())
    with pytest.raises(data.DataFormatError, match="a.zip: character ids are not consecutive"):
        readers.read_omniglot_zip(path)


def test_not_a_zip_is_refused(tmp_path):
    (tmp_path / "b.zip").write_bytes(b"PK nothing")
    with pytest.raises(data.DataFormatError, match="b.zip: not a readable zip archive"):
        readers.read_omniglot_zip(tmp_path / "b.zip")


def test_published_archive_with_other_fingerprint_warns_instead(archives, monkeypatch):
    """The recorded fingerprints come from a rebuild; an archive byte-identical to the published one (md5)
    whose pixels disagree is reported, not refused."""
    root, _ = archives
    for part in ("background", "evaluation"):
        key = f"omniglot/images_{part}.zip"
        md5 = hashlib.md5((root / key).read_bytes()).hexdigest()
        monkeypatch.setitem(
            resources.RESOURCES, key, dataclasses.replace(resources.RESOURCES[key], known_hash=f"md5:{md5}")
        )
    with pytest.warns(UserWarning, match="is the published archive .md5 matches. but its image fingerprint"):
        assert data.load("omniglot", "test", root).shape == (25, 784)
