"""Faults around a run folder: a full disk, a damaged checkpoint, a second process, pickles in place of files."""

from __future__ import annotations

import argparse
import errno
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import read_json, tiny_model
from safetensors.torch import save_file

import iwae.runs.checkpoint
import iwae.runs.train
from iwae.cli.reproduce import add_reproduce_arguments, reproduce
from iwae.runs import rundir
from iwae.runs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from iwae.runs.evaluate_run import evaluate_run
from iwae.runs.rundir import RunError
from iwae.util import atomic


def _without_timings(record: dict) -> dict:
    """The record but its timings (``seconds``, ``examples_per_s``, ``train_machines`` ...), which differ run to run."""
    return {k: v for k, v in record.items() if not k.endswith(("seconds", "_per_s", "_machines"))}


def _same_run(a: Path, b: Path) -> None:
    """metrics.json, metrics.jsonl (but timings) and the checkpoint's tensors are identical."""
    assert _without_timings(read_json(a / "metrics.json")) == _without_timings(read_json(b / "metrics.json"))
    assert [_without_timings(r) for r in rundir.read_log(a)] == [_without_timings(r) for r in rundir.read_log(b)]
    ta, tb = (iwae.runs.checkpoint.load_file(str(r / rundir.CHECKPOINT_NAME)) for r in (a, b))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def _no_temporaries(run: Path) -> None:
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- a full disk
def test_disk_full_during_checkpoint_keeps_the_previous_one_and_resumes(tiny_run, tiny_config, tmp_path, monkeypatch):
    """The third checkpoint write fills the disk half-way: the second stays, and the run resumes from it."""
    real, calls = iwae.runs.checkpoint.save_file, {"n": 0}

    def half_then_full(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:
            real(tensors, filename, metadata=metadata)
            Path(filename).write_bytes(Path(filename).read_bytes()[:500])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(iwae.runs.checkpoint, "save_file", half_then_full)
    run = tmp_path / "run"
    message = rf"no space left on device while writing {run}/checkpoint.safetensors .*iwae resume {run}`"
    with pytest.raises(RunError, match=message):
        iwae.runs.train.train_and_evaluate(run, tiny_config, progress=False)
    _no_temporaries(run)
    state, _ = load_checkpoint(run / rundir.CHECKPOINT_NAME, rundir.build_model(tiny_config))
    assert (state["stage"], state["step"]) == (1, 0)  # the second checkpoint: the end of stage 1
    monkeypatch.setattr(iwae.runs.checkpoint, "save_file", real)
    iwae.runs.train.train_and_evaluate(run, progress=False)
    _same_run(tiny_run, run)


@pytest.mark.slow  # a few seconds: the default run stays under 3 minutes
def test_disk_full_during_the_report_writes_nothing_half_and_resumes(tiny_run, tmp_path, monkeypatch):
    """metrics.json fails at fsync: no half file is left, status stays partial, `iwae resume` writes it."""
    run = Path(tiny_run)
    reference = read_json(run / "metrics.json")
    (run / "metrics.json").unlink()
    real_fsync = atomic.os.fsync

    def full(fd):
        if Path(f"/proc/self/fd/{fd}").resolve().name.startswith(".metrics.json-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(RunError, match=rf"writing {run}/metrics.json .*; free space and run `iwae resume {run}`"):
        iwae.runs.train.train_and_evaluate(run, progress=False)
    assert rundir.status(run) == "partial" and not (run / "metrics.json").exists()
    _no_temporaries(run)
    monkeypatch.setattr(atomic.os, "fsync", real_fsync)
    assert _without_timings(iwae.runs.train.train_and_evaluate(run, progress=False)) == _without_timings(reference)


def test_disk_full_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    atomic.write_json(tmp_path / "report.json", {"a": 1})
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(atomic.DiskFullError, match="report.json .its previous version, if any, is intact"):
        atomic.write_json(tmp_path / "report.json", {"a": 2})
    assert read_json(tmp_path / "report.json") == {"a": 1} and len(list(tmp_path.iterdir())) == 1


# ----------------------------------------------------------------------------- a damaged checkpoint
def _small_checkpoint(path: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = tiny_model().float()
    opt = torch.optim.Adam(model.parameters())
    save_checkpoint(path, model, opt, {"stage": 1}, {"perm": torch.arange(5)})
    return model, opt


def test_every_single_bit_flip_of_a_checkpoint_is_refused(tmp_path):
    """One flipped bit in each of 400 random bytes of the file (header and tensors): never loaded silently."""
    path = tmp_path / "checkpoint.safetensors"
    model, opt = _small_checkpoint(path)
    good = path.read_bytes()
    gen = torch.Generator().manual_seed(0)
    for i in torch.randperm(len(good), generator=gen)[:400].tolist():
        blob = bytearray(good)
        blob[i] ^= 1 << int(torch.randint(8, (1,), generator=gen))
        path.write_bytes(bytes(blob))
        with pytest.raises(CheckpointError, match="checkpoint.safetensors: "):
            load_checkpoint(path, model, opt)


def test_damaged_checkpoint_stops_resume_naming_the_file(tiny_run):
    path = tiny_run / rundir.CHECKPOINT_NAME
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x10  # in the middle of some tensor's bytes
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=f"{path}: damaged on disk .* it was not loaded"):
        iwae.runs.train.train_and_evaluate(tiny_run, progress=False)


def test_checkpoint_without_checksum_of_the_first_format_still_loads(tmp_path):
    path = tmp_path / "old.safetensors"
    model, opt = _small_checkpoint(path)
    tensors = iwae.runs.checkpoint.load_file(str(path))
    header = {"format": "iwae-checkpoint-1", "state": json.dumps({"stage": 1}), "param_groups": json.dumps([])}
    header["param_groups"] = json.dumps(opt.state_dict()["param_groups"])
    save_file(tensors, str(path), metadata=header)
    state, extra = load_checkpoint(path, model, opt)
    assert state == {"stage": 1} and torch.equal(extra["perm"], torch.arange(5))


# ----------------------------------------------------------------------------- two processes, one folder
HOLD = "import sys, time; from iwae.runs.rundir import locked\nwith locked(sys.argv[1], 'x'):\n    print('held', flush=True); time.sleep(120)"  # noqa: E501


def test_second_process_is_refused_and_a_killed_holders_lock_is_taken_over(tiny_run):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tiny_run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=rf"{tiny_run} is in use by another process \(PID {holder.pid}\)"):
            iwae.runs.train.train_and_evaluate(tiny_run, progress=False)
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.wait()
    with rundir.locked(tiny_run, "x"):
        assert (tiny_run / rundir.LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_second_reproduction_into_one_folder_is_refused(tmp_path):
    out = tmp_path / "repro"
    parser = argparse.ArgumentParser()
    add_reproduce_arguments(parser)
    args = parser.parse_args(["table1", "--out", str(out), "--datasets", "mnist"])
    with rundir.locked(out, "x"):  # as another `iwae reproduce` would hold it
        with pytest.raises(RunError, match=rf"{out} is in use by another process \(PID {os.getpid()}\)"):
            reproduce(args)


def test_lock_of_a_new_folder_left_empty_removes_it(tmp_path):
    with pytest.raises(ValueError):
        with rundir.locked(tmp_path / "new", "x"):
            raise ValueError("refused before anything was written")
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- loading never runs code
class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("target", [rundir.CONFIG_NAME, rundir.CHECKPOINT_NAME])
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_in_place_of_a_run_file_runs_nothing(tiny_run, tmp_path, target, how):
    marker = tmp_path / "pwned"
    if how == "pickle":
        (tiny_run / target).write_bytes(pickle.dumps(_Evil(marker)))
    else:
        torch.save(_Evil(marker), tiny_run / target)
    error = ValueError if target == rundir.CONFIG_NAME else CheckpointError
    with pytest.raises(error, match=str(tiny_run / target)):
        rundir.load_run(tiny_run)
    with pytest.raises(error):
        evaluate_run(tiny_run, progress=False)
    with pytest.raises((ValueError, CheckpointError)):
        iwae.runs.train.train_and_evaluate(tiny_run, progress=False)
    assert not marker.exists()
