"""Checkpoints: model, optimizer, schedule position and RNG states in one safetensors file, written atomically.

safetensors holds only tensors and a string-to-string header, so loading a checkpoint can never execute code.
The file is written to a temporary name in the same folder, flushed to disk, then renamed over the old one
(:func:`iwae.util.atomic.atomic_path`): a run killed at any moment leaves the previous checkpoint or the new one,
never half of one. The header also holds a sha256 of everything else in the file (the header's other entries and
every tensor's name, dtype, shape and bytes), checked on load: a file damaged on disk (a flipped bit, a partial
copy) is refused, never loaded. Checkpoints of the first format, which predate the checksum, still load unchecked.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from iwae.util.atomic import atomic_path

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "save_weights", "load_weights", "CHECKPOINT_NAME",
           "WEIGHTS_NAME", "content_digest"]  # fmt: skip

CHECKPOINT_NAME = "checkpoint.safetensors"
_FORMAT = "iwae-checkpoint-2"  # with a checksum; no single flipped bit turns it into the legacy name below
_LEGACY_FORMAT = "iwae-checkpoint-1"  # no checksum
_HEADER_KEYS = {"format", "state", "param_groups", "sha256"}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, damaged, of another format, or holds non-finite parameters."""


def content_digest(header: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the header's entries (but the checksum itself) and of each tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in header.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    tensors: dict[str, torch.Tensor],
) -> None:
    """Write model and optimizer state, extra ``tensors`` (RNG states, permutation) and a JSON ``state``."""
    path = Path(path)
    out: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        out[f"model.{name}"] = value
    opt = optimizer.state_dict()
    for index, per_param in opt["state"].items():
        for key, value in per_param.items():
            out[f"optim.{index}.{key}"] = torch.as_tensor(value)
    for name, value in tensors.items():
        out[f"extra.{name}"] = value
    out = {k: v.detach().contiguous().cpu() for k, v in out.items()}
    header = {
        "format": _FORMAT,
        "state": json.dumps(state),
        "param_groups": json.dumps(opt["param_groups"]),
    }
    header["sha256"] = content_digest(header, out)
    with atomic_path(path) as tmp:
        save_file(out, str(tmp), metadata=header)


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load into ``model`` (and ``optimizer``); return the JSON state and the extra tensors.

    :raises CheckpointError: naming the file and the problem, for anything but a complete, finite checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here (is this a run folder made by `iwae train`?)")
    header, tensors = _read(path, "checkpoint", "; delete it to start over")
    _check_header(path, header, tensors)
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    bad = [k for k, v in model_state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: non-finite values in {bad[:3]}; this checkpoint is unusable")
    device = _load_into(model, model_state, path)
    if optimizer is not None:
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                per_param.setdefault(int(index), {})[name] = value.to(device) if name != "step" else value
        optimizer.load_state_dict({"state": per_param, "param_groups": json.loads(header["param_groups"])})
    extra = {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}
    return json.loads(header["state"]), extra


WEIGHTS_NAME = "model.safetensors"  # an exported model: its weights alone (iwae export)
_WEIGHTS_FORMAT = "iwae-weights-1"


def save_weights(path: str | Path, model: torch.nn.Module) -> None:
    """The model's parameters and buffers alone (no optimiser, no position), with a sha256 of them, atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    header = {"format": _WEIGHTS_FORMAT}
    header["sha256"] = content_digest(header, tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)


def load_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Load :func:`save_weights`' file into ``model``, checked as a checkpoint is (format, sha256, finite, fit).

    :raises CheckpointError: naming the file and the problem.
    """
    path = Path(path)
    header, tensors = _read(path, "weights")
    expected = content_digest({"format": _WEIGHTS_FORMAT}, tensors)
    if header.get("format") != _WEIGHTS_FORMAT or header.get("sha256") != expected:
        raise CheckpointError(f"{path}: not iwae weights, or damaged (format or sha256 does not match)")
    if any(v.is_floating_point() and not torch.isfinite(v).all() for v in tensors.values()):
        raise CheckpointError(f"{path}: non-finite weights")
    _load_into(model, tensors, path)


def _read(path: Path, what: str, advice: str = "") -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The header and the tensors of a safetensors file, or a CheckpointError naming it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        return header, load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable or truncated {what} ({err}){advice}") from err


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> torch.device:
    """``state`` into ``model``, on the model's device (returned), or a CheckpointError saying it does not fit."""
    device = next(model.parameters()).device
    try:
        model.load_state_dict({k: v.to(device) for k, v in state.items()})
    except RuntimeError as err:
        raise CheckpointError(f"{path}: does not fit this model ({err})") from err
    return device


def _check_header(path: Path, header: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a foreign file, and a checkpoint whose content does not match its checksum."""
    fmt = header.get("format")
    if fmt == _LEGACY_FORMAT:
        return
    if fmt != _FORMAT:
        raise CheckpointError(f"{path}: not an iwae checkpoint (format {fmt!r})")
    if set(header) != _HEADER_KEYS or header["sha256"] != content_digest(header, tensors):
        raise CheckpointError(
            f"{path}: damaged on disk (its content does not match the sha256 stored with it); it was not loaded. "
            "Restore it from a backup, or delete it to train the run again from the start"
        )
