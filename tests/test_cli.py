"""The `iwae` command: a full tiny run, evaluate, sample, and one clear line (no traceback) for every error."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import read_json

from iwae.cli import main

TINY = ["--stages", "1", "--pass-scale", "0.02", "--eval-k", "10", "--eval-n", "40", "--curve-k", "10",
        "--curve-n", "20", "--quiet", "--k", "2"]  # fmt: skip


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_train_evaluate_sample_resume(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist", "--layers", "2", "--out", str(run), "--data-dir", data_dir, *TINY]) == 0
    out = capsys.readouterr().out
    assert "test NLL" in out and "active units" in out
    metrics = read_json(run / "metrics.json")
    assert metrics["eval_k"] == 10 and len(metrics["active_units"]) == 2
    assert main(["evaluate", str(run), "--k", "5", "--split", "validation", "--quiet"]) == 0
    assert "validation NLL" in capsys.readouterr().out
    assert main(["sample", str(run), "--n", "16", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert main(["resume", str(run), "--quiet", "--re-evaluate"]) == 0  # a finished run: evaluated again
    assert read_json(run / "metrics.json")["test_nll"] == metrics["test_nll"]


def test_train_with_dreg_estimator_end_to_end(data_dir, tmp_path, capsys):
    """(Also: without --quiet, a run says first what it will do: its training and the evaluation after it.)"""
    run = tmp_path / "run"
    loud = [a for a in TINY if a != "--quiet"]
    assert main(["train", "--estimator", "dreg", "--out", str(run), "--data-dir", data_dir, *loud]) == 0
    out, err = capsys.readouterr()
    assert "test NLL" in out and "training steps took" in out
    assert f"{run}: 1 stage(s), 0.02 passes over 59,600 training images in batches of 20, 60 steps to go; then " \
        "L_10 on 40 test and 40 training images" in err  # fmt: skip
    config, metrics = (read_json(run / name) for name in ("config.json", "metrics.json"))
    assert config["estimator"] == metrics["estimator"] == "dreg" and config["bound"] == "iwae"
    assert 60 < metrics["test_nll"] < 300


def test_missing_data_is_one_clear_line(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "empty"), *TINY])
    assert code == 1
    line = _error_line(capsys)
    assert line.startswith("iwae: error:") and "mnist/train-images-idx3-ubyte.gz" in line


def test_the_data_sets_own_folder_given_as_the_data_directory_is_named_as_such(data_dir, tmp_path, capsys):
    inner = Path(data_dir) / "mnist"
    assert main(["train", "--out", str(tmp_path / "run"), "--data-dir", str(inner), *TINY]) == 1
    assert _error_line(capsys) == f"iwae: error: data set 'mnist' not found in {inner}, but in the folder above it: " \
        f"point --data-dir or IWAE_DATA_DIR at {inner.parent}, the folder that holds mnist's folder"  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_not_a_run_folder(tmp_path, capsys):
    """Each command on a folder that is not a run says what it is instead, and names a next step that works."""
    for command in (["resume", str(tmp_path)], ["evaluate", str(tmp_path)], ["sample", str(tmp_path)]):
        assert main(command) == 1
        assert "is not a run folder (no config.json); make one with `iwae train --out" in _error_line(capsys)
        assert list(tmp_path.iterdir()) == []  # nothing written into it (no lock file)
    for command in ("evaluate", "export"):
        out = ["--out", str(tmp_path / "x")] if command == "export" else []
        assert main([command, str(tmp_path / "nowhere"), *out]) == 1
        assert _error_line(capsys) == f"iwae: error: {tmp_path / 'nowhere'}: no such folder; name a run folder (one " \
            "that `iwae train --out FOLDER` made)"  # fmt: skip
    (tmp_path / "fleet" / "seed-1").mkdir(parents=True)
    (tmp_path / "fleet" / "seed-1" / "config.json").write_text("{}")
    assert main(["evaluate", str(tmp_path / "fleet")]) == 1
    assert f"holds runs, but is not one: name one of them, e.g. {tmp_path / 'fleet' / 'seed-1'}" in _error_line(capsys)
    (tmp_path / "notes.txt").write_text("x")
    assert main(["evaluate", str(tmp_path)]) == 1
    line = _error_line(capsys)
    assert "is not a run folder (no config.json); name one that `iwae train" in line and "make one" not in line


def test_unwritable_output_folder(data_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["train", "--out", str(blocker / "run"), "--data-dir", data_dir, *TINY]) == 1
    assert "cannot write the run folder" in _error_line(capsys)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--dataset", "cifar", "--out", "x"], "unknown choice 'cifar'; choose one of mnist, omniglot"),
        (["train", "--dataset", "mnsit", "--out", "x"], "--dataset: unknown choice 'mnsit'; did you mean 'mnist'?"),
        (["train", "--layers", "3", "--out", "x"], "--layers: unknown choice '3'; choose one of 1, 2"),
        (["train", "--schedule", "inf:1e-3", "--out", "x"], "expected positive finite passes and learning rates"),
        (["train", "--k", "0", "--out", "x"], "expected a positive integer, got 0"),
        (["train", "--bound", "miwae", "--m", "0", "--out", "x"], "argument --m: m must be an integer >= 1, got 0"),
        (["train", "--m", "two", "--out", "x"], "argument --m: expected an integer, got 'two'"),
        (
            ["train", "--latent-dims", "2,0", "--out", "x"],
            "--latent-dims: expected comma-separated positive integers, got '2,0'",
        ),
        (["train", "--pass-scale", "-1", "--out", "x"], "expected a positive number, got -1.0"),
        (["train", "--objective", "elbo", "--out", "x"], "unknown choice 'elbo'"),
        (["evaluate"], "the following arguments are required: run_dir"),
    ],
)
def test_bad_arguments_are_refused(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err and "usage:" not in err  # one line, no usage block


def test_bad_combination_is_one_line(tmp_path, capsys):
    assert main(["train", "--bound", "vae", "--estimator", "dreg", "--out", str(tmp_path / "r"), *TINY]) == 1
    assert _error_line(capsys) == (
        "iwae: error: estimator 'dreg' is defined for bound='iwae', 'miwae', 'ciwae', 'piwae' or 'vr' only, got "
        "bound='vae'; use one of those bounds, or an estimator defined for 'vae' (reparam is)"
    )


def test_an_options_former_name_works_and_says_so_in_one_line(tmp_path, capsys):
    assert main(["train", "--objective", "vae", "--estimator", "dreg", "--out", str(tmp_path / "r"), *TINY]) == 1
    warning, error = capsys.readouterr().err.strip().splitlines()
    assert warning == "iwae: FutureWarning: --objective is the former name of --bound; write --bound"
    assert error.startswith("iwae: error: estimator 'dreg' is defined for bound=") and "got bound='vae'" in error


def test_a_former_name_under_warnings_as_errors_is_one_error_line(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as python -W error or PYTHONWARNINGS=error set it
        assert main(["train", "--objective", "iwae", "--out", str(tmp_path / "r"), *TINY]) == 2
    assert _error_line(capsys) == "iwae: error: --objective is the former name of --bound; write --bound"
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_train_compiled_end_to_end(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--compile", "--out", str(run), "--data-dir", data_dir, *TINY]) == 0
    assert "test NLL" in capsys.readouterr().out
    assert read_json(run / "config.json")["compile"] is True
    assert 60 < read_json(run / "metrics.json")["test_nll"] < 300


def test_compile_with_an_estimator_it_does_not_cover_is_one_line(tmp_path, capsys):
    assert main(["train", "--compile", "--estimator", "sample-one", "--out", str(tmp_path / "r"), *TINY]) == 1
    assert "compile is available for the reparam and stl estimators" in _error_line(capsys)


def test_help_documents_every_option():
    out = subprocess.run([sys.executable, "-m", "iwae", "train", "--help"], capture_output=True, text=True).stdout
    for option in ("--dataset", "--layers", "--objective", "--k", "--out", "--data-dir", "--stages", "--pass-scale",
                   "--eval-k", "--seed", "--device", "--estimator", "--compile"):  # fmt: skip
        assert option in out


def test_threads_option_sets_torch_threads(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        assert main(["evaluate", str(tmp_path), "--threads", "1"]) == 1  # not a run folder: fails after parsing
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", "x", "--threads", "0"])
    assert exit_info.value.code == 2 and "expected a positive integer, got 0" in _error_line(capsys)


def test_a_mistyped_choice_is_one_line_without_the_usage(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "mnsit", "--out", "x"])
    assert capsys.readouterr().err.strip().splitlines() == [
        "iwae train: error: --dataset: unknown choice 'mnsit'; did you mean 'mnist'?"
    ]


def test_out_holding_other_files_and_a_config_of_wrong_types_are_refused_leaving_no_run(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own file")
    assert main(["train", "--out", str(mine), "--quiet"]) == 1
    assert "holds other files and is not a run folder" in _error_line(capsys)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"compile": "no"}))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 1
    assert "compile must be true or false, got 'no'" in _error_line(capsys)
    assert not (tmp_path / "run").exists()
    config.write_text(json.dumps({"custom_schedule": [[1, float("inf")]]}))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 1
    assert "positive finite numbers" in _error_line(capsys) and not (tmp_path / "run").exists()


def test_help_states_each_commands_own_defaults(capsys):
    for argv in (["resume", "--help"], ["evaluate", "--help"], ["compare", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert "default for train and resume" not in text
        if argv[0] == "resume":  # resume keeps the run's recorded settings: no config default is shown
            for option in ("--eval-k EVAL_K", "--eval-n N", "--device DEVICE"):
                after = text.split(option, 2)[2]
                assert after.split(" --")[0].endswith("(default: the run's, from its config.json)"), option
            assert "(default 5000)" not in text and "(default all)" not in text and "auto: cuda" not in text
        if argv[0] == "evaluate":
            assert "(default: those metrics.json was measured on" in text


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 8 GiB\n"),
        pytest.param(
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you "
                "tried to allocate 2147483648 bytes. Error code 12 (Cannot allocate memory)"
            ),
            marks=pytest.mark.slow,
        ),
    ],  # fmt: skip
    ids=["cuda", "cpu"],
)
def test_out_of_memory_in_training_is_one_line_and_the_run_resumes(data_dir, tmp_path, capsys, monkeypatch, error):
    from iwae.models.model import IWAE

    run, calls, forward_samples = tmp_path / "run", [], IWAE.forward_samples

    def running_out(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 30:  # in the middle of the run's 60 steps
            raise error
        return forward_samples(self, *args, **kwargs)

    monkeypatch.setattr(IWAE, "forward_samples", running_out)
    assert main(["train", "--out", str(run), "--data-dir", data_dir, *TINY]) == 1
    line = _error_line(capsys)
    first = str(error).splitlines()[0]
    assert line.startswith(f"iwae: error: out of memory ({first}); the run keeps its last checkpoint")
    assert f"continue with `iwae resume {run}`" in line and "a smaller --k or --batch-size needs a new run" in line
    monkeypatch.undo()
    assert main(["resume", str(run), "--quiet"]) == 0
    assert read_json(run / "metrics.json")["passes"] == pytest.approx(0.02, rel=0.01)  # trained to its end


def test_out_of_memory_advice_follows_the_command():
    from argparse import Namespace

    from iwae.cli.commands import _out_of_memory

    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    fleet = _out_of_memory(Namespace(command="train", out="runs/f", seeds="0-3", fleet="auto"), oom)
    assert "`iwae resume runs/f`" in fleet and "fewer --seeds at once, or --fleet off" in fleet
    one_by_one = _out_of_memory(Namespace(command="train", out="runs/f", seeds="0-3", fleet="off"), oom)
    assert "run the same command again" in one_by_one and "--fleet off" not in one_by_one
    assert "run the same command again" in _out_of_memory(Namespace(command="reproduce"), oom)
    assert _out_of_memory(Namespace(command="evaluate"), MemoryError()).startswith("iwae: error: out of memory (")


@pytest.mark.parametrize(
    ("flag", "message"),
    [(["--pruned"], "--pruned is not sharded"), (["--device", "cpu"], "--device is not for a sharded evaluation")],
)
def test_a_sharded_evaluation_refuses_what_it_does_not_shard(tiny_run, capsys, flag, message):
    assert main(["evaluate", str(tiny_run), "--nproc", "2", *flag, "--quiet"]) == 1
    assert message in capsys.readouterr().err
