"""The `iwae` command around its work: a quick --help without torch, interrupts and SIGTERM that say how to go on,
output folders made as needed, and an estimate of a reproduction that matches the step times."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from iwae.cli.commands import COMMANDS, main
from iwae.runs.eval_progress import PROGRESS_SUFFIX


def test_parsing_the_command_line_does_not_import_torch():
    code = (
        "import sys, iwae.cli.commands\n"
        "for name in ('train', 'resume', 'evaluate', 'compare', 'sample', 'reproduce', 'download', 'snr'):\n"
        "    try:\n"
        "        iwae.cli.commands.build_parser().parse_args([name, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("stop", "code"), [(KeyboardInterrupt, 130), (signal.SIGTERM, 143)])
def test_a_stopped_run_names_its_folder_and_how_to_resume(stop, code, tmp_path, monkeypatch, capsys):
    def run(args):
        if stop is KeyboardInterrupt:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setitem(COMMANDS, "train", COMMANDS["train"]._replace(run=run))
    before = signal.getsignal(signal.SIGTERM)
    assert main(["train", "--out", str(tmp_path / "run")]) == code  # stopped before the run folder was made
    err = capsys.readouterr().err
    assert "the run had not begun (nothing was kept): run the same command again" in err and "resume" not in err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")  # now the run has begun
    assert main(["train", "--out", str(tmp_path / "run")]) == code
    err = capsys.readouterr().err
    assert f"iwae resume {tmp_path / 'run'}` (it goes on from its last checkpoint)" in err and "RUN_DIR" not in err
    assert ("terminated" in err) == (code == 143)
    assert signal.getsignal(signal.SIGTERM) == before
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "slurm-job.json").write_text("{}")  # submitted, waited on: the job runs on
    assert main(["train", "--out", str(tmp_path / "slurm"), "--executor", "slurm"]) == code
    assert f"its Slurm job goes on without this process: `iwae status {tmp_path / 'slurm'}` follows it" in (
        capsys.readouterr().err)  # fmt: skip
    monkeypatch.setitem(COMMANDS, "resume", COMMANDS["resume"]._replace(run=run))
    assert main(["resume", str(tmp_path / "run"), "--re-evaluate"]) == code
    assert f"continue with `iwae resume {tmp_path / 'run'} --re-evaluate`" in capsys.readouterr().err


@pytest.mark.parametrize("kept", [False, True])
@pytest.mark.parametrize("argv", [["evaluate"], ["ais"], ["ais", "--simulated"]])
def test_a_stopped_evaluation_says_whether_running_it_again_goes_on(argv, kept, tmp_path, monkeypatch, capsys):
    """Only where a progress file lies in the run folder is the user told that the work goes on from it."""

    def run(args):
        (tmp_path / f"{'ais' if argv[0] == 'evaluate' else 'eval'}-x.progress.safetensors").write_bytes(b"")  # not its
        if kept:
            stem = "eval-test-k5000-n10000" if argv[0] == "evaluate" else "ais-test-s500-c16-n100"
            (tmp_path / f"{stem}{PROGRESS_SUFFIX}").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setitem(COMMANDS, argv[0], COMMANDS[argv[0]]._replace(run=run))
    assert main([argv[0], str(tmp_path), *argv[1:]]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("iwae: interrupted")
    simulated = "--simulated" in argv  # (BDMC keeps no progress: nothing to say)
    assert ("run the same command again to go on where it stopped (its progress is kept" in err) == (
        kept and not simulated
    )
    assert ("it had kept no progress yet: run the same command again" in err) == (not kept and not simulated)


def test_sample_makes_the_output_folder(tiny_run, tmp_path):
    out = tmp_path / "new" / "folder" / "s.png"
    assert main(["sample", str(tiny_run), "--n", "4", "--out", str(out)]) == 0
    assert out.stat().st_size > 0


def test_version_a_mistyped_option_and_an_abbreviation(capsys):
    """``--version`` names the package's version; an option the command lacks is one line naming the nearest one;
    an abbreviation is not taken for an option (``--stage`` is not ``--stages``)."""
    import iwae

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"iwae {iwae.__version__}\n"
    for argv, error in (
        (["train", "--out", "x", "--stage", "3"], "iwae train: error: unrecognized arguments: --stage 3; "
         "did you mean --stages?"),
        (["evaluate", "run", "--kk=3"], "iwae evaluate: error: unrecognized arguments: --kk=3; did you mean --k?"),
        (["sample", "run", "--zzz"], "iwae sample: error: unrecognized arguments: --zzz; "
         "`iwae sample --help` lists its options"),
        (["train", "--out", "x", "--", "--k"], "iwae train: error: unrecognized arguments: -- --k; "
         "`iwae train --help` lists its options"),  # after --, nothing is an option to suggest
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and capsys.readouterr().err == error + "\n"


def test_the_option_table_module_runs_without_a_warning():
    result = subprocess.run([sys.executable, "-W", "error", "-m", "iwae.cli.options"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "" and result.stdout.startswith("| option |")


def test_stages_beyond_the_papers_eight_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--stages", "9", "--out", "x"])
    assert exit_info.value.code == 2 and "--stages: unknown choice '9'" in capsys.readouterr().err


def test_reproduce_estimate_measures_the_runs_own_step_and_counts_its_steps(monkeypatch):
    """The estimate times the step the run will take (its k, m, beta, estimator and flushing, on one thread, as
    training runs), then counts the schedule's steps and the evaluation's images: checked on recorded calls and a
    fixed rate, not on wall-clock ratios, which depend on the machine's load."""
    import iwae.experiments.runner as runner
    from iwae.experiments.plan import RunSpec
    from iwae.runs.config import TrainConfig, schedule

    config = TrainConfig(bound="miwae", k=5, m=20, pass_scale=0.01, stages=3, eval_n=2, eval_k=10,
                         flush_denormal=False)  # fmt: skip
    calls, threads, real_step = [], [], runner.build_step

    def recording_step(*args, **kwargs):
        calls.append((args[2], kwargs))
        return real_step(*args, **kwargs)

    monkeypatch.setattr(runner, "build_step", recording_step)
    monkeypatch.setattr(runner, "_fixed_seconds", lambda c: 7.0)  # the process and the data, measured apart
    monkeypatch.setattr(runner.time, "perf_counter", iter(range(10**6)).__next__)  # each step "takes" 1 s
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # several threads per job, as on a larger machine
    before, real = torch.get_num_threads(), torch.set_num_threads
    try:
        monkeypatch.setattr(torch, "set_num_threads", lambda n: (threads.append(n), real(n)))
        est = runner.estimate_seconds([RunSpec("r", config)], jobs=1)["r"]
    finally:
        real(before)  # not through the patch: only estimate_seconds' calls are recorded
    ((objective, kwargs),) = calls
    assert (objective.bound, objective.k, objective.estimator, objective.m) == ("miwae", 5, "reparam", 20)
    assert objective.samples_per_example == 100 and kwargs["flush_denormal"] is False
    assert isinstance(kwargs["generator"], torch.Generator)  # (its own: the caller's global stream untouched)
    assert threads == [1, before, 1, before]  # each measured on one thread, as training runs, then restored
    steps = sum(max(1, round(s.passes * 59_600 / 20)) for s in schedule(config))
    # 1 step per "second" of the patched clock; 1,000 samples of 8 images in 1 "second": L_10 for 2 test images
    # (twice) and 2 train images, the curve's L_1000 on 500 test images at each of the 3 stages' ends; fixed costs
    per_sample = 1 / 8000
    curve = 3 * per_sample * 1000 * 500
    assert est == pytest.approx(steps / 1.0 + per_sample * 10 * (2 * 2 + 2) + curve + 7.0)


@pytest.mark.slow  # (a fresh process that imports torch: seconds)
def test_output_into_a_pipe_closed_early_ends_quietly(tmp_path):
    """``iwae status | head -0``: the reader went away before the output was written; no traceback, no error line."""
    from iwae.runs import rundir
    from iwae.runs.config import TrainConfig

    rundir.create(tmp_path / "run", TrainConfig())  # a run to list
    proc = subprocess.Popen([sys.executable, "-m", "iwae", "status", str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err == b""


def test_sample_writes_the_format_its_suffix_names(tiny_run, tmp_path, capsys):
    assert main(["sample", str(tiny_run), "--n", "4", "--out", str(tmp_path / "s.jpg")]) == 0
    assert (tmp_path / "s.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG's magic, not PNG's
    assert main(["sample", str(tiny_run), "--n", "4", "--out", str(tmp_path / "new" / "s.txt")]) == 1
    assert not (tmp_path / "new").exists()  # refused before any work
    assert "s.txt: .txt names no image format Pillow writes; name a .png file" in capsys.readouterr().err


def test_ctrl_c_while_torch_starts_is_the_one_line_of_any_stop(tmp_path):
    """A Ctrl-C in the seconds torch takes to import (in a fresh process, whose command line imports no torch to
    parse): the line of any stop, and saying so imports no torch."""
    script = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def torch_is_loading(name, *args, **kwargs):\n"
        "    if name == 'torch' or name.startswith('torch.'):\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = torch_is_loading\n"
        "from iwae.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    for argv, line in [
        (["train", "--out", str(tmp_path / "run"), "--threads", "1"], "the run had not begun (nothing was kept)"),
        (["evaluate", str(tmp_path), "--threads", "1"], "it had kept no progress yet"),
    ]:
        proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 130 and proc.stderr.startswith(f"iwae: interrupted; {line}"), proc.stderr
        assert len(proc.stderr.splitlines()) == 1
