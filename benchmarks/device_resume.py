"""The device check's run-folder section: ``iwae train`` killed with SIGKILL after its first checkpoint and
continued by ``iwae resume`` ends where the uninterrupted run ends; a fleet of two seeds trains on the device.

The runs are real ``iwae`` commands in child processes (through :mod:`benchmarks.device_env`), on a sliver of the
paper's schedule: two stages of 1 layer, k small, a checkpoint every 0.06 s, no evaluation. Their folders live in a
temporary directory; the children's output goes to ``OUT/resume.log``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.device_check import Context, Section, Skip
from benchmarks.device_env import ROOT

CHECKPOINT = "checkpoint.safetensors"  # iwae.runs.rundir.CHECKPOINT_NAME


def _command(args: list[str], ctx: Context) -> tuple[list[str], dict[str, str]]:
    """``iwae ARGS`` as a child process of this interpreter, reading the check's data."""
    env = dict(os.environ, IWAE_DATA_DIR=str(ctx.data_dir))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", "benchmarks.device_env", *args], env


def _train_args(run: Path, ctx: Context, s: dict[str, Any]) -> list[str]:
    return [
        "train",
        "--out",
        str(run),
        "--device",
        str(ctx.device),
        "--dataset",
        "mnist",
        "--data-dir",
        str(ctx.data_dir),
        "--layers",
        "1",
        "--k",
        str(s["k"]),
        "--stages",
        "2",
        "--pass-scale",
        str(s["pass_scale"]),
        "--no-eval",
        "--curve-k",
        "0",
        "--checkpoint-minutes",
        "0.001",
        "--seed",
        "0",
        "--quiet",
    ]


def _run(args: list[str], ctx: Context, timeout: float) -> None:
    cmd, env = _command(args, ctx)
    with open(ctx.out / "resume.log", "ab") as log:
        log.write(f"$ iwae {' '.join(args)}\n".encode())
        log.flush()
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
    if rc != 0:
        raise RuntimeError(f"`iwae {args[0]}` exited with status {rc}; its output is in {ctx.out / 'resume.log'}")


def _run_here(args: list[str], ctx: Context) -> None:
    """``iwae ARGS`` in this process: no CUDA context and no data check paid again (the uninterrupted run, which
    needs no process of its own to be killed)."""
    from iwae.cli import main

    with open(ctx.out / "resume.log", "ab") as log:
        log.write(f"$ iwae {' '.join(args)}  (in the check's own process)\n".encode())
    rc = main(args)
    if rc != 0:
        raise RuntimeError(f"`iwae {args[0]}` (in the check's process) exited with status {rc}")


def _killed(run: Path, ctx: Context, s: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Start ``iwae train``, SIGKILL it as soon as its first checkpoint exists; what the kill left."""
    cmd, env = _command(_train_args(run, ctx, s), ctx)
    with open(ctx.out / "resume.log", "ab") as log:
        log.write(b"$ iwae train ... (killed with SIGKILL after its first checkpoint)\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            end = time.monotonic() + timeout
            while proc.poll() is None and not (run / CHECKPOINT).exists() and time.monotonic() < end:
                time.sleep(0.005)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"returncode": rc, "killed": rc == -signal.SIGKILL, "position_at_kill": _position(run / CHECKPOINT)}


def _position(path: Path) -> dict[str, Any] | None:
    """Stage and step of a checkpoint's position (None without one)."""
    from safetensors import safe_open

    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        state = json.loads(f.metadata()["state"])
    return {"stage": state.get("stage"), "step": state.get("step")}


def compare_checkpoints(a: Path, b: Path) -> dict[str, Any]:
    """Every tensor of two checkpoints: the largest difference of the float ones (model and Adam), and whether the
    others (random generator states, permutation) are equal."""
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    if ta.keys() != tb.keys():
        return {"same_tensors": False, "max_abs_diff": float("inf"), "other_tensors_equal": False}
    diff, equal = 0.0, True
    for key, x in ta.items():
        y = tb[key]
        if x.shape != y.shape:
            return {"same_tensors": False, "max_abs_diff": float("inf"), "other_tensors_equal": False}
        if x.is_floating_point():
            diff = max(diff, float((x.double() - y.double()).abs().max())) if x.numel() else diff
        else:
            equal = equal and torch.equal(x, y)
    return {"same_tensors": True, "max_abs_diff": diff, "other_tensors_equal": equal, "tensors": len(ta)}


def _bounds(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train_bound"] for line in lines if line.strip()]


def resume_section(sec: Section, ctx: Context) -> None:
    """(a-iv) train + SIGKILL + resume = uninterrupted, bitwise expected (eager steps); a 2-seed fleet trains."""
    s = ctx.settings["resume"]
    folder = ctx.data_dir / "mnist"
    if not any((folder / f"train-images-idx3-ubyte{z}").exists() for z in (".gz", "")):
        raise Skip(f"skipped: no MNIST training file in {folder} (run benchmarks/device/prepare)")
    sec.record["values"]["setup"] = (
        f"iwae train --layers 1 --k {s['k']} --stages 2 --pass-scale {s['pass_scale']} "
        f"--no-eval --checkpoint-minutes 0.001 --device {ctx.device}"
    )
    with tempfile.TemporaryDirectory(prefix="iwae-device-check-") as tmp:
        straight, killed = Path(tmp) / "straight", Path(tmp) / "killed"
        _run_here(_train_args(straight, ctx, s), ctx)
        kill = _killed(killed, ctx, s, max(20.0, sec.left()))
        sec.record["values"]["kill"] = kill
        if not kill["killed"]:
            sec.skip("resume after the kill", f"skipped: the run ended (status {kill['returncode']}) before the kill")
        else:
            _run(["resume", str(killed), "--quiet"], ctx, max(20.0, sec.left()))
            same = compare_checkpoints(straight / CHECKPOINT, killed / CHECKPOINT)
            bounds = _bounds(straight) == _bounds(killed)
            ok = same["same_tensors"] and same["max_abs_diff"] <= 1e-6 and same["other_tensors_equal"] and bounds
            sec.check(
                "iwae train, SIGKILL after the first checkpoint, iwae resume = the uninterrupted run",
                ok,
                bitwise=same["max_abs_diff"] == 0,
                train_bounds_equal=bounds,
                tol=1e-6,
                **same,
            )
        if sec.fits("a fleet of 2 seeds", 5):
            _fleet(sec, ctx, s, Path(tmp), straight)


def _fleet(sec: Section, ctx: Context, s: dict[str, Any], tmp: Path, straight: Path) -> None:
    """iwae.fleets.fleet_train.train_fleet with seeds 0 and 1 on the device: it trains and checkpoints each run's
    folder; its seed-0 run draws what the single run of seed 0 draws."""
    from iwae.fleets.fleet_train import MANIFEST_NAME, read_manifest, train_fleet
    from iwae.runs.config import TrainConfig

    mode = "graph" if ctx.cuda else "stacked"
    base = dict(
        dataset="mnist",
        data_dir=str(ctx.data_dir),
        layers=1,
        k=s["k"],
        stages=2,
        pass_scale=s["pass_scale"],
        evaluate=False,
        curve_k=0,
        device=str(ctx.device),
    )
    dirs = [tmp / "fleet" / f"seed-{seed}" for seed in (0, 1)]
    dropped = train_fleet(
        [TrainConfig(**base, seed=seed) for seed in (0, 1)],
        dirs,
        tmp / "fleet" / MANIFEST_NAME,
        mode=mode,
        progress=False,
    )
    step = read_manifest(tmp / "fleet" / MANIFEST_NAME)["step"]
    have = [d.name for d in dirs if (d / CHECKPOINT).exists()]
    sec.check(
        f"a fleet of 2 seeds (mode {mode}) trains; each run's folder holds its checkpoint",
        not dropped and len(have) == 2 and step > 0,
        runs_with_checkpoint=have,
        fleet_step=step,
        dropped=dropped,
    )
    same = compare_checkpoints(dirs[0] / CHECKPOINT, straight / CHECKPOINT)
    sec.check(
        "the fleet's seed-0 run draws what its single run draws (generator states equal)",
        same["same_tensors"] and same["other_tensors_equal"],
        **same,
        note="parameters: float32 vmapped matmuls against single ones, small differences expected",
    )
