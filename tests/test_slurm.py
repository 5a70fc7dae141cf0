"""``iwae reproduce --executor slurm`` on a real one-node Slurm cluster (``tests/slurm/start``; CI starts it).

A tiny Table 2 goes out as two job arrays (its two Table 1 sources, then the two runs that start from them, after
them); one source job is preempted (USR2, as Slurm sends before preemption or a time limit) once it has
checkpointed its first stage. The requeued job must resume it to the numbers of an uninterrupted run, the
dependent job must wait for it, and the report must hold every run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iwae.experiments.slurm import JOB_NAME, queue_states
from iwae.experiments.status import format_states, run_states

pytestmark = pytest.mark.slow

TINY = ["--stages", "2", "--pass-scale", "0.005", "--eval-k", "10", "--eval-n", "20", "--curve-k", "0"]
PREEMPTED = "mnist-l1-iwae-k50"


def _cluster_reason() -> str | None:
    """Why no Slurm job can run here, or None."""
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH (install slurm-wlm and run tests/slurm/start as root)"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is not installed (pip install 'iwae[slurm]')"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return f"sinfo failed: {err}"
    if not any(s.startswith(("idle", "mixed", "allocated")) for s in states.split()):
        return f"the Slurm cluster is not up (sinfo: {states.strip() or 'no node'}); run tests/slurm/start as root"
    return None


def _wait_for(condition, seconds: float, what: str, process: subprocess.Popen) -> None:
    end = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"iwae reproduce ended before {what}: {process.stdout.read()}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _first_stage_logged(run: Path) -> bool:
    log = run / "metrics.jsonl"
    return log.is_file() and '"stage": 0' in log.read_text() and not (run / "metrics.json").exists()


def test_reproduction_on_slurm_survives_preemption(tmp_path, data_dir, monkeypatch):
    if reason := _cluster_reason():
        pytest.skip(reason)
    monkeypatch.setenv("IWAE_DATA_DIR", str(data_dir))
    out = tmp_path / "repro"
    cmd = [sys.executable, "-m", "iwae", "reproduce", "table2", *TINY, "--out", str(out), "--executor", "slurm"]
    reproduce = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = out / "runs" / PREEMPTED
    try:
        _wait_for(lambda: (run / JOB_NAME).is_file(), 60, "the submission", reproduce)
        job = json.loads((run / JOB_NAME).read_text())["job_id"]
        _wait_for(lambda: _first_stage_logged(run), 90, f"{PREEMPTED}'s first stage", reproduce)
        states = {s.path.name: s.state for s in run_states(out)}
        assert states[PREEMPTED] == "running" and states["mnist-l1-vae-then-iwae-k50"] != "failed"
        assert states["mnist-l1-iwae-then-vae-k1"] == "queued"  # waits for the preempted run
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        # Slurm holds a requeued job back for two minutes; let it start sooner, once its first attempt has been
        # cleaned up on the node (KillWait, 5 s, and the step's own ending; started at once, it fails to launch).
        _wait_for(lambda: queue_states([job]).get(job) == "PENDING", 60, "the requeue", reproduce)
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now+15"], check=True)
        output, _ = reproduce.communicate(timeout=120)
    finally:
        reproduce.kill()
    assert reproduce.returncode == 0, output
    stderr = Path(json.loads((run / JOB_NAME).read_text())["stderr"]).read_text()
    assert "this job is preempted" in stderr and "DUE TO JOB REQUEUE" in stderr, stderr
    assert not queue_states([job])
    states = run_states(out)
    assert [s.state for s in states] == ["done"] * 4, format_states(states)
    # The uninterrupted run of the same config, here.
    from iwae.runs.config import TrainConfig
    from iwae.runs.train import train_and_evaluate

    local = train_and_evaluate(tmp_path / "local", TrainConfig.load(run / "config.json"), progress=False)
    resumed = json.loads((run / "metrics.json").read_text())
    for key in ("test_nll", "train_nll", "active_units", "test_nll_pruned"):
        assert resumed[key] == local[key], key
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert "Table 2" in report and results["experiments"] == ["table2"]
    rewritten = subprocess.run([sys.executable, "-m", "iwae", "reproduce", "--report-only", str(out)],
                               capture_output=True, text=True, check=True)  # fmt: skip
    assert "report.md" in rewritten.stdout and "Table 2" in (out / "report.md").read_text()
