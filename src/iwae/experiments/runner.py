"""Carrying out a plan: finished runs are skipped, unfinished ones resumed, new ones trained, in parallel.

Each run is an ordinary run folder made by `iwae train` in a child process. ``jobs`` children run at once, each
pinned to its share of the CPU threads (OMP_NUM_THREADS) or, when GPUs are present, to its own GPU
(CUDA_VISIBLE_DEVICES). A run starts once the runs it depends on have finished.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import torch

from iwae import atomic, rundir
from iwae.config import RESUMABLE, TrainConfig, schedule
from iwae.data.datasets import SPLIT_SIZES
from iwae.evaluate import log_likelihood
from iwae.experiments.plan import RunSpec
from iwae.rundir import build_model, status
from iwae.train import default_threads, train_and_evaluate
from iwae.train_step import make_optimizer, make_train_step

__all__ = [
    "FAILED_LINE",
    "REQUESTED_NAME",
    "SEED_PREFIX",
    "estimate_seconds",
    "execute",
    "read_metrics",
    "read_seed_metrics",
    "seed_dirs",
    "seed_number",
]

REQUESTED_NAME = "requested-config.json"  # the plan's config for a run not yet created
FAILED_LINE = "iwae reproduce: the run failed"  # the last line of RUN/log.txt after a failed child process
SEED_PREFIX = "seed-"  # RUN/seed-<S>: the plan's run RUN trained with seed S (`iwae reproduce --seeds`)


def check_compatible(spec: RunSpec, run_dir: Path) -> None:
    """A partial run folder must hold the very run the plan asks for (but for the settings a resume may change,
    :data:`~iwae.config.RESUMABLE`, such as the data directory it recorded); anything else is refused."""
    if status(run_dir) != "partial":
        return
    kept = {name: getattr(spec.config, name) for name in RESUMABLE}
    if rundir.read_config(run_dir).replace(**kept) != spec.config:
        raise ValueError(
            f"{run_dir} holds a run with another config than this reproduction asks for; "
            "move it away or reproduce into another --out"
        )


def child_main(run_dir: str) -> int:
    """Entry point of a child process: resume the run in run_dir, or start it from requested-config.json."""
    path = Path(run_dir)
    config = None if status(path) == "partial" else TrainConfig.load(path / REQUESTED_NAME)
    train_and_evaluate(path, config, progress=False)
    return 0


def _steps_per_second(config: TrainConfig, threads: int, seconds: float = 1.0) -> float:
    """Measured training steps per second for this config's model, objective and k (random binary data)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = build_model(config)
        step = make_train_step(model, make_optimizer(model), config.k, config.objective, config.estimator)
        x = torch.bernoulli(torch.full((config.batch_size, 784), 0.13))
        for _ in range(3):
            step(x)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            step(x)
            n += 1
        return n / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(old)


def _eval_seconds_per_image(config: TrainConfig, threads: int) -> float:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = build_model(config)
        x = torch.bernoulli(torch.full((2, 784), 0.13))
        k = min(config.eval_k, 1000)
        start = time.perf_counter()
        log_likelihood(model, x, k)
        return (time.perf_counter() - start) / 2 * config.eval_k / k
    finally:
        torch.set_num_threads(old)


def estimate_seconds(specs: list[RunSpec], jobs: int) -> dict[str, float]:
    """Seconds each run needs (training + the three evaluations), from a short measured warm-up per kind of run.

    Measured on the threads the run will use (:func:`iwae.train.default_threads`, else its share of the cores):
    on a busy machine a step on two threads can take ten times as long as on one.
    """
    share = max(1, (os.cpu_count() or 1) // jobs)
    cache: dict[tuple, tuple[float, float]] = {}
    out = {}
    for spec in specs:
        c = spec.config
        key = (c.layers, tuple(c.latent_dims or ()), c.objective, c.k, c.m, c.estimator, c.eval_k)
        if key not in cache:
            threads = default_threads(c) or share
            cache[key] = (_steps_per_second(c, threads), _eval_seconds_per_image(c, threads))
        rate, per_image = cache[key]
        sizes = SPLIT_SIZES[c.dataset]
        steps = sum(max(1, round(s.passes * sizes["train"] / c.batch_size)) for s in schedule(c))
        n_test = min(c.eval_n or sizes["test"], sizes["test"])
        n_train = min(c.eval_n or sizes["train"], sizes["train"])
        out[spec.name] = steps / rate + per_image * (2 * n_test + n_train)
    return out


def execute(
    specs: list[RunSpec],
    root: Path,
    jobs: int = 1,
    log: Callable[[str], None] = print,
    durations: dict[str, float] | None = None,
) -> dict[str, str]:
    """Bring every run to "done"; returns name -> "done" | "failed: ...". Children write RUN/log.txt.

    With ``durations`` (estimated seconds per run), the longest ready run starts first.
    """
    root.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    result: dict[str, str] = {s.name: "done" for s in specs if status(root / s.name) == "done"}
    for name in result:
        log(f"  {name}: already done, skipped")
    pending = [s for s in specs if s.name not in result]
    for spec in pending:
        check_compatible(spec, root / spec.name)
    slots = list(range(jobs))
    lock = threading.Lock()

    def run(spec: RunSpec, slot: int) -> str:
        run_dir = root / spec.name
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(run_dir / REQUESTED_NAME, spec.config.to_json())
        cmd = [sys.executable, "-m", "iwae.experiments.runner", str(run_dir)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
        start = time.monotonic()
        with open(run_dir / "log.txt", "a") as out:
            code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
            if code != 0:
                out.write(f"{FAILED_LINE} (exit status {code})\n")
        with lock:
            log(f"  {spec.name}: {'done' if code == 0 else 'FAILED'} in {time.monotonic() - start:.0f} s")
        return "done" if code == 0 else f"failed (exit {code}; see {run_dir / 'log.txt'})"

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[Future, tuple[RunSpec, int]] = {}
        while pending or running:
            ready = [s for s in pending if all(result.get(d) == "done" for d in s.after)]
            if durations:
                ready.sort(key=lambda s: -durations.get(s.name, 0.0))
            blocked = [s for s in pending if any(d in result and result[d] != "done" for d in s.after)]
            for s in blocked:
                result[s.name] = f"skipped: needs {', '.join(s.after)}"
                pending.remove(s)
            while ready and slots:
                spec, slot = ready.pop(0), slots.pop(0)
                pending.remove(spec)
                log(f"  {spec.name}: started")
                running[pool.submit(run, spec, slot)] = (spec, slot)
            if not running:
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                spec, slot = running.pop(fut)
                slots.append(slot)
                result[spec.name] = fut.result()
    return result


def read_metrics(run_dir: Path) -> dict | None:
    """The run's ``metrics.json``, or None before its evaluation."""
    path = run_dir / rundir.METRICS_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def _is_run(path: Path) -> bool:
    return (path / rundir.CONFIG_NAME).is_file() or (path / rundir.METRICS_NAME).is_file()


def seed_number(run_dir: Path) -> int | None:
    """S for a folder named ``seed-<S>``, else None (a plan's run folder itself)."""
    text = run_dir.name.removeprefix(SEED_PREFIX)
    return int(text) if run_dir.name.startswith(SEED_PREFIX) and text.isdigit() else None


def seed_dirs(path: Path) -> list[Path]:
    """The run folders of one plan run: ``[path]`` where path is a run folder itself (it holds config.json, or
    metrics.json), else its ``seed-<S>`` run folders sorted by S (none if it has neither)."""
    if _is_run(path):
        return [path]
    found = [d for d in path.glob(SEED_PREFIX + "*") if seed_number(d) is not None and _is_run(d)]
    return sorted(found, key=lambda d: seed_number(d) or 0)


def read_seed_metrics(path: Path) -> list[dict]:
    """The ``metrics.json`` of each evaluated run folder of :func:`seed_dirs` (path), in seed order."""
    return [m for d in seed_dirs(path) if (m := read_metrics(d)) is not None]


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1]))
