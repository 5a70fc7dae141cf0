"""Loading a trained model in Python and exporting it to share (iwae.runs.sharing, `iwae export`)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import read_json

import iwae
from iwae.cli import main
from iwae.runs.checkpoint import CheckpointError
from iwae.runs.rundir import RunError
from iwae.runs.sharing import export_run


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

    assert f"hours on {describe()} (100%, 0.0 h)." in card  # where the training time went
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
    assert main(["compare", str(tiny_run), str(out), "--quiet"]) == 0
    assert "| A - B (paired) | +0.000 ± 0.000 |" in capsys.readouterr().out
    assert main(["sample", str(out), "--n", "4"]) == 0 and (out / "samples-n4-seed0.png").is_file()


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
