"""A disk that fills up for real: a small tmpfs as the run folder's file system, filled at a checkpoint, at the final
evaluation and during a fleet's two-phase checkpoint; then space is freed and the run continued to the
uninterrupted run's numbers. Needs root to mount the tmpfs (CI runs as root); elsewhere it skips, saying why.
tests/test_faults.py keeps the simulated faults that a real file system cannot stage (a file cut half-way)."""

from __future__ import annotations

import errno
import functools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TINY
from test_faults import _no_temporaries, _same_run

import iwae.data
import iwae.fleets.fleet_train
import iwae.runs.checkpoint
import iwae.runs.evaluate_run
import iwae.runs.train
from iwae.cli import main
from iwae.fleets.fleet_train import MANIFEST_NAME
from iwae.runs import rundir
from iwae.runs.config import TrainConfig

# A small model (its checkpoint about 170 kB), two stages, a checkpoint at every check (every 50 steps).
SMALL = {**TINY, "latent_dims": [2], "q_hidden": [[8]], "p_hidden": [[8]], "pass_scale": 0.01, "eval_n": 20}


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(fs: Path) -> Path:
    """Take every free byte of ``fs`` with a file; the file (delete it to free the space)."""
    filler = fs / "filler"
    with open(filler, "ab") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return filler


def _filled_at(setattr, fs: Path, where: str, n: int) -> list[Path]:
    """Fill ``fs`` just before the n-th ``where`` event: a checkpoint write, or a write of ``metrics.json``."""
    save_file, write_json, count, fillers = iwae.runs.checkpoint.save_file, iwae.runs.evaluate_run.write_json, [0], []

    def event(kind: str) -> None:
        if kind == where:
            count[0] += 1
            if count[0] == n:
                fillers.append(_fill(fs))

    setattr(iwae.runs.checkpoint, "save_file", lambda *a, **k: (event("checkpoint"), save_file(*a, **k))[1])
    setattr(iwae.runs.evaluate_run, "write_json", lambda path, obj: (event(Path(path).name), write_json(path, obj))[1])
    return fillers


@pytest.fixture
def config(data_dir: str, monkeypatch) -> TrainConfig:
    monkeypatch.setattr(iwae.data, "load", functools.cache(iwae.data.load))  # read MNIST once
    return TrainConfig(**{**SMALL, "data_dir": data_dir})


@pytest.mark.parametrize(("where", "n"), [("checkpoint", 2), ("metrics.json", 1)])
def test_a_disk_filling_up_stops_the_run_in_one_line_and_resume_ends_with_its_numbers(
    config, small_fs, tmp_path, monkeypatch, capsys, where, n
):
    iwae.runs.train.train_and_evaluate(tmp_path / "straight", config, progress=False)
    run = small_fs / "run"
    with monkeypatch.context() as m:
        fillers = _filled_at(m.setattr, small_fs, where, n)
        m.setattr("iwae.cli.commands.config_from_args", lambda args, path: config)
        assert main(["train", "--out", str(run), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    written = run / ("checkpoint.safetensors" if where == "checkpoint" else "metrics.json")
    assert err == [
        f"iwae: error: no space left on device while writing {written} (its previous version, if any, is intact); "
        f"free space and run `iwae resume {run}`"
    ]
    _no_temporaries(run)
    fillers[0].unlink()  # space freed
    assert main(["resume", str(run), "--quiet"]) == 0
    _same_run(tmp_path / "straight", run)


@pytest.mark.slow  # seconds: the default run stays under 3 minutes
def test_a_fleet_filling_the_disk_in_its_two_phase_checkpoint_resumes_to_the_same_numbers(
    config, small_fs, tmp_path, monkeypatch
):
    configs = [config.replace(curve_k=0, seed=0), config.replace(curve_k=0, seed=1, bound="vae")]
    straight = [tmp_path / "straight" / f"seed-{c.seed}" for c in configs]
    iwae.fleets.fleet_train.train_fleet_and_evaluate(straight, tmp_path / "straight" / MANIFEST_NAME, configs,
                                              mode="loop", progress=False)  # fmt: skip
    dirs = [small_fs / "fleet" / f"seed-{c.seed}" for c in configs]
    with monkeypatch.context() as m:
        fillers = _filled_at(m.setattr, small_fs, "checkpoint", 4)  # the second run's pending file, second time
        with pytest.raises(rundir.RunError, match=r"no space left on device while writing .*seed-1/checkpoint\.next"):
            iwae.fleets.fleet_train.train_fleet_and_evaluate(
                dirs, small_fs / "fleet" / MANIFEST_NAME, configs, mode="loop", progress=False
            )
    fillers[0].unlink()
    iwae.fleets.fleet_train.train_fleet_and_evaluate(dirs, small_fs / "fleet" / MANIFEST_NAME, None, progress=False)
    for a, b in zip(straight, dirs):
        _same_run(a, b)


def test_a_run_folder_without_room_for_two_checkpoints_is_refused_before_training(
    config, small_fs, capsys, monkeypatch
):
    (small_fs / "filler").write_bytes(b"\0" * (3 * 2**20))  # about 1 MiB left: less than two checkpoints and margin
    monkeypatch.setattr("iwae.cli.commands.config_from_args", lambda args, path: config)
    run = small_fs / "run"
    assert main(["train", "--out", str(run), "--quiet"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"iwae: error: {run} has ") and "MiB free, and the run needs about" in line
    assert line.endswith("free space, then start it again") and not run.exists()
