"""A long evaluation's progress on disk, so that one stopped (SIGTERM, Ctrl-C, a lost machine) goes on where it was.

L_5000 on MNIST's 59,600 training images takes about half an hour of a CPU core. :func:`resumable_log_likelihood`
scores the images block by block (:func:`iwae.evaluate.iter_log_likelihood`) and, every :data:`SAVE_EVERY`
seconds and at its end, writes the estimates so far with the state of the noise generator to one file, atomically
(:func:`progress_path`). A later call for the same measurement (the same model, images, k, noise stream, device and
threads: its ``identity``) reads that file, puts the generator back where it was and scores only the rest, so its
numbers are those of an evaluation that never stopped, bit for bit. A file of another measurement, or a damaged
one, is not used: the call says why and measures from the start. The file also keeps the seconds spent on the
measurement's kept work, over every process that worked on it (:func:`saved_seconds`; work lost at a stop, since the
last save, is not counted; the sharded evaluation's :class:`BlockProgress` keeps no seconds).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from iwae import __version__
from iwae.evaluate import DEFAULT_CHUNK, LogWeightModel, block_rows, iter_log_likelihood
from iwae.runs.checkpoint import content_digest
from iwae.runs.config import TrainConfig
from iwae.util.atomic import atomic_path
from iwae.util.machine import cpu_model

__all__ = [
    "SAVE_EVERY", "PROGRESS_SUFFIX", "progress_path", "model_digest", "measurement", "resumable_log_likelihood",
    "describe_saved", "saved_seconds", "BlockProgress", "resumable_blocks",
]  # fmt: skip

# Seconds of evaluation between two saves of its progress: a stop loses at most this much work (and one block).
SAVE_EVERY = 60.0
PROGRESS_SUFFIX = ".progress.safetensors"
_FORMAT = "iwae-eval-progress-1"


def progress_path(run_dir: str | Path, split: str, k: int, n: int, what: str) -> Path:
    """Where the progress of one measurement of a run is kept: ``eval-<split>-k<k>-n<n>-<what>.progress.safetensors``
    (``what``: ``nll``, or ``nll_pruned`` for the model without its inactive units)."""
    return Path(run_dir) / f"eval-{split}-k{k}-n{n}-{what}{PROGRESS_SUFFIX}"


def describe_saved(run_dir: str | Path, k: int, sizes: tuple[int, ...]) -> str:
    """The progress of L_k measurements of one of ``sizes`` images kept in a run folder, e.g. ``test nll 10,000 of
    10,000 images, train nll 2,048 of 59,600``, or nothing."""
    parts = []
    for path in sorted(Path(run_dir).glob(f"eval-*-k{k}-*{PROGRESS_SUFFIX}")):
        name = re.fullmatch(r"eval-(\w+)-k\d+-n(\d+)-(\w+)", path.name.removesuffix(PROGRESS_SUFFIX))
        try:
            with safe_open(str(path), framework="pt") as f:
                done = f.get_slice("ll").get_shape()[0]
        except (SafetensorError, OSError, ValueError, KeyError):
            continue
        if name and int(name[2]) in sizes:
            parts.append(f"{name[1]} {name[3]} {done:,} of {int(name[2]):,} images")
    return ", ".join(parts)


def saved_seconds(path: str | Path) -> float:
    """The seconds spent so far on the measurement whose progress ``path`` keeps (0 for no file, an unreadable one,
    or one written before the seconds were kept)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return float((f.metadata() or {}).get("seconds", 0.0))
    except (SafetensorError, OSError, ValueError):
        return 0.0


def model_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's parameters and buffers (names, dtypes, shapes and bytes): which model was measured."""
    return content_digest({}, {k: v.detach().cpu() for k, v in model.state_dict().items()})


def measurement(
    config: TrainConfig, model: torch.nn.Module, x: torch.Tensor, split: str, what: str, k: int
) -> dict[str, Any]:
    """The identity of one L_k measurement of a run: what is measured, on which model, images and noise stream,
    on how many CPU threads."""
    return {
        "split": split, "what": what, "k": k, "n": x.shape[0], "images": content_digest({}, {"x": x.cpu()}),
        "model": model_digest(model), "seed": config.seed, "streams": config.streams, "device": x.device.type,
        "threads": torch.get_num_threads() if x.device.type == "cpu" else None, "flush": config.flush_denormal,
    }  # fmt: skip


class BlockProgress:
    """The progress of an evaluation whose blocks draw their noise from generators of their own (the sharded one,
    :mod:`iwae.analysis.distributed`): block estimates by block index, kept by each process in a file of its own,
    ``<stem>-part<rank>.progress.safetensors``, and read back by every process, whatever the number of processes
    that wrote them. No generator state is needed: a block's noise depends on its index alone."""

    def __init__(self, run_dir: str | Path, stem: str, identity: dict[str, Any], rank: int = 0) -> None:
        self.folder, self.stem, self.rank = Path(run_dir), stem, rank
        self.key = json.dumps({**identity, **_computation(torch.device(identity["device"]))}, sort_keys=True)
        self.saved_at = time.monotonic()

    def files(self) -> list[Path]:
        """The progress files of this measurement, of every process."""
        return sorted(self.folder.glob(f"{self.stem}-part*{PROGRESS_SUFFIX}"))

    def load(self) -> dict[int, torch.Tensor]:
        """Every saved block of this measurement, from every process's file (another's files are ignored)."""
        blocks: dict[int, torch.Tensor] = {}
        for path in self.files():
            header, tensors, unreadable = _read(path)
            if unreadable is None and (not _sealed(header, tensors) or header.get("identity") != self.key):
                unreadable = "it is another measurement's, or damaged"
            if unreadable is not None:
                _discard(path, unreadable, "its blocks are scored again")
                continue
            blocks.update({int(name.removeprefix("block.")): value for name, value in tensors.items()})
        return blocks

    def save(self, blocks: dict[int, torch.Tensor], force: bool = False) -> None:
        """This process's blocks, every :data:`SAVE_EVERY` seconds (or now with ``force``)."""
        if not blocks or not (force or time.monotonic() - self.saved_at >= SAVE_EVERY):
            return
        tensors = {f"block.{b}": v.double() for b, v in blocks.items()}
        _write(self.folder / f"{self.stem}-part{self.rank}{PROGRESS_SUFFIX}", self.key, tensors)
        self.saved_at = time.monotonic()

    def remove(self) -> None:
        """Remove every process's file (once the result is written)."""
        for path in self.files():
            path.unlink(missing_ok=True)


def resumable_log_likelihood(
    model: LogWeightModel,
    x: torch.Tensor,
    k: int,
    generator: torch.Generator,
    path: str | Path,
    identity: dict[str, Any],
    *,
    bar: tqdm | None = None,
    flush_denormal: bool = True,
) -> torch.Tensor:
    """:func:`iwae.evaluate.log_likelihood` of ``x`` (floating, the model's dtype) with ``generator``, its progress
    kept in ``path``: continued from there when the file holds the same ``identity`` (a JSON-able description of
    the measurement: what was measured, on which model, images and stream, on how many threads) and was written by
    the same code on the same kind of machine (the versions of iwae and torch, the CPU or GPU model and the blocks'
    layout are added to ``identity``: another would draw or sum in another order).

    The samples are counted on ``bar`` (those scored before the stop too). The file stays when the estimates are
    complete (a caller that stops before using them finds them there); the caller removes it once their result is
    written.
    """
    if not x.dtype.is_floating_point:
        raise TypeError(f"x is {x.dtype}; cast the images to the model's floating dtype first")
    rows = block_rows(x.shape[0], k)

    def scored(start: int) -> Iterator[tuple[int, torch.Tensor]]:
        estimates = iter_log_likelihood(model, x, k, generator=generator, start=start, bar=bar,
                                        flush_denormal=flush_denormal)  # fmt: skip
        with closing(estimates):
            yield from ((first, estimate.ll) for first, estimate in estimates)

    key = {**identity, "rows": rows}
    return resumable_blocks(x, rows, generator, path, key, scored, bar=bar, per_example=k).to(x.dtype)


def resumable_blocks(
    x: torch.Tensor,
    rows: int,
    generator: torch.Generator,
    path: str | Path,
    identity: dict[str, Any],
    scored: Callable[[int], Iterator[tuple[int, torch.Tensor]]],
    *,
    bar: tqdm | None = None,
    per_example: int = 1,
) -> torch.Tensor:
    """Per-example float64 estimates of ``x`` computed block by block by ``scored(start)`` (``(first row,
    estimates)`` pairs from row ``start`` on, each block of ``rows`` examples drawing from ``generator``), kept in
    ``path`` as :func:`resumable_log_likelihood` keeps its own (which is this for L_k; ``iwae ais`` is another):
    continued from there when the file holds the same ``identity`` and was written by the same code on the same kind
    of machine. ``bar`` is advanced ``per_example`` for each example scored before a stop."""
    path = Path(path)
    key = json.dumps({**identity, **_computation(x.device)}, sort_keys=True)
    ll = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    initial, began = generator.get_state(), time.monotonic()
    start, before = _restore(path, key, ll, generator)  # before: the seconds of the processes before this one
    if start % max(rows, 1) and start != x.shape[0]:  # not where one of this layout's blocks ends
        generator.set_state(initial)
        start, before = _discard(path, "its estimates end inside a block"), 0.0
    if bar is not None and start:
        bar.update(start * per_example)
    saved = time.monotonic()
    with closing(scored(start)) as blocks:
        for first, estimate in blocks:
            stop = first + estimate.shape[0]
            ll[first:stop] = estimate
            if stop == x.shape[0] or time.monotonic() - saved >= SAVE_EVERY:
                seconds = before + time.monotonic() - began
                _write(path, key, {"ll": ll[:stop], "generator": generator.get_state()}, seconds)
                saved = time.monotonic()
    return ll


def _computation(device: torch.device) -> dict[str, Any]:
    """What besides the measurement fixes its last digits: the code, torch, the chunk size and the processor."""
    if device.type == "cuda":
        processor = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    else:
        processor = f"{cpu_model()}, {torch.backends.cpu.get_cpu_capability()}"
    return {"iwae": __version__, "torch": torch.__version__, "chunk_size": DEFAULT_CHUNK, "processor": processor}


def _write(path: Path, key: str, tensors: dict[str, torch.Tensor], seconds: float | None = None) -> None:
    """Estimates (and a generator's state), with the measurement's identity, the ``seconds`` spent on it so far if
    given, and a sha256 of all, atomically; the float estimates must be finite."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point()):
        raise FloatingPointError("non-finite log-likelihood estimates; the model is diverged")
    header = {"format": _FORMAT, "identity": key}
    if seconds is not None:
        header["seconds"] = repr(float(seconds))
    header["sha256"] = content_digest(header, tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor], str | None]:
    """A progress file's header and tensors, or why it cannot be read (None: it was read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        return header, load_file(str(path)), None
    except (SafetensorError, OSError, ValueError) as err:
        return {}, {}, f"it is unreadable or truncated ({err})"


def _sealed(header: dict[str, str], tensors: dict[str, torch.Tensor]) -> bool:
    """Whether a file read is of this format and its content matches its sha256 (:func:`_write`)."""
    check = content_digest({k: v for k, v in header.items() if k != "sha256"}, tensors)
    return header.get("format") == _FORMAT and header.get("sha256") == check


def _restore(path: Path, key: str, ll: torch.Tensor, generator: torch.Generator) -> tuple[int, float]:
    """Fill the start of ``ll`` from ``path`` and set ``generator`` to the state saved with it, if the file holds
    the progress of this very measurement; return how many examples it held (0: measure from the start) and the
    seconds spent on them."""
    if not path.is_file():
        return 0, 0.0
    header, tensors, unreadable = _read(path)
    if unreadable is not None:
        return _discard(path, unreadable), 0.0
    if header.get("format") != _FORMAT or set(tensors) != {"ll", "generator"}:
        return _discard(path, "it is not an evaluation's progress"), 0.0
    if not _sealed(header, tensors):
        return _discard(path, "it is damaged (its content does not match its sha256)"), 0.0
    if header.get("identity") != key:
        return _discard(path, f"it is another measurement's ({_difference(header.get('identity'), key)})"), 0.0
    saved = tensors["ll"]
    if saved.dtype != torch.float64 or saved.dim() != 1 or saved.shape[0] > ll.shape[0]:
        return _discard(path, "its estimates are not one float64 per image"), 0.0
    generator.set_state(tensors["generator"])
    ll[: saved.shape[0]] = saved.to(ll.device)
    print(f"{path.name}: continuing from {saved.shape[0]:,} of {ll.shape[0]:,} images scored", file=sys.stderr)
    return saved.shape[0], float(header.get("seconds", 0.0))


def _discard(path: Path, why: str, then: str = "measuring from the start") -> int:
    print(f"{path.name} is not used: {why}; {then}", file=sys.stderr)
    return 0


def _difference(saved: str | None, key: str) -> str:
    """Which entries of the identity differ, e.g. ``threads 2, now 1``."""
    try:
        old = json.loads(saved or "")
    except json.JSONDecodeError:
        return "unreadable identity"
    new = json.loads(key)
    differ = [f"{name} {old.get(name)}, now {new.get(name)}" for name in sorted(new) if old.get(name) != new[name]]
    return "; ".join(differ) or "its entries differ"
