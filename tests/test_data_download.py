"""Downloads against a local HTTP server on 127.0.0.1: files land verified, bad ones are refused and leave
nothing behind, mirrors are tried in turn, and no network gives one clear error."""

from __future__ import annotations

import dataclasses
import errno
import gzip
import hashlib
import http.server
import socket
import struct
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pooch
import pytest
import scipy.io

import iwae.data as data
from iwae.data import resources
from iwae.data.fetching import fetch, git_blob_id

MNIST = ("mnist/train-images-idx3-ubyte.gz", "mnist/t10k-images-idx3-ubyte.gz")


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the site folder; ``/cut/<file>`` announces the whole file but sends half, then hangs up."""

    requests: list[str] = []

    def do_GET(self):
        type(self).requests.append(self.path)
        if not self.path.startswith("/cut/"):
            return super().do_GET()
        body = (Path(self.directory) / self.path.removeprefix("/cut/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(folder served, base URL) of a local HTTP server."""
    folder = tmp_path_factory.mktemp("site")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"  # nothing listens there any more: connection refused


def publish(site, monkeypatch, key: str, content: bytes, served: bytes | None = None, **changes) -> str:
    """Put ``served`` (default ``content``) on the site and point resource ``key`` at it, with the md5 and
    size of ``content``. Returns the file's URL."""
    folder, base = site
    name = Path(key).name
    (folder / name).write_bytes(content if served is None else served)
    fields = {"urls": (base + name,), "known_hash": f"md5:{hashlib.md5(content).hexdigest()}", "size": len(content)}
    monkeypatch.setitem(
        resources.RESOURCES, key, dataclasses.replace(resources.RESOURCES[key], **{**fields, **changes})
    )
    return base + name


def mnist_gz(n: int, seed: int) -> bytes:
    images = np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return gzip.compress(struct.pack(">4I", 0x803, n, 28, 28) + images.tobytes())


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_good_files_land_and_are_not_fetched_twice(site, monkeypatch, tmp_path):
    contents = {MNIST[0]: mnist_gz(410, 0), MNIST[1]: mnist_gz(5, 1)}
    for key, content in contents.items():
        url = publish(site, monkeypatch, key, content)
        monkeypatch.setitem(
            resources.RESOURCES,
            key,
            dataclasses.replace(resources.RESOURCES[key], urls=(site[1] + "missing/" + Path(key).name, url)),
        )
    paths = data.download("mnist", tmp_path)
    assert paths == [tmp_path / k for k in MNIST]
    assert all(p.read_bytes() == contents[k] for p, k in zip(paths, MNIST))
    assert files_under(tmp_path) == ["mnist", *sorted(MNIST)]  # no temporary folder left
    Handler.requests.clear()
    assert data.download("mnist", tmp_path) == paths
    assert data.load("mnist", "validation", tmp_path, download=True, verify=False).shape == (400, 784)
    assert Handler.requests == []  # idempotent: nothing fetched again


@pytest.mark.parametrize("damage", ["corrupted", "truncated", "cut off in transfer"])
def test_bad_download_is_refused_and_leaves_nothing(site, monkeypatch, tmp_path, damage):
    content = mnist_gz(410, 2)
    corrupted = bytearray(content)
    corrupted[len(content) // 2] ^= 0xFF
    served = {"corrupted": bytes(corrupted), "truncated": content[:-1000], "cut off in transfer": content}[damage]
    url = publish(site, monkeypatch, MNIST[0], content, served)
    if damage == "cut off in transfer":
        monkeypatch.setitem(
            resources.RESOURCES,
            MNIST[0],
            dataclasses.replace(resources.RESOURCES[MNIST[0]], urls=(url.replace("/train", "/cut/train"),)),
        )
    reason = (
        "MD5 hash of downloaded file" if damage != "cut off in transfer" else "ChunkedEncodingError.*IncompleteRead"
    )
    with pytest.raises(
        data.DownloadError, match=rf"could not download `mnist/train-images-idx3-ubyte.gz`(.|\n)*{reason}"
    ):
        data.download("mnist", tmp_path)
    assert files_under(tmp_path) == []


def test_size_and_git_blob_are_checked(site, monkeypatch, tmp_path):
    buf = tmp_path / "c.mat"
    scipy.io.savemat(buf, {"data": np.zeros((784, 2)), "testdata": np.zeros((784, 1))})
    content, blob = buf.read_bytes(), git_blob_id(buf)
    buf.unlink()
    key = "omniglot/chardata.mat"
    publish(site, monkeypatch, key, content, known_hash=None, size=None, git_blob="0" * 40)
    with pytest.raises(data.DownloadError, match=f"git blob id {blob}, expected 0000"):
        fetch(key, tmp_path)
    publish(site, monkeypatch, key, content, known_hash=None, size=len(content) + 1, git_blob=blob)
    with pytest.raises(data.DownloadError, match=f"size {len(content):,} bytes, expected {len(content) + 1:,}"):
        fetch(key, tmp_path)
    assert files_under(tmp_path) == []
    publish(site, monkeypatch, key, content, known_hash=None, size=None, git_blob=blob)
    assert fetch(key, tmp_path).read_bytes() == content


def test_omniglot_falls_back_to_the_archives(site, monkeypatch, tmp_path):
    monkeypatch.setitem(
        resources.RESOURCES,
        "omniglot/chardata.mat",
        dataclasses.replace(resources.RESOURCES["omniglot/chardata.mat"], urls=(site[1] + "nowhere.mat",)),
    )
    for part in ("background", "evaluation"):
        publish(site, monkeypatch, f"omniglot/images_{part}.zip", f"zip {part}".encode(), git_blob=None)
    with pytest.warns(UserWarning, match="chardata.mat(.|\n)*Falling back to omniglot/images_background.zip"):
        paths = data.download("omniglot", tmp_path)
    assert [p.name for p in paths] == ["images_background.zip", "images_evaluation.zip"]


def test_no_network_gives_one_clear_error(monkeypatch, tmp_path):
    for key in MNIST:
        monkeypatch.setitem(
            resources.RESOURCES, key, dataclasses.replace(resources.RESOURCES[key], urls=(closed_port_url() + "x.gz",))
        )
    with pytest.raises(data.DataNotFoundError) as info:
        data.load("mnist", "train", tmp_path, download=True)
    message = str(info.value)
    assert isinstance(info.value, data.DownloadError)
    assert message.startswith(f"could not download data set 'mnist' into {tmp_path}:")
    assert "iwae download" not in message and "copy `mnist/train-images-idx3-ubyte.gz` and " in message.lower()
    assert "could not download `mnist/train-images-idx3-ubyte.gz`: no network connection to any of its 1 mirror(s)" in (
        message
    )
    assert "Traceback" not in message and "HTTPConnectionPool" not in message  # one line, not requests' wall of text
    assert files_under(tmp_path) == []


def test_a_recompressed_copy_of_the_right_content_is_accepted_offline(monkeypatch, tmp_path):
    """A user's MNIST gzipped again (another size and md5, the same images) passes by its content fingerprint."""
    contents = {key: mnist_gz(n, seed) for key, n, seed in ((MNIST[0], 410, 8), (MNIST[1], 5, 9))}
    for key, content in contents.items():
        raw = gzip.decompress(content)
        res = dataclasses.replace(resources.RESOURCES[key], urls=(closed_port_url() + "x.gz",),
                                  known_hash=f"md5:{hashlib.md5(content).hexdigest()}", size=len(content),
                                  fingerprint=hashlib.sha256(raw).hexdigest())  # fmt: skip
        monkeypatch.setitem(resources.RESOURCES, key, res)
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))  # recompressed
        assert (tmp_path / key).read_bytes() != content
    assert data.download("mnist", tmp_path) == [tmp_path / k for k in MNIST]  # no download tried: none reachable
    recompressed = tmp_path / MNIST[0]
    recompressed.write_bytes(gzip.compress(gzip.decompress(recompressed.read_bytes())[:-7]))  # other content
    with pytest.raises(data.DownloadError, match="no network connection"):
        data.download("mnist", tmp_path)


def test_read_only_data_dir_is_not_written(monkeypatch, tmp_path, site):
    publish(site, monkeypatch, MNIST[0], mnist_gz(410, 3))
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(data.DownloadError, match="is read-only; choose another data directory"):
        data.download("mnist", tmp_path / "ro")
    assert files_under(tmp_path / "ro") == []


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_download_replaces_a_damaged_local_file(site, monkeypatch, tmp_path, damage):
    contents = {MNIST[0]: mnist_gz(410, 4), MNIST[1]: mnist_gz(5, 5)}
    for key, content in contents.items():
        publish(site, monkeypatch, key, content)
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(content)
    good = contents[MNIST[0]]
    bad = good[:-1000] if damage == "truncated" else good[:100] + bytes([good[100] ^ 0xFF]) + good[101:]
    (tmp_path / MNIST[0]).write_bytes(bad)
    Handler.requests.clear()
    paths = data.download("mnist", tmp_path)
    assert [p.read_bytes() for p in paths] == [contents[k] for k in MNIST]
    assert Handler.requests == ["/" + Path(MNIST[0]).name]  # only the damaged file is fetched again
    assert files_under(tmp_path) == ["mnist", *sorted(MNIST)]  # no temporary file left


def test_a_damaged_uncompressed_copy_is_replaced_too(site, monkeypatch, tmp_path):
    content = mnist_gz(410, 6)
    raw = gzip.decompress(content)
    publish(site, monkeypatch, MNIST[0], content, fingerprint=hashlib.sha256(raw).hexdigest())
    publish(site, monkeypatch, MNIST[1], mnist_gz(5, 7))
    (tmp_path / "mnist").mkdir()
    (tmp_path / MNIST[0].removesuffix(".gz")).write_bytes(raw[:-10])  # an alias of the published file, cut short
    (tmp_path / MNIST[1]).write_bytes(mnist_gz(5, 7))
    paths = data.download("mnist", tmp_path)
    assert paths[0] == tmp_path / MNIST[0] and paths[0].read_bytes() == content
    assert files_under(tmp_path) == ["mnist", *sorted(MNIST)]


def test_a_full_disk_during_a_download_is_one_line_naming_the_command(site, monkeypatch, tmp_path):
    publish(site, monkeypatch, MNIST[0], mnist_gz(410, 10))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pooch, "retrieve", full)
    with pytest.raises(data.DownloadError) as info:
        fetch(MNIST[0], tmp_path)
    assert str(info.value) == (
        f"no space left on device while downloading `{MNIST[0]}` into {tmp_path} (no partial file was kept); "
        "free space and run `iwae download mnist` again"
    )
    assert files_under(tmp_path) == []


@pytest.mark.slow  # decodes an archive twice
def test_an_omniglot_archive_rebuilt_by_its_owner_passes_by_its_decoded_images(data_dir, tmp_path):
    """An Omniglot zip whose bytes differ from the published one (rezipped) is accepted when its decoded images
    are the published ones; one image less and it is refused, saying what it expected."""
    import zipfile

    from iwae.data.fetching import check_local

    key = "omniglot/images_evaluation.zip"
    source = Path(data_dir) / key
    assert check_local(key, source) is None
    copy = tmp_path / "images_evaluation.zip"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(copy, "w", zipfile.ZIP_STORED) as dst:
        names = [n for n in src.namelist() if n.endswith(".png")]
        for name in src.namelist():
            if name != names[-1]:
                dst.writestr(name, src.read(name))
    problem = check_local(key, copy)
    assert problem is not None and "expected" in problem
