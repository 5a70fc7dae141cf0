"""A run's life through the command line: a failed start leaves nothing to block the retry, the data directory
and every evaluation setting are recorded, ``iwae resume`` may change them, and a restart clears old results."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from conftest import TINY, read_json

import iwae
import iwae.fleets.fleet
import iwae.runs.evaluate_run
import iwae.runs.train
from iwae.cli import main
from iwae.runs import rundir
from iwae.runs.config import TrainConfig

QUICK = ["--stages", "1", "--pass-scale", "0.01", "--k", "2", "--curve-k", "0", "--quiet"]


def _files(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir()) if run.exists() else []


def test_a_failed_start_leaves_no_run_and_the_retry_works(data_dir, tmp_path, capsys):
    run, bad = tmp_path / "run", tmp_path / "bad"
    (bad / "mnist").mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (bad / "mnist" / name).write_bytes(b"\x1f\x8b not really gzip")
    for data in (tmp_path / "empty", bad):
        assert main(["train", "--out", str(run), "--data-dir", str(data), "--no-eval", *QUICK]) == 1
        assert rundir.CONFIG_NAME not in _files(run)
    assert main(["train", "--out", str(run), "--init-from", str(tmp_path / "nowhere"), "--data-dir", data_dir,
                 "--no-eval", *QUICK]) == 1  # fmt: skip
    assert rundir.CONFIG_NAME not in _files(run) and "nowhere: no such folder" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--data-dir", data_dir, "--no-eval", *QUICK]) == 0
    assert rundir.status(run) == "partial" and rundir.has_checkpoint(run)
    assert main(["train", "--out", str(tmp_path / "big"), "--batch-size", "70000", "--data-dir", data_dir,
                 "--no-eval", *QUICK]) == 1  # fmt: skip
    assert "batch size 70,000 exceeds the 59,600 training images of mnist" in capsys.readouterr().err
    assert rundir.CONFIG_NAME not in _files(tmp_path / "big")
    other = tmp_path / "two-layers"  # a model of another architecture to start from: one line, no run
    assert main(["train", "--out", str(other), "--init-from", str(run), "--layers", "2", "--data-dir", data_dir,
                 "--no-eval", *QUICK]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert f"--init-from {run}: that run's model has another architecture (" in err and "Traceback" not in err
    assert rundir.CONFIG_NAME not in _files(other)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_leaves_no_run(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--device", "cuda", "--data-dir", data_dir, *QUICK]) == 1
    assert "CUDA is not available" in capsys.readouterr().err and rundir.CONFIG_NAME not in _files(run)


def test_resume_may_change_device_data_and_evaluation(data_dir, tmp_path):
    run = tmp_path / "run"
    config = TrainConfig(**{**TINY, "stages": 1, "curve_k": 0}, device="cuda:7", data_dir=str(tmp_path / "gone"))
    rundir.create(run, config)  # a run made elsewhere, stopped before its first checkpoint
    assert main(["resume", str(run), "--device", "cpu", "--data-dir", data_dir, "--eval-k", "5", "--eval-n", "10",
                 "--quiet"]) == 0  # fmt: skip
    saved = read_json(run / rundir.CONFIG_NAME)
    assert (saved["device"], saved["data_dir"], saved["eval_k"], saved["eval_n"]) == (
        "cpu", str(Path(data_dir).resolve()), 5, 10)  # fmt: skip
    assert (read_json(run / rundir.METRICS_NAME)["eval_k"], read_json(run / rundir.METRICS_NAME)["eval_n"]) == (5, 10)


def test_no_eval_is_saved_and_a_finished_run_is_left_alone(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--data-dir", data_dir, "--no-eval", *QUICK]) == 0
    assert read_json(run / rundir.CONFIG_NAME)["evaluate"] is False
    assert main(["resume", str(run), "--quiet"]) == 0
    assert rundir.status(run) == "partial"  # trained, and not evaluated: the run asked for no evaluation
    from iwae.experiments.status import run_states
    from iwae.runs.sharing import export_run

    (state,) = run_states(run)  # what to run to evaluate it, not a resume that does nothing
    assert (state.state, state.detail) == (
        "trained",
        f"not evaluated (--no-eval); evaluate it: iwae resume {run} --eval",
    )
    with pytest.raises(rundir.RunError, match=f"finish it first: `iwae resume {run} --eval`"):
        export_run(run, tmp_path / "export")
    assert main(["resume", str(run), "--eval", "--eval-k", "4", "--eval-n", "10", "--quiet"]) == 0
    assert read_json(run / rundir.METRICS_NAME)["eval_k"] == 4 and read_json(run / rundir.CONFIG_NAME)["evaluate"]
    capsys.readouterr()
    assert main(["resume", str(run), "--eval-k", "3", "--quiet"]) == 0
    assert "already finished" in capsys.readouterr().out and read_json(run / rundir.METRICS_NAME)["eval_k"] == 4
    assert main(["resume", str(run), "--re-evaluate", "--eval-k", "3", "--quiet"]) == 0
    assert read_json(run / rundir.METRICS_NAME)["eval_k"] == 3
    capsys.readouterr()
    assert main(["resume", str(run), "--quiet"]) == 0
    assert "But its metrics.json" not in capsys.readouterr().out  # the evaluation its config asks for
    omniglot = tmp_path / "omniglot"  # chardata's 8,070 test images, or the archives' 8,115: either is all of them
    rundir.create(omniglot, TrainConfig(dataset="omniglot", eval_k=5))
    (omniglot / rundir.METRICS_NAME).write_text(json.dumps({"eval_k": 5, "eval_n": 8070}))
    assert main(["resume", str(omniglot), "--quiet"]) == 0
    assert "already finished" in (out := capsys.readouterr().out) and "But its metrics.json" not in out
    rundir.update_config(run, {"eval_k": 5})  # as a --re-evaluate --eval-k 5 stopped before its end leaves it
    assert main(["resume", str(run), "--quiet"]) == 0
    assert "But its metrics.json holds L_3 on 10 test images where its config.json asks for L_5 on 10 (a " \
        "--re-evaluate that was stopped): run it with --re-evaluate." in capsys.readouterr().out  # fmt: skip


def test_the_data_directory_is_recorded_and_may_be_overridden(data_dir, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setenv("IWAE_DATA_DIR", data_dir)
    assert main(["train", "--out", str(run), "--no-eval", *QUICK]) == 0
    assert read_json(run / rundir.CONFIG_NAME)["data_dir"] == str(Path(data_dir).resolve())
    monkeypatch.delenv("IWAE_DATA_DIR")
    assert main(["evaluate", str(run), "--k", "2", "--n", "4", "--quiet"]) == 0  # the recorded directory
    config = read_json(run / rundir.CONFIG_NAME)
    (run / rundir.CONFIG_NAME).write_text(
        TrainConfig.from_dict({**config, "data_dir": str(tmp_path / "moved")}).to_json()
    )
    assert main(["evaluate", str(run), "--k", "2", "--n", "4", "--quiet", "--data-dir", data_dir]) == 0
    capsys.readouterr()
    monkeypatch.setenv("IWAE_DATA_DIR", data_dir)  # the recorded one is gone: $IWAE_DATA_DIR is used, and said
    assert main(["evaluate", str(run), "--k", "2", "--n", "4", "--quiet"]) == 0
    assert f"the run's data directory {tmp_path / 'moved'} no longer exists; its data are read from " in (
        capsys.readouterr().err)  # fmt: skip
    assert main(["compare", str(run), str(run), "--k", "2", "--n", "4", "--quiet", "--data-dir", data_dir,
                 "--out", str(tmp_path / "c.json")]) == 0  # fmt: skip


def test_nothing_pruned_means_no_second_nll(tiny_run, monkeypatch):
    config = rundir.read_config(tiny_run).replace(active_threshold=1e-30)  # every unit active
    (tiny_run / rundir.CONFIG_NAME).write_text(config.to_json())

    def refuse(*args, **kwargs):
        raise AssertionError("the pruned model was built although no unit is inactive")

    monkeypatch.setattr(iwae.runs.evaluate_run, "prune_inactive", refuse)
    result = iwae.runs.evaluate_run.evaluate_run(tiny_run, pruned=True, progress=False)
    assert result["nll_pruned"] == result["nll"] and result["units_pruned"] == 0
    assert iwae.runs.evaluate_run.finish_run(tiny_run, progress=False)["test_nll_pruned"] == result["nll"]


def test_evaluation_bars_name_what_they_score(tiny_run, capsys):
    iwae.runs.evaluate_run.finish_run(tiny_run, progress=True)
    err = capsys.readouterr().err
    assert "test NLL, L_20, 50 images" in err and "train NLL, L_20, 50 images" in err
    assert "final evaluation: L_20 on 50 test and 50 training images" in err


def test_a_run_starting_over_loses_its_old_results(tiny_run):
    (tiny_run / rundir.CHECKPOINT_NAME).unlink()  # e.g. a corrupt checkpoint deleted, as its error says
    (tiny_run / "eval-test-k5-n10.json").write_text("{}")
    iwae.runs.train.resume(tiny_run, progress=False)
    left = _files(tiny_run)
    assert rundir.METRICS_NAME not in left and "samples.png" not in left and "eval-test-k5-n10.json" not in left
    assert rundir.has_checkpoint(tiny_run) and len(rundir.read_log(tiny_run)) == 2


def test_every_file_of_a_run_has_the_usual_mode(tiny_run):
    """0666 less the umask (0644 under the usual 022), as for any file a program writes; never mkstemp's 0600."""
    iwae.runs.evaluate_run.evaluate_run(tiny_run, k=2, n=4, progress=False)
    mask = os.umask(0o022)
    os.umask(mask)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in tiny_run.iterdir()}  # copies keep their modes
    assert set(modes.values()) == {oct(0o666 & ~mask)}, modes


def test_training_on_the_cpu_uses_one_thread_by_default(tiny_config, tmp_path, monkeypatch):
    seen = []

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise InterruptedError  # enough seen: no need to train

    monkeypatch.setattr(iwae.fleets.fleet, "build_step", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    config = tiny_config.replace(curve_k=0, device="cpu")
    try:
        for run, threads in (("a", None), ("b", 2)):
            with pytest.raises(InterruptedError):
                iwae.runs.train.train(config, tmp_path / run, progress=False, threads=threads)
        assert seen == [1, 2] and torch.get_num_threads() == 2  # restored afterwards
    finally:
        torch.set_num_threads(before)


def test_a_slurm_submission_that_fails_is_one_line_and_blocks_no_retry(data_dir, tmp_path, monkeypatch, capsys):
    """sbatch refusing the job (here a stand-in that cannot reach its controller) is reported in one line, and the
    folder is left as it was, so that the same command can run again once the cluster is back."""
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    refusal = "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)"
    sbatch.write_text(f"#!/bin/sh\necho '{refusal}' >&2\nexit 1\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # present, as on any cluster node; never called here
    for tool in (sbatch, bin_dir / "srun"):
        tool.chmod(0o755)
    run, path = tmp_path / "run", os.environ["PATH"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # a machine without Slurm: one line, nothing made
    assert main(["train", "--out", str(run), "--executor", "slurm", "--data-dir", data_dir, *QUICK]) == 1
    err = capsys.readouterr().err
    assert "--executor slurm needs Slurm's sbatch and srun on PATH" in err and "Traceback" not in err
    assert not run.exists()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{path}")
    for _ in range(2):
        assert main(["train", "--out", str(run), "--executor", "slurm", "--data-dir", data_dir, *QUICK]) == 1
        err = capsys.readouterr().err
        assert "Slurm did not take the job(s) of run: " in err and "connect failure" in err, err
        assert "Traceback" not in err and not run.exists()
    # a reproduction's folder whose earlier job (still queued) left its request and logs: both kept as they were
    from iwae.experiments.plan import RunSpec
    from iwae.experiments.runner import REQUESTED_NAME
    from iwae.experiments.slurm import SlurmOptions, submit
    from iwae.runs.config import TrainConfig

    queued = tmp_path / "runs" / "queued"
    (queued / "slurm" / "123").mkdir(parents=True)
    (queued / REQUESTED_NAME).write_text("the earlier request")
    (queued / "slurm" / "123" / "123_submitted.pkl").write_bytes(b"job")
    with pytest.raises(rundir.RunError, match="Slurm did not take the job.s. of queued, fresh: .*connect failure"):
        submit([RunSpec("queued", TrainConfig()), RunSpec("fresh", TrainConfig(seed=1))], tmp_path / "runs",
               SlurmOptions(folder=tmp_path / "runs" / "slurm-logs"))  # fmt: skip
    assert (queued / REQUESTED_NAME).read_text() == "the earlier request"
    assert (queued / "slurm" / "123" / "123_submitted.pkl").read_bytes() == b"job"
    assert not (tmp_path / "runs" / "fresh" / REQUESTED_NAME).exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_run_trained_on_a_gpu_is_evaluated_sampled_compared_and_exported_without_one(tiny_run, tmp_path, capsys):
    rundir.update_config(tiny_run, {"device": "cuda"})  # as `iwae train --device cuda` on another machine leaves it
    assert main(["evaluate", str(tiny_run), "--quiet"]) == 1
    assert "CUDA is not available; use --device cpu" in capsys.readouterr().err
    small = ["--k", "5", "--n", "10", "--quiet"]
    assert main(["evaluate", str(tiny_run), "--device", "cpu", *small]) == 0
    assert main(["sample", str(tiny_run), "--device", "cpu", "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    out = tmp_path / "c.json"
    assert main(["compare", str(tiny_run), str(tiny_run), "--device", "cpu", *small, "--out", str(out)]) == 0
    assert read_json(out)["difference"]["mean"] == 0.0  # one model, one noise stream
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "export")]) == 0  # weights only: no device asked
    assert read_json(tmp_path / "export" / rundir.CONFIG_NAME)["device"] == "auto"
    model, config, _ = iwae.load_run(tiny_run, device="cpu")
    assert next(model.parameters()).device.type == "cpu" and config.device == "cuda"


def test_a_parameter_its_bound_ignores_is_said_when_the_run_is_made_not_at_each_read(tmp_path):
    import warnings

    with pytest.warns(UserWarning, match="alpha=0.3 has no effect on bound='iwae'"):
        config = TrainConfig(**TINY, alpha=0.3)
    rundir.create(tmp_path / "run", config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rundir.read_config(tmp_path / "run").alpha == 0.3
