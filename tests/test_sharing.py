"""Loading a trained model in Python, exporting it to share (iwae.runs.sharing, `iwae export`), and copying an
unfinished run to continue elsewhere (`iwae snapshot`)."""

from __future__ import annotations

import errno
import json
import shutil

import pytest
import torch
from conftest import read_json
from safetensors import safe_open
from test_faults import _same_run

import iwae
import iwae.runs.checkpoint
import iwae.runs.train
from iwae.cli import main
from iwae.runs import rundir
from iwae.runs.checkpoint import CheckpointError
from iwae.runs.config import passes_at, passes_text
from iwae.runs.rundir import RunError
from iwae.runs.sharing import SNAPSHOT_FILES, export_run, snapshot_run


def test_an_exported_model_is_its_runs_model_and_replays_its_numbers(tiny_run, tmp_path, capsys):
    out = tmp_path / "shared"
    assert main(["export", str(tiny_run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "active_units.png", "config.json", "metrics.json", "metrics.jsonl", "model.safetensors",
        "samples.png", "test_ll.json", "training.png"]  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["data_dir"] is None and config["device"] == "auto"  # nothing of this machine
    metrics = read_json(tiny_run / "metrics.json")
    card = (out / "README.md").read_text()
    assert f"Test NLL: {metrics['test_nll']:.2f} ± {metrics['test_nll_sem']:.2f} nats" in card
    assert f"commit {metrics['code']['commit'] or 'unknown'}" in card
    from iwae.util.machine import describe

    assert f"hours on {describe()} (100%, 0.0 h). Evaluated in 0.0 hours on {describe()}." in card  # where time went
    # the same model, loaded from the run folder and from the export
    run, shared = iwae.load_run(tiny_run), iwae.load_run(out)
    assert shared.metrics == run.metrics == metrics and not shared.model.training
    for a, b in zip(run.model.state_dict().values(), shared.model.state_dict().values()):
        assert torch.equal(a, b)
    # `iwae evaluate`, `compare` and `sample` take the exported folder: the same numbers, exactly
    from iwae.runs.evaluate_run import evaluate_run

    test = evaluate_run(out, split="test", pruned=True, progress=False)
    assert (test["nll"], test["nll_sem"], test["nll_pruned"]) == (
        metrics["test_nll"], metrics["test_nll_sem"], metrics["test_nll_pruned"])  # fmt: skip
    assert test["passes"] == metrics["passes"]  # an exported model's passes, as its metrics.json records them
    assert main(["compare", str(tiny_run), str(out), "--quiet"]) == 0
    assert "| A - B (paired) | +0.000 ± 0.000 |" in capsys.readouterr().out
    assert main(["sample", str(out), "--n", "4"]) == 0 and (out / "samples-n4-seed0.png").is_file()


@pytest.mark.slow  # trains the tiny run a second time
def test_the_model_cards_command_trains_the_exported_model_again_bit_for_bit(tiny_run, data_dir, tmp_path):
    """The card says how to make the model again: ``iwae train --config THIS_FOLDER/config.json --out NAME`` (the
    exported config has no machine paths; the data come from IWAE_DATA_DIR) gives the same weights."""
    out = tmp_path / "shared"
    export_run(tiny_run, out)
    card = (out / "README.md").read_text()
    command = f"`iwae train --config THIS_FOLDER/config.json --out {tiny_run.name}` (with the data in `IWAE_DATA_DIR`)"
    assert command in card and f"by `iwae export {tiny_run.name} --out DIR`" in card
    again = tmp_path / "elsewhere" / tiny_run.name
    argv = ["train", "--config", str(out / "config.json"), "--out", str(again), "--data-dir", data_dir, "--no-eval"]
    assert main([*argv, "--quiet", "--threads", "1"]) == 0
    for a, b in zip(iwae.load_run(out).model.state_dict().values(), rundir.load_run(again)[1].state_dict().values()):
        assert torch.equal(a, b)


def test_the_training_time_is_told_by_machine_and_time_before_machines_were_kept_is_not_hidden():
    from iwae.runs.evaluate_run import machines_text, train_machines

    assert train_machines({"train_seconds": 30.0, "train_machines": {"A": 20.0, "B": 10.0}}) == {"A": 20.0, "B": 10.0}
    resumed = train_machines({"train_seconds": 100.0, "train_machines": {"B": 25.0}})  # an older checkpoint resumed
    assert resumed == {"B": 25.0, "not recorded": 75.0}
    assert train_machines({"train_seconds": 100.0}) == {"not recorded": 100.0}
    hours = {"train_seconds": 3600.0, "train_machines": {"B": 900.0, "not recorded": 2700.0}}
    assert machines_text(hours) == "machines not recorded (75%, 0.8 h) and B (25%, 0.2 h)"
    assert machines_text({"train_seconds": 7200.0}) == "machines not recorded (100%, 2.0 h)"  # an older metrics.json


def test_damaged_weights_an_unevaluated_run_and_a_used_folder_are_refused(tiny_run, tmp_path):
    out = export_run(tiny_run, tmp_path / "shared")
    with pytest.raises(RunError, match="exists and is not an empty folder"):
        export_run(tiny_run, out)
    blob = bytearray((out / "model.safetensors").read_bytes())
    blob[-5] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="damaged"):
        iwae.load_run(out)
    (tiny_run / "metrics.json").unlink()
    with pytest.raises(RunError, match="is not evaluated"):
        export_run(tiny_run, tmp_path / "other")


def test_the_package_carries_py_typed_for_other_projects_type_checkers():
    from importlib.resources import files

    assert files("iwae").joinpath("py.typed").is_file()


def test_an_exported_folder_is_not_a_run_to_continue(tiny_run, tmp_path, capsys):
    from iwae.experiments.status import run_states

    out = export_run(tiny_run, tmp_path / "shared")
    assert main(["resume", str(out), "--re-evaluate", "--quiet"]) == 1  # training afresh would erase it
    assert "is an exported model" in capsys.readouterr().err
    assert main(["resume", str(out), "--quiet"]) == 1  # nothing to continue, and no hint that cannot work
    err = capsys.readouterr().err
    assert "is an exported model" in err and f"`iwae evaluate {out}`" in err and "--re-evaluate" not in err
    assert main(["train", "--out", str(out), "--quiet"]) == 1
    assert f"{out} holds an exported model; pick another --out" in capsys.readouterr().err
    with pytest.raises(RunError, match="is an exported model .its weights alone.: there is no training to continue"):
        snapshot_run(out, tmp_path / "snapshot")
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "active_units.png", "config.json", "metrics.json", "metrics.jsonl", "model.safetensors",
        "samples.png", "test_ll.json", "training.png"]  # fmt: skip
    assert run_states(out)[0].state == "exported"
    with pytest.raises(RunError, match="not an empty folder"):
        export_run(tiny_run, out / "README.md")


def test_the_code_version_names_this_checkouts_commit(monkeypatch):
    """metrics.json's ``code``: the commit of the checkout the package runs from (this one, a git clone), read once
    a process: a run that trains for days records the code it loaded, not the commit the checkout reached since."""
    import shutil
    import subprocess
    from pathlib import Path

    from iwae.runs.evaluate_run import code_version

    root = Path(iwae.__file__).resolve().parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not run from a git checkout")
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    version = code_version()
    assert version["commit"] == head and isinstance(version["dirty"], bool)
    assert version["version"] == iwae.__version__

    def no_git(*args, **kwargs):
        raise AssertionError("git read again")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert code_version() == version
    version["commit"] = "changed by a caller"
    assert code_version()["commit"] == head  # each caller gets its own copy


@pytest.mark.slow  # three tiny trainings
def test_a_snapshot_of_an_unfinished_run_continues_elsewhere_exactly(tiny_run, tiny_config, tmp_path, monkeypatch,
                                                                     capsys):  # fmt: skip
    """A run stopped mid-way (the checkpoint of its second pass's end fails, its log line written) is copied as its
    checkpoint stands, then continued from the copy alone: the same run as one trained straight through. A later
    snapshot replaces the earlier one."""
    real = iwae.runs.checkpoint.save_file

    def full_at_the_second_pass_end(tensors, filename, metadata=None):
        if json.loads(metadata["state"])["log_lines"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(iwae.runs.checkpoint, "save_file", full_at_the_second_pass_end)
    run, out = tmp_path / "run", tmp_path / "elsewhere" / "run"
    with pytest.raises(RunError):
        iwae.runs.train.train_and_evaluate(run, tiny_config, progress=False)
    monkeypatch.setattr(iwae.runs.checkpoint, "save_file", real)
    with safe_open(str(run / "checkpoint.safetensors"), "pt") as f:
        counted = json.loads(f.metadata()["state"])
    assert 0 < counted["log_lines"] < len(rundir.read_log(run))  # the log ran ahead of the checkpoint
    assert main(["snapshot", str(run), "--out", str(out)]) == 0
    done = passes_at(tiny_config, counted["stage"], counted["step"])  # as the checkpoint stands, not the log
    assert done < rundir.read_log(run)[-1]["pass"]
    assert f"as its checkpoint stands ({passes_text(done)} passes); continue: iwae resume {out}" in (
        capsys.readouterr().out)  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == sorted(SNAPSHOT_FILES)
    assert read_json(out / "config.json")["data_dir"] is None  # nothing of this machine
    assert rundir.read_log(out) == rundir.read_log(run)[: counted["log_lines"]]
    midway = tmp_path / "midway"
    shutil.copytree(out, midway)
    # the run goes on (its training finished, not evaluated): a second snapshot replaces the first in place
    rundir.update_config(run, {"evaluate": False})
    iwae.runs.train.train_and_evaluate(run, progress=False)
    (out / "diagnostics-test-k20-n50.json").write_text("{}")  # (a question asked of the earlier snapshot: it goes)
    assert main(["snapshot", str(run), "--out", str(out)]) == 0
    assert rundir.read_log(out) == rundir.read_log(run) and len(rundir.read_log(out)) > counted["log_lines"]
    assert sorted(p.name for p in out.iterdir()) == sorted(SNAPSHOT_FILES)
    shutil.rmtree(run)  # the mid-way copy alone goes on
    iwae.runs.train.train_and_evaluate(midway, progress=False)  # data from $IWAE_DATA_DIR, as on another machine
    _same_run(tiny_run, midway)
    # refused, naming what to do: a finished run, a folder inside the run's, a snapshot since resumed (a run of its
    # own now), a folder holding other files, and a damaged checkpoint
    with pytest.raises(RunError, match="is finished; share its model with `iwae export"):
        snapshot_run(tiny_run, tmp_path / "new")
    with pytest.raises(RunError, match="lies in the run's own folder"):
        snapshot_run(out, out / "snapshot")
    with pytest.raises(RunError, match="is a run folder of its own .it holds a .lock: something trained there."):
        snapshot_run(out, midway)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="holds files other than an earlier snapshot's"):
        snapshot_run(out, tmp_path / "used")
    data = bytearray((out / "checkpoint.safetensors").read_bytes())
    data[-1] ^= 1
    (out / "checkpoint.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{out}/checkpoint.safetensors is damaged .*nothing was copied"):
        snapshot_run(out, tmp_path / "new")
    assert not (tmp_path / "new").exists() and (tmp_path / "used" / "notes.txt").read_text() == "mine"
