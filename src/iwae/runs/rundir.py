"""The run folder: every file a training run writes, how it is written, and how it is read back.

| file | written | content |
| --- | --- | --- |
| ``config.json`` | once training can start | every setting (:class:`~iwae.runs.config.TrainConfig`) |
| ``metrics.jsonl`` | at the end of each pass | stage, lr, passes, training bound, timing; test NLL at stage ends |
| ``checkpoint.safetensors`` | every few minutes, at the end of each stage | model, Adam, position, RNG states |
| ``metrics.json``, ``samples.png``, ``active_units.png``, ``training.png`` | by the final evaluation | results |
| ``test_ll.json`` | by the final evaluation | each scored test image's index and L_k, for paired comparisons |

Every file is written whole or not at all (:mod:`iwae.util.atomic`), but for ``metrics.jsonl``, which grows a line at a
time: on resume it is cut back, atomically, to the lines of the checkpoint's position (:func:`truncate_log`).
A folder is "new" (no ``config.json``), "partial" (created, not yet evaluated) or "done" (:func:`status`).
A folder becomes a run only once its training can start (device, data and ``init_from`` checked), so a failed
start leaves nothing that blocks the retry. ``config.json`` records the data directory as an absolute path; a run
reads its data from ``--data-dir`` if given, else from that directory if it exists, else from ``$IWAE_DATA_DIR``
(else the per-user cache) (:func:`with_data_dir`). ``iwae resume`` may change the settings of
:data:`~iwae.runs.config.RESUMABLE` (:func:`update_config`). A run starting over loses its old results
(:func:`clear_results`).
While a process trains or evaluates a run it holds the folder's ``.lock`` (:func:`locked`).
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from iwae.data.resources import resolve_data_dir
from iwae.models.model import IWAE
from iwae.runs.checkpoint import CHECKPOINT_NAME, WEIGHTS_NAME, load_checkpoint, load_weights, save_checkpoint
from iwae.runs.config import LEGACY, RENAMED, RESUMABLE, TrainConfig, read_config_file
from iwae.runs.errors import RunError
from iwae.runs.own_model import build_own_model
from iwae.util import atomic, streams
from iwae.util.atomic import DiskFullError, is_disk_full
from iwae.util.imports import is_spec, lies_inside

__all__ = [
    "CONFIG_NAME", "LOG_NAME", "CHECKPOINT_NAME", "METRICS_NAME", "SAMPLES_NAME", "ACTIVE_UNITS_NAME",
    "TRAINING_NAME", "PER_IMAGE_NAME", "LOCK_NAME", "RunError", "locked",
    "resolve_device", "build_model", "create", "read_config", "status", "append_log", "truncate_log",
    "read_log", "has_checkpoint", "is_exported", "save_state", "load_state", "load_run", "check_new", "update_config",
    "absolute_data_dir", "with_data_dir", "clear_results", "is_analysis", "PENDING_NAME", "pending_position",
    "commit_pending", "drop_pending",
]  # fmt: skip

CONFIG_NAME = "config.json"
PENDING_NAME = "checkpoint.next.safetensors"  # a fleet's checkpoint of the run, written but not yet committed
LOG_NAME = "metrics.jsonl"
METRICS_NAME = "metrics.json"
FLEET_MANIFEST = "fleet.json"  # in the folder of a fleet's runs (iwae.fleets.fleet_train)
LOCK_NAME = ".lock"  # held (flock) by the process working in the folder; holds its PID
SAMPLES_NAME, ACTIVE_UNITS_NAME, TRAINING_NAME = "samples.png", "active_units.png", "training.png"  # the figures
PER_IMAGE_NAME = "test_ll.json"  # the final evaluation's L_k of each test image it scored


@contextmanager
def locked(folder: str | Path, again: str) -> Iterator[None]:
    """Hold ``folder/.lock`` for the ``with`` block: a second process given the same folder is refused.

    The lock is an ``flock`` on that file, which the kernel releases when its holder exits, however it exits: the
    lock of a killed process is free again at once, and is taken over. The file holds the holder's PID, for the
    message. A full disk inside the block is reported with what to do (free space, then run ``again``). A folder
    made here and left empty but for the lock is removed again.

    :raises RunError: naming the PID of the process that holds the lock.
    """
    folder = Path(folder)
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunError(f"cannot write the run folder {folder}: {err.strerror or err}") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunError(
                f"{folder} is in use by another process (PID {holder}); wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        except RunError:  # already said (by the lock of another run folder of a fleet, say)
            raise
        except DiskFullError as err:
            raise RunError(f"{err}; free space and run `{again}`") from err
        except Exception as err:  # a write outside iwae.util.atomic (metrics.jsonl, a library's own file)
            if not is_disk_full(err):
                raise
            raise RunError(f"no space left on device ({_first_line(err)}) while working in {folder}; free space and "
                           f"run `{again}`") from err  # fmt: skip
    finally:
        os.close(fd)
        if made and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
            (folder / LOCK_NAME).unlink()
            folder.rmdir()


SPACE_MARGIN = 2**20  # bytes beyond two checkpoints: the log, metrics.json, the figures


def check_space(run_dir: str | Path, model: torch.nn.Module, again: str) -> None:
    """Refuse, in one line and before any training, a run folder whose file system cannot hold what the run writes
    next: a checkpoint (the model and Adam's two moments) twice over for a new run, as the new one is written beside
    the old before it replaces it (once for a run that holds one already), and :data:`SPACE_MARGIN` for its log
    and figures.

    :raises RunError: with the free and the needed space, and ``again``, what to do once space is freed.
    """
    where = next(p for p in (Path(run_dir).absolute(), *Path(run_dir).absolute().parents) if p.exists())
    copies = 1 if has_checkpoint(run_dir) else 2
    need = copies * 3 * sum(p.numel() * p.element_size() for p in model.parameters()) + SPACE_MARGIN
    free = shutil.disk_usage(where).free
    if free < need:
        raise RunError(
            f"{where} has {free / 2**20:.1f} MiB free, and the run needs about {need / 2**20:.1f} MiB there (its "
            f"checkpoint twice over, and its log and figures); free space, then {again}"
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``, refused with a hint when unavailable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"device {name!r} requested but CUDA is not available; use --device cpu (device='cpu' in "
                       "Python)")  # fmt: skip
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise RunError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from err


def build_model(config: TrainConfig, output_bias: torch.Tensor | None = None) -> IWAE:
    """The paper's architecture (or the general one the config describes), visible bias from the data mean; or the
    model of one's own that ``config.model`` names (:mod:`iwae.runs.own_model`; no bias set).

    The initial weights are drawn from the ``init`` stream of the config's seed (:mod:`iwae.util.streams`).
    """
    if config.model is not None:
        return build_own_model(config)
    gen = streams.generator(config.seed, "init", scheme=config.streams)
    if config.latent_dims is None:
        return IWAE.paper(layers=config.layers, output_bias=output_bias, generator=gen)
    return IWAE.from_latent_dims(
        config.latent_dims, 784, output_bias, q_hidden=config.q_hidden, p_hidden=config.p_hidden, generator=gen
    )


def status(run_dir: str | Path) -> str:
    """ "done" (evaluated: ``metrics.json`` written), "partial" (created, not evaluated) or "new"."""
    run_dir = Path(run_dir)
    if (run_dir / METRICS_NAME).is_file():
        return "done"
    return "partial" if (run_dir / CONFIG_NAME).is_file() else "new"


def check_new(run_dir: str | Path) -> None:
    """Refuse a folder that already holds a run."""
    if is_exported(run_dir):
        raise RunError(f"{run_dir} holds an exported model; pick another --out")
    if status(run_dir) == "done":
        raise RunError(f"{run_dir} already holds a finished run (trained and evaluated: {METRICS_NAME}); pick another "
                       f"--out, or evaluate it again with `iwae resume {run_dir} --re-evaluate`")  # fmt: skip
    if (Path(run_dir) / CONFIG_NAME).exists():
        raise RunError(f"{run_dir} already holds a run; continue it with `iwae resume {run_dir}` or pick another --out")


def create(run_dir: str | Path, config: TrainConfig) -> None:
    """Make a new run folder holding ``config.json``; refuse a folder that already holds a run."""
    run_dir = Path(run_dir)
    check_new(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(run_dir / CONFIG_NAME, config.to_json())
    except OSError as err:
        raise RunError(f"cannot write the run folder {run_dir}: {err.strerror or err}") from err


def read_config(run_dir: str | Path) -> TrainConfig:
    """The config of the run in ``run_dir``.

    :raises RunError: no run there, or a config this installation refuses (a bound it lacks, a value out of range).
    :raises ValueError: a ``config.json`` that is no JSON object of config keys."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise RunError(_not_a_run(Path(run_dir)))
    with warnings.catch_warnings():  # a parameter its bound ignores was said when the run was made, not each read
        warnings.filterwarnings("ignore", message=".* has no effect on bound")
        values = read_config_file(path)
        _check_outside(values, Path(run_dir))
        try:
            return TrainConfig.from_dict(LEGACY | values)
        except ValueError as err:  # (a bound or an option this installation lacks: a run made by another version)
            raise RunError(f"{path}: {err} (edited by hand, or made by another version of iwae or a fork?)") from err


def _check_outside(values: dict[str, Any], run_dir: Path) -> None:
    """A RunError where the config ``values`` name code of one's own (``MODULE:NAME``: a model, a bound, an
    estimator, under a key's former name too) whose module could be imported from inside ``run_dir``, or from inside
    the folder of the fleet around it (the nearest holding a fleet manifest): a folder one loads (downloaded, say)
    must not bring the code it runs. Checked before the config is built (which builds the model of one's own)."""
    here = run_dir.resolve()
    fleet = next((p for p in here.parents if (p / FLEET_MANIFEST).is_file()), None)  # (the nearest around it)
    for key, spec in values.items():
        key = RENAMED.get(key, key)
        if key in ("model", "bound", "estimator") and is_spec(spec):
            for folder in (here, *([fleet] if fleet else [])):
                if lies_inside(spec, folder):
                    where = "the folder itself" if folder == here else f"its fleet's folder {folder}"
                    raise RunError(f"{run_dir}: its config.json names {key} {spec}, whose module "
                                   f"{spec.split(':')[0]!r} lies inside {where}; a run folder brings no code: keep "
                                   "the module elsewhere, on the import path")  # fmt: skip


def _not_a_run(folder: Path) -> str:
    """Why ``folder`` is not a run folder, and what to name instead."""
    if not folder.is_dir():
        what = "a file, not a folder" if folder.exists() else "no such folder"
        return f"{folder}: {what}; name a run folder (one that `iwae train --out FOLDER` made)"
    runs = sorted(p.name for p in folder.iterdir() if (p / CONFIG_NAME).is_file())
    if runs:  # a fleet's folder (iwae train --seeds), or a folder of runs (iwae reproduce's runs/)
        return f"{folder} holds runs, but is not one: name one of them, e.g. {folder / runs[0]}"
    if any(p.name != LOCK_NAME for p in folder.iterdir()):
        return f"{folder} is not a run folder (no {CONFIG_NAME}); name one that `iwae train --out FOLDER` made"
    return f"{folder} is not a run folder (no {CONFIG_NAME}); make one with `iwae train --out {folder}`"


def append_log(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Add one line (one pass) to ``metrics.jsonl``, on disk before the checkpoint that counts it is written."""
    with open(Path(run_dir) / LOG_NAME, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_log(run_dir: str | Path, n: int) -> int:
    """Keep the first ``n`` lines: those written after the checkpoint we resume from will be written again.

    Returns the lines kept: fewer than ``n`` where the file lost lines the checkpoint counts (a machine that
    crashed before they reached the disk), said in a warning; the run counts from what is there.
    """
    path = Path(run_dir) / LOG_NAME
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    if len(lines) < n:
        warnings.warn(f"{path} holds {len(lines)} lines but the checkpoint counts {n}: the lines of {n - len(lines)} "
                      "pass(es) were lost (a crash before they reached the disk?); the run goes on without them",
                      stacklevel=2)  # fmt: skip
    atomic.write_text(path, "".join(lines[:n]))
    return min(n, len(lines))


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The lines of ``metrics.jsonl`` (none if there is no such file)."""
    path = Path(run_dir) / LOG_NAME
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def save_state(
    run_dir: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    position: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    *,
    pending: bool = False,
) -> None:
    """Checkpoint the run (:func:`iwae.runs.checkpoint.save_checkpoint`): ``position`` in the schedule and ``tensors``.

    ``pending``: write :data:`PENDING_NAME` instead, for :func:`commit_pending` to put in place (a fleet checkpoints
    all its runs first, then commits them, :mod:`iwae.fleets.fleet_train`); the run's own checkpoint stays untouched.
    """
    save_checkpoint(Path(run_dir) / (PENDING_NAME if pending else CHECKPOINT_NAME), model, optimizer, position, tensors)


def pending_position(run_dir: str | Path) -> dict[str, Any] | None:
    """The position recorded in the run's pending checkpoint, or None if it has none (or an unreadable one)."""
    return _position(Path(run_dir) / PENDING_NAME)


def checkpoint_position(run_dir: str | Path) -> dict[str, Any] | None:
    """The position recorded in the run's checkpoint (where ``iwae resume`` goes on from: ``stage``, ``step``, ...),
    or None if it has none (or an unreadable one)."""
    return _position(Path(run_dir) / CHECKPOINT_NAME)


def _position(path: Path) -> dict[str, Any] | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            position = json.loads(f.metadata()["state"])
    except (OSError, KeyError, TypeError, ValueError, SafetensorError):  # (TypeError: a file with no metadata)
        return None
    return position if isinstance(position, dict) else None


def commit_pending(run_dir: str | Path) -> None:
    """Make the pending checkpoint the run's checkpoint (one rename: the old one or the new one, never neither)."""
    os.replace(Path(run_dir) / PENDING_NAME, Path(run_dir) / CHECKPOINT_NAME)


def drop_pending(run_dir: str | Path) -> None:
    """Forget a pending checkpoint that was never committed."""
    (Path(run_dir) / PENDING_NAME).unlink(missing_ok=True)


def load_state(
    run_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load the run's checkpoint into ``model`` (and ``optimizer``); the position and the extra tensors."""
    return load_checkpoint(Path(run_dir) / CHECKPOINT_NAME, model, optimizer)


def is_exported(run_dir: str | Path) -> bool:
    """Whether the folder holds an exported model (``iwae export``: weights alone, no checkpoint)."""
    return (Path(run_dir) / WEIGHTS_NAME).is_file() and not has_checkpoint(run_dir)


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether the run has saved a checkpoint (a run stopped before its first one starts over)."""
    return (Path(run_dir) / CHECKPOINT_NAME).exists()


def absolute_data_dir(data_dir: str | Path | None) -> str:
    """The data directory ``data_dir`` names (:func:`iwae.data.resolve_data_dir`: else ``$IWAE_DATA_DIR``, else
    the per-user cache), as the absolute path a run records."""
    return str(resolve_data_dir(data_dir).resolve())


def with_data_dir(config: TrainConfig, override: str | Path | None = None) -> TrainConfig:
    """The run's config reading its data from ``override`` if given, else from the recorded directory if it
    exists, else from ``$IWAE_DATA_DIR`` (else the per-user cache)."""
    recorded = config.data_dir if config.data_dir and Path(config.data_dir).is_dir() else None
    data_dir = absolute_data_dir(override if override is not None else recorded)
    if override is None and config.data_dir and recorded is None:  # a run moved from another machine, say
        warnings.warn(f"the run's data directory {config.data_dir} no longer exists; its data are read from "
                      f"{data_dir} instead ($IWAE_DATA_DIR, else the per-user cache; --data-dir names another)",
                      stacklevel=2)  # fmt: skip
    return config.replace(data_dir=data_dir)


def update_config(run_dir: str | Path, changes: dict[str, Any]) -> TrainConfig:
    """Change settings of :data:`~iwae.runs.config.RESUMABLE` in the run's ``config.json``; the config after."""
    refused = sorted(set(changes) - set(RESUMABLE))
    if refused:
        raise RunError(f"a run keeps its {', '.join(refused)}; resume may change only {', '.join(RESUMABLE)}")
    config = read_config(run_dir)
    if changes.get("data_dir") is not None:
        changes = {**changes, "data_dir": absolute_data_dir(changes["data_dir"])}
    new = config.replace(**changes)
    if new != config:
        atomic.write_text(Path(run_dir) / CONFIG_NAME, new.to_json())
    return new


def clear_results(run_dir: str | Path) -> None:
    """Remove what an evaluation wrote (``metrics.json``, the figures, ``test_ll.json``, ``eval-*.json`` and the
    progress of one under way) and what the commands that question a model wrote into its folder (``iwae diagnose``,
    ``ais``, ``compare``, ``sample``): the run starts over, and those described the model it had."""
    run_dir = Path(run_dir)
    for path in [run_dir / n for n in (METRICS_NAME, SAMPLES_NAME, ACTIVE_UNITS_NAME, TRAINING_NAME, PER_IMAGE_NAME)]:
        path.unlink(missing_ok=True)
    for path in run_dir.iterdir():
        if path.is_file() and is_analysis(path.name):
            path.unlink()


def is_analysis(name: str) -> bool:
    """Whether a run folder's file named so is one that a command questioning its model wrote (:func:`clear_results`
    lists them)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in _ANALYSES)


# The files of the commands that score or draw from a run's model, in its folder (their names' patterns).
_ANALYSES = (
    "eval-*.json", "eval-*.progress.safetensors", "diagnostics-*.json", "diagnostics-*.png", "ais-*.json",
    "ais-*.progress.safetensors", "bdmc-*.json", "compare-*.json", "samples-n*-seed*.png",
)  # fmt: skip


def load_run(
    run_dir: str | Path, data_dir: str | Path | None = None, device: str | None = None
) -> tuple[TrainConfig, IWAE, dict[str, Any]]:
    """Config (reading its data as :func:`with_data_dir` says), model (on ``device``, default the config's: ``cpu``
    for a run trained on a GPU, on a machine without one) and checkpoint position of a saved run; or of an exported
    model (``iwae export``: its weights alone, no position)."""
    config = with_data_dir(read_config(run_dir), data_dir)
    model = build_model(config).to(resolve_device(device or config.device))
    if is_exported(run_dir):
        load_weights(Path(run_dir) / WEIGHTS_NAME, model)
        return config, model, {}
    position, _ = load_state(run_dir, model)
    return config, model, position
