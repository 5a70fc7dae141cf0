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

from iwae import data
from iwae.data.resources import SPLIT_SIZES
from iwae.evaluate import log_likelihood
from iwae.experiments.fleets import Unit, pack
from iwae.experiments.plan import RunSpec
from iwae.fleets.fleet_train import train_fleet_and_evaluate
from iwae.objectives import Objective
from iwae.runs import rundir
from iwae.runs.config import LEGACY, RESUMABLE, TrainConfig, schedule
from iwae.runs.rundir import build_model, status
from iwae.runs.train import default_threads, train_and_evaluate
from iwae.runs.train_step import build_step, make_optimizer
from iwae.util import atomic, streams

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
    :data:`~iwae.runs.config.RESUMABLE`, such as the data directory it recorded); anything else is refused."""
    if status(run_dir) != "partial":
        return
    # A run made before a setting existed keeps the value it was made with (config.LEGACY): the same run still.
    kept = {name: getattr(spec.config, name) for name in (*RESUMABLE, *LEGACY)}
    if rundir.read_config(run_dir).replace(**kept) != spec.config:
        raise ValueError(
            f"{run_dir} holds a run with another config than this reproduction asks for; "
            "move it away or reproduce into another --out"
        )


def child_main(run_dir: str, threads: int | None = None) -> int:
    """Entry point of a child process: resume the run in run_dir, or start it from requested-config.json."""
    path = Path(run_dir)
    config = None if status(path) == "partial" else TrainConfig.load(path / REQUESTED_NAME)
    train_and_evaluate(path, config, progress=False, threads=threads)
    return 0


def fleet_child_main(manifest: str, run_dirs: list[str], mode: str, threads: int | None = None) -> int:
    """Entry point of a fleet's child process: resume the fleet of ``manifest``, or start it from the runs'
    requested-config.json files. 1 if some run of it was dropped (its loss stopped being finite)."""
    dirs = [Path(d) for d in run_dirs]
    configs = None if Path(manifest).exists() else [TrainConfig.load(d / REQUESTED_NAME) for d in dirs]
    outcome = train_fleet_and_evaluate(dirs, manifest, configs, mode=mode, progress=False, threads=threads)
    for run, why in outcome["dropped"].items():
        print(f"{run}: dropped from the fleet: {why}")
    return 1 if outcome["dropped"] else 0


def _steps_per_second(config: TrainConfig, threads: int, seconds: float = 1.0) -> float:
    """Measured training steps per second for this config's model and objective (k, m, beta, estimator, flushing
    of subnormal floats: the run's own step), on random binary data."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, gen = build_model(config), streams.generator(0, "probe")  # (the caller's global stream untouched)
        step = build_step(model, make_optimizer(model), Objective.from_config(config), generator=gen,
                          flush_denormal=config.flush_denormal)  # fmt: skip
        x = torch.bernoulli(torch.full((config.batch_size, 784), 0.13), generator=gen)
        for _ in range(3):
            step(x)
        n, start = 0, time.perf_counter()
        while True:  # at least one step, however long it takes
            step(x)
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return n / elapsed
    finally:
        torch.set_num_threads(old)


def _seconds_per_sample(config: TrainConfig, threads: int) -> float:
    """Measured seconds per importance sample of one image in ``log_likelihood``, from 1,000 samples of 8 images
    (enough that the per-call overhead of a small model does not count as its samples' time)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, gen = build_model(config), streams.generator(0, "probe")
        x = torch.bernoulli(torch.full((8, 784), 0.13), generator=gen)
        start = time.perf_counter()
        log_likelihood(model, x, 1000, generator=gen, flush_denormal=config.flush_denormal)
        return (time.perf_counter() - start) / (8 * 1000)
    finally:
        torch.set_num_threads(old)


def _fixed_seconds(config: TrainConfig) -> float:
    """A run's costs that do not scale with its steps, measured: a child process that imports the library and
    matplotlib (each run of a reproduction is a process of its own), and reading its training set."""
    start = time.perf_counter()
    warm = "import iwae.runs.train, matplotlib.figure"
    subprocess.run([sys.executable, "-c", warm], check=False, capture_output=True)
    started = time.perf_counter()
    try:
        data.load(config.dataset, "train", config.data_dir)
    except (OSError, ValueError):  # no data yet: the run will fail or download; count the start alone
        pass
    return started - start + (time.perf_counter() - started)


def estimate_seconds(specs: list[RunSpec], jobs: int) -> dict[str, float]:
    """Seconds each run needs, from a short measured warm-up per kind of run: its training steps, the learning
    curve's points (L_curve_k on curve_n test images at every stage's end), the final evaluation (the test split
    twice, with and without inactive units, and the training split) and its fixed costs (:func:`_fixed_seconds`:
    the process, the data).

    Measured on the threads the run will use (:func:`iwae.runs.train.default_threads`, else its share of the cores):
    on a busy machine a step on two threads can take ten times as long as on one.
    """
    share = max(1, (os.cpu_count() or 1) // jobs)
    cache: dict[tuple, tuple[float, float]] = {}
    fixed: dict[str, float] = {}
    out = {}
    for spec in specs:
        c = spec.config
        key = (c.layers, tuple(c.latent_dims or ()), Objective.from_config(c), c.flush_denormal)
        if key not in cache:
            threads = default_threads(c) or share
            cache[key] = (_steps_per_second(c, threads), _seconds_per_sample(c, threads))
        if c.dataset not in fixed:
            fixed[c.dataset] = _fixed_seconds(c)
        rate, per_sample = cache[key]
        sizes = SPLIT_SIZES[c.dataset]
        stages = schedule(c)
        steps = sum(max(1, round(s.passes * sizes["train"] / c.batch_size)) for s in stages)
        n_test = min(c.eval_n or sizes["test"], sizes["test"])
        n_train = min(c.eval_n or sizes["train"], sizes["train"])
        curve = len(stages) * per_sample * c.curve_k * min(c.curve_n, sizes["test"]) if c.has_curve else 0
        out[spec.name] = steps / rate + per_sample * c.eval_k * (2 * n_test + n_train) + curve + fixed[c.dataset]
    return out


def execute(
    specs: list[RunSpec],
    root: Path,
    jobs: int = 1,
    log: Callable[[str], None] = print,
    durations: dict[str, float] | None = None,
    packing: str = "off",
    threads: int | None = None,
) -> dict[str, str]:
    """Bring every run to "done"; returns name -> "done" | "failed: ...". Children write RUN/log.txt (a fleet:
    runs/fleets/UNIT.log).

    :param packing: how runs are packed into fleets (:func:`iwae.experiments.fleets.pack`; "off": one run each).
    With ``durations`` (estimated seconds per run), the longest ready unit starts first. ``threads``: torch's
    threads in each run (default :func:`iwae.runs.train.default_threads`, else the run's share of the cores).
    """
    root.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    result: dict[str, str] = {s.name: "done" for s in specs if status(root / s.name) == "done"}
    for name in result:
        log(f"  {name}: already done, skipped")
    todo = [s for s in specs if s.name not in result]
    for spec in todo:
        check_compatible(spec, root / spec.name)
    pending = pack(todo, root, packing, on_gpu=gpus > 0)
    slots, lock = list(range(jobs)), threading.Lock()

    def run(unit: Unit, slot: int) -> dict[str, str]:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
        start = time.monotonic()
        outcome = _run_unit(unit, root, env, packing, threads)
        with lock:
            log(f"  {unit.name}: {'done' if set(outcome.values()) == {'done'} else 'FAILED'} in "
                f"{time.monotonic() - start:.0f} s")  # fmt: skip
        return outcome

    def cost(unit: Unit) -> float:
        return -sum((durations or {}).get(s.name, 0.0) for s in unit.specs)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[Future, tuple[Unit, int]] = {}
        while pending or running:
            ready = sorted((u for u in pending if all(result.get(d) == "done" for d in u.after)), key=cost)
            for u in [u for u in pending if any(d in result and result[d] != "done" for d in u.after)]:
                result.update({s.name: f"skipped: needs {', '.join(u.after)}" for s in u.specs})
                pending.remove(u)
            while ready and slots:
                unit, slot = ready.pop(0), slots.pop(0)
                pending.remove(unit)
                fleet = f" (a fleet of {len(unit.specs)} runs: {', '.join(s.name for s in unit.specs)})"
                log(f"  {unit.name}: started" + (fleet if unit.manifest else ""))
                running[pool.submit(run, unit, slot)] = (unit, slot)
            if not running:
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                slots.append(running.pop(fut)[1])
                result.update(fut.result())
    return result


def _run_unit(unit: Unit, root: Path, env: dict[str, str], packing: str, threads: int | None) -> dict[str, str]:
    """One child process for the unit: each of its runs' result."""
    for spec in unit.specs:
        (root / spec.name).mkdir(parents=True, exist_ok=True)
        atomic.write_text(root / spec.name / REQUESTED_NAME, spec.config.to_json())
    cmd = [sys.executable, "-m", "iwae.experiments.runner", *(["--threads", str(threads)] if threads else [])]
    if unit.manifest is None:
        cmd.append(str(root / unit.specs[0].name))
        log_path = root / unit.specs[0].name / "log.txt"
    else:
        cmd += ["--fleet", str(unit.manifest), "--mode", packing, *(str(root / name) for name in unit.members)]
        log_path = unit.manifest.with_suffix(".log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
        if code != 0:
            out.write(f"{FAILED_LINE} (exit status {code})\n")
    failed = f"failed (exit {code}; see {log_path})"
    return {s.name: "done" if status(root / s.name) == "done" else failed for s in unit.specs}


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
    argv, child_threads = sys.argv[1:], None
    if argv[0] == "--threads":  # --threads N, then the rest
        child_threads, argv = int(argv[1]), argv[2:]
    if argv[0] == "--fleet":  # --fleet MANIFEST --mode MODE RUN_DIR...
        sys.exit(fleet_child_main(argv[1], argv[4:], argv[3], child_threads))
    sys.exit(child_main(argv[0], child_threads))
