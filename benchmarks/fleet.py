"""Fleets on a CPU (:mod:`iwae.fleets.fleet`): M runs of one architecture stepped as one stacked computation, as M
ordinary steps one after another, and as ``make_fleet``'s automatic choice; examples per second per core, side by
side in one process; writes benchmarks/results/fleet.{json,md}.

    python -m benchmarks.fleet [--out benchmarks/results/fleet.json] [--repeats N] [--threads 1] [--quick]

Batch 20 (the paper's), synthetic MNIST-like intensities per run, each minibatch binarized with ``torch.bernoulli``
from the run's own generator (the one its reparameterisation noise comes from, as in ``iwae train``): the draw is
part of every timed step, in every mode. The three fleets of a row are built from the same seeds; after warm-up
they take turns window by window (stacked, loop, auto, stacked, ...), and each reports the median window.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from benchmarks/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from benchmarks import report
from iwae.fleets.fleet import StackedFleet, make_fleet
from iwae.models.model import IWAE
from iwae.objectives import Objective
from iwae.runs.train_step import make_optimizer

RESULTS = Path(__file__).parent / "results"
BATCH = 20
MODES = ("stacked", "loop", "auto")
# (row, bound, k, runs M, steps per timed window).
CONFIGS = (
    ("VAE k=1", "vae", 1, 10, 30),
    ("IWAE k=5", "iwae", 5, 10, 20),
    ("IWAE k=10", "iwae", 10, 10, 12),
    ("IWAE k=50", "iwae", 50, 4, 8),
)
# --quick: every row with 2 runs, one step per window, one warm-up step, 1 layer.
QUICK = {"layers": (1,), "runs": 2, "steps": 1, "warmup": 1}
FULL = {"layers": (1, 2), "runs": None, "steps": None, "warmup": 3}


def intensities(seed: int, n: int = 200) -> torch.Tensor:
    """A run's (n, 784) MNIST-like pixel intensities: about 13% of pixels on, images differing in brightness."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(784, generator=g).pow(4) * 0.6
    return (probs * (0.5 + torch.rand(n, 1, generator=g))).clamp(max=1.0)


def build(layers: int, bound: str, k: int, runs: int, mode: str):
    """A fleet of ``runs`` fresh paper models (seeds 0..runs-1) and its step: draw each run's minibatch, step."""
    models = [IWAE.paper(layers, generator=torch.Generator().manual_seed(m)) for m in range(runs)]
    gens = [torch.Generator().manual_seed(100 + m) for m in range(runs)]
    objectives = [Objective(bound, k)] * runs
    fleet = make_fleet(models, [make_optimizer(model) for model in models], objectives, gens, mode)
    data, lrs, position = [intensities(1000 + m) for m in range(runs)], [1e-3] * runs, [0]
    per_pass = data[0].shape[0] // BATCH

    def step() -> torch.Tensor:
        t = position[0]
        position[0] = (t + 1) % per_pass
        xs = [torch.bernoulli(d[t * BATCH : (t + 1) * BATCH], generator=g) for d, g in zip(data, gens)]
        return fleet.step(xs, lrs)

    return fleet, step


def windows(fns: dict, steps: int, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per step of every timed window of each function; the functions take turns window by window."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - start) / steps)
    return times


def measure_row(layers: int, config: tuple, sizes: dict, repeats: int, threads: int) -> dict:
    """One row of the table: the three modes of one fleet, timed side by side."""
    name, bound, k, runs, steps = config
    runs, steps = sizes["runs"] or runs, sizes["steps"] or steps
    built = {mode: build(layers, bound, k, runs, mode) for mode in MODES}
    times = windows({mode: step for mode, (_, step) in built.items()}, steps, repeats, sizes["warmup"])
    rate = {mode: runs * BATCH / statistics.median(ts) / threads for mode, ts in times.items()}
    spread = {mode: [runs * BATCH / max(ts) / threads, runs * BATCH / min(ts) / threads] for mode, ts in times.items()}
    auto = "stacked" if isinstance(built["auto"][0], StackedFleet) else "loop"
    ratio = rate["stacked"] / rate["loop"]
    return {
        "layers": layers, "config": name, "bound": bound, "k": k, "runs": runs, "steps_per_window": steps,
        "samples_x_examples": k * BATCH, "examples_per_s_per_core": rate, "range_per_core": spread,
        "stacked_over_loop": ratio, "auto_picked": auto, "faster": "stacked" if ratio > 1 else "loop",
        "auto_picked_faster": auto == ("stacked" if ratio > 1 else "loop"),
        "auto_over_loop": rate["auto"] / rate["loop"],
    }  # fmt: skip


def _table(rows: list[dict]) -> list[str]:
    lines = [
        "| layers | config | M | stacked ex/s | loop ex/s | auto ex/s | stacked/loop | auto picked | "
        "auto picked the faster |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate = r["examples_per_s_per_core"]
        right = "yes" if r["auto_picked_faster"] else "**no**"
        lines.append(
            f"| {r['layers']} | {r['config']} | {r['runs']} | {rate['stacked']:.0f} | {rate['loop']:.0f} | "
            f"{rate['auto']:.0f} | {r['stacked_over_loop']:.2f} | {r['auto_picked']} | {right} |"
        )
    return lines


def verdict(rows: list[dict]) -> list[str]:
    """The project's target on a CPU (a gain at k <= 5, no loss at k = 50) and whether auto chose right."""
    small = [r for r in rows if r["k"] <= 5]
    large = [r for r in rows if r["k"] >= 50]
    gain = all(r["stacked_over_loop"] > 1 and r["auto_picked"] == "stacked" for r in small)
    wrong = [f"{r['layers']}L {r['config']} (stacked/loop {r['stacked_over_loop']:.2f})" for r in rows]
    wrong = [w for w, r in zip(wrong, rows) if not r["auto_picked_faster"]]
    return [
        f"- Gain at k <= 5 (stacked faster and auto stacked): {'yes' if gain else '**no**'}; "
        + ", ".join(f"{r['layers']}L {r['config']} {r['stacked_over_loop']:.2f}x" for r in small)
        + ".",
        "- No loss at k = 50 (auto / loop): "
        + ", ".join(f"{r['layers']}L {r['auto_over_loop']:.2f} ({r['auto_picked']})" for r in large)
        + ".",
        "- Rows where auto (loop on a CPU) is the slower mode: " + (", ".join(wrong) if wrong else "none") + ".",
    ]


def markdown(result: dict) -> str:
    meta = result["meta"]
    return "\n".join([
        "# Fleets on a CPU: stacked against loop, batch 20",
        "",
        f"Examples per second per core (torch threads {result['threads']}): M runs x {BATCH} examples over the "
        f"median seconds of a fleet step, {result['repeats']} interleaved windows per mode after warm-up; each step "
        "includes binarizing every run's minibatch from its own generator. `stacked`: one vmap over the stacked "
        "parameters and per-run Adam rows; `loop`: the M ordinary steps one after another; `auto`: `make_fleet`'s "
        "choice (on a CPU: loop). The range of each rate over its windows is in the JSON (`range_per_core`).",
        "",
        *_table(result["rows"]),
        "",
        *verdict(result["rows"]),
        "",
        f"- Load average (1, 5, 15 min) before: {meta['load_before']}, after: {result['load_after']}.",
        *report.provenance(result),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    out_help = f"{report.OUT_HELP}; default benchmarks/results/fleet.json (--quick: none)"
    parser.add_argument("--out", type=Path, default=None, help=out_help)
    parser.add_argument("--repeats", type=int, default=None, help="timed windows per mode (default 9; --quick 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="1 layer, 2 runs per fleet, 1-step windows (seconds)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    repeats = args.repeats or (1 if args.quick else 9)
    meta = report.machine(torch.device("cpu"))
    rows = [measure_row(layers, c, sizes, repeats, args.threads) for layers in sizes["layers"] for c in CONFIGS]
    result = {
        "command": " ".join(["python -m benchmarks.fleet", *(sys.argv[1:] if argv is None else argv)]),
        "machine": f"{meta['cpu']}, {meta['cores']} cores, torch threads {meta['torch_threads']}, torch "
        f"{meta['torch']}, Python {meta['python']}; load average before {meta['load_before']}",
        "date": date.today().isoformat(), "meta": meta, "load_after": report.load_average(),
        "threads": args.threads, "repeats": repeats, "batch": BATCH, "rows": rows,
    }  # fmt: skip
    out = args.out or (None if args.quick else RESULTS / "fleet.json")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
    report.publish(result, markdown(result), out)
    return result


if __name__ == "__main__":
    main()
