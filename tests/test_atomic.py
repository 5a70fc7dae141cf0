"""iwae.util.atomic: a file is replaced whole or not at all, no temporary file is left, permissions follow the umask."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from iwae.util import atomic


@pytest.fixture
def umask_022():
    """The usual umask for the test, restored afterwards."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writers_write_the_content_and_leave_no_temporary_file(tmp_path):
    atomic.write_bytes(tmp_path / "a.bin", b"\x00\x01\xff")
    atomic.write_text(tmp_path / "b.txt", "grüße\n")
    atomic.write_json(tmp_path / "c.json", {"k": 5, "nll": [85.1, 86.0]})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01\xff"
    assert (tmp_path / "b.txt").read_bytes() == "grüße\n".encode()
    assert (tmp_path / "c.json").read_text() == '{\n  "k": 5,\n  "nll": [\n    85.1,\n    86.0\n  ]\n}\n'
    assert json.loads((tmp_path / "c.json").read_text()) == {"k": 5, "nll": [85.1, 86.0]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.json"]


def test_a_write_replaces_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("a much longer old content\n")
    atomic.write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_path_is_a_hidden_temporary_beside_the_destination(tmp_path):
    dest = tmp_path / "model.safetensors"
    with atomic.atomic_path(dest) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.safetensors-") and tmp.suffix == ".tmp"
        assert tmp != dest and not dest.exists()  # nothing at the destination until the block ends
        tmp.write_bytes(b"weights")
    assert dest.read_bytes() == b"weights" and not tmp.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_an_exception_inside_atomic_path_leaves_the_old_file_and_no_temporary(tmp_path):
    dest = tmp_path / "metrics.json"
    dest.write_text('{"old": true}\n')
    with pytest.raises(RuntimeError, match="killed mid-write"):
        with atomic.atomic_path(dest) as tmp:
            tmp.write_text('{"new": tru')  # half written
            raise RuntimeError("killed mid-write")
    assert dest.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_an_exception_with_no_old_file_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic.atomic_path(tmp_path / "new.png") as tmp:
            tmp.write_bytes(b"\x89PNG")
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    dest = tmp_path / "results.json"
    atomic.write_json(dest, {"a": 1})
    with pytest.raises(TypeError, match="not JSON serializable"):
        atomic.write_json(dest, {"a": object()})  # fails before anything is written
    assert json.loads(dest.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.usefixtures("umask_022")
def test_files_get_0644_under_the_usual_umask_not_mkstemps_0600(tmp_path):
    atomic.write_text(tmp_path / "a.txt", "x")
    with atomic.atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"x")
    assert (_mode(tmp_path / "a.txt"), _mode(tmp_path / "b.bin")) == (0o644, 0o644)


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        atomic.write_text(tmp_path / "private.txt", "x")
        left = os.umask(0o077)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "private.txt") == 0o600
    assert left == 0o077  # the writer left the process umask as it found it
