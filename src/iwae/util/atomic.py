"""Atomic file writes: every file a run, a report or a benchmark writes appears whole or not at all.

Each writer writes a temporary file in the destination's folder, flushes it to disk, gives it the usual
permissions (0644 less the umask, not mkstemp's private 0600), then renames it over the destination. A process
killed at any moment leaves the old file or the new one, never half of one. A full disk raises
:class:`DiskFullError` naming the file, whose previous version is left intact.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["DiskFullError", "is_disk_full", "atomic_path", "write_bytes", "write_text", "write_json"]


class DiskFullError(OSError):
    """No space was left on the device while writing a file; its previous version, if any, is intact."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(f"no space left on device while writing {path} (its previous version, if any, is intact)")
        self.errno = errno.ENOSPC


# How writers that are not Python's own say ENOSPC/EDQUOT: safetensors' Rust writer raises a SafetensorError
# "I/O error: No space left on device (os error 28)", not an OSError.
_DISK_FULL_TEXTS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) says the disk is full, whatever library raised it."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(err) for text in _DISK_FULL_TEXTS):
            return True
        err = err.__cause__ or err.__context__
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``: write it inside the ``with`` block; on success it replaces ``path``.

    For writers that take a file name (safetensors, matplotlib, Pillow). On an exception the temporary file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except Exception as err:  # the writer may be a library's own (safetensors raises its own error type)
        if is_disk_full(err) and not isinstance(err, DiskFullError):
            raise DiskFullError(path) from err
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write(path: str | Path, write: Callable[[Path], Any]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    _write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON with a final newline, atomically."""
    write_text(path, json.dumps(obj, indent=2) + "\n")
