"""The device check's timing sections: training steps (eager, graphed), fleets, an MNIST pass and L_5000.

Every time is the median over repeats of a window of calls, the host synchronising with the device only at the
edges of each window (``benchmarks.measure.time_interleaved``). Data are MNIST-like grey images on the device,
binarised afresh at every step, as in training.
"""

from __future__ import annotations

import functools
import gc
import itertools
import time
from typing import Any

import torch

from benchmarks import gpu, measure
from benchmarks.device_check import NEEDS_CUDA, Context, Section
from benchmarks.device_correct import grey, mnist
from iwae.evaluate import log_likelihood
from iwae.fleets.fleet import make_fleet
from iwae.models.model import IWAE
from iwae.objectives import Objective
from iwae.runs.train_step import build_step, make_optimizer

BATCH = 20
MNIST_STEPS = 3000  # steps of batch 20 in a pass over 60,000 images (the project trains on 59,600: 2,980)


def _cycle(batches: torch.Tensor) -> itertools.cycle:
    return itertools.cycle(list(batches))


def steps_section(sec: Section, ctx: Context) -> None:
    """(b) one model's step at batch 20: eager, and on CUDA captured as one graph (benchmarks/gpu.py)."""
    s = ctx.settings["steps"]
    batches = grey(8 * BATCH, ctx.device, 1).view(8, BATCH, -1)
    if not ctx.cuda:
        sec.skip("graphed steps", NEEDS_CUDA)
    for layers, k in itertools.product(s["layers"], s["ks"]):
        if not sec.fits(f"step times {layers}L k={k}", 1.5):
            continue
        torch.manual_seed(0)
        model = IWAE.paper(layers).to(ctx.device)
        step = build_step(model, make_optimizer(model), Objective("iwae", k))
        cycle = _cycle(batches)
        fns = {"eager": lambda step=step, cycle=cycle: step(torch.bernoulli(next(cycle)))}
        if ctx.cuda:
            capture = functools.partial(gpu.project_step_cuda, layers, k, "iwae", "reparam", batches[0])
            captured = sec.attempt(f"graph capture {layers}L k={k}", capture)
            if captured is not None:
                replay, ok = captured
                fns["graphed" if ok else "graphed (capture failed: eager)"] = lambda r=replay, c=cycle: r(next(c))
        times = measure.time_interleaved(fns, s["calls"], s["repeats"], s["warmup"], ctx.device)
        for impl, t in times.items():
            sec.row(layers=layers, k=k, impl=impl, ms_per_step=t * 1e3, seconds_per_mnist_pass=t * MNIST_STEPS)


def fleet_step_time(
    layers: int, k: int, runs: int, mode: str, s: dict[str, Any], device: torch.device
) -> tuple[float, str]:
    """Seconds per step of a fleet of ``runs`` paper models (IWAE, k samples), each run's minibatch gathered
    from its own order of the images and binarised from its own generator, as ``iwae.fleets.fleet_train`` does; and the
    mode its steps actually ran in (a failed graph capture steps eagerly)."""
    if device.type == "cuda":  # the memory of the fleets timed before, their CUDA graphs' pools included
        gc.collect()
        torch.cuda.empty_cache()
    models = [IWAE.paper(layers, generator=torch.Generator().manual_seed(m)).to(device) for m in range(runs)]
    gens = [torch.Generator(device=device).manual_seed(100 + m) for m in range(runs)]
    opts = [make_optimizer(model) for model in models]
    fleet = make_fleet(models, opts, [Objective("iwae", k)] * runs, gens, mode)
    images = grey(s["images"], device, 2)
    orders = [torch.randperm(s["images"], generator=torch.Generator().manual_seed(m)).to(device) for m in range(runs)]
    starts, lrs = itertools.cycle(range(0, s["images"] - BATCH + 1, BATCH)), [1e-3] * runs

    def step() -> torch.Tensor:
        t = next(starts)
        xs = [torch.bernoulli(images[order[t : t + BATCH]], generator=g) for order, g in zip(orders, gens)]
        return fleet.step(xs, lrs)

    seconds = measure.time_interleaved({"fleet": step}, s["steps"], s["repeats"], s["warmup"], device)["fleet"]
    return seconds, getattr(fleet, "mode_run", mode)


def fleet_row(sec: Section, ctx: Context, layers: int, k: int, runs: int, mode: str) -> dict[str, Any] | None:
    """Time one fleet and record it as a row (an error is recorded and the section goes on)."""
    s = ctx.settings["fleets"]
    timed = sec.attempt(
        f"fleet {layers}L k={k} M={runs} {mode}", lambda: fleet_step_time(layers, k, runs, mode, s, ctx.device)
    )
    if timed is None:
        return None
    t, ran = timed  # the row records the mode that ran, which a failed capture turns from graph into stacked
    row = dict(layers=layers, k=k, M=runs, mode=ran, asked=mode, ms_per_fleet_step=t * 1e3, model_steps_per_s=runs / t)
    sec.row(**row)
    return row


def fleets_section(sec: Section, ctx: Context) -> None:
    """(b) fleets of M runs (M = 1, 8, 32, 64): step time and model-steps per second, graph and stacked modes."""
    s = ctx.settings["fleets"]
    for (layers, k), mode in itertools.product(s["configs"], s["modes"]):
        if mode == "graph" and not ctx.cuda:
            sec.skip(f"fleet {layers}L k={k} mode graph", NEEDS_CUDA)
            continue
        for runs in s["Ms"]:
            if sec.fits(f"fleet {layers}L k={k} M={runs} {mode}", 1.0):
                fleet_row(sec, ctx, layers, k, runs, mode)


def epoch_section(sec: Section, ctx: Context) -> None:
    """(b) one pass over 60,000 MNIST-sized images, 2 layers IWAE k = 50, graph-captured (benchmarks/gpu.py)."""
    result = gpu.epoch_seconds(layers=2, k=50, max_seconds=max(1.0, sec.left() - 2.0))  # within its budget
    sec.row(**result)
    sec.record["values"]["seconds_per_pass"] = result["seconds_per_pass"]


def _timed(fn: Any, device: torch.device) -> tuple[float, Any]:
    measure.sync(device)
    start = time.perf_counter()
    out = fn()
    measure.sync(device)
    return time.perf_counter() - start, out


def ll5000_section(sec: Section, ctx: Context) -> None:
    """(b) L_5000 of a 1-layer paper model on the MNIST test set, on the device, at each chunk size. A probe on a
    slice first: where the whole set would not fit in the budget, the probe's time is scaled up (marked so)."""
    s = ctx.settings["ll5000"]
    test = mnist(ctx, "test")
    source = "MNIST test" if test is not None else "synthetic (no MNIST test file)"
    x_grey = (test if test is not None else grey(s["images"], torch.device("cpu"), 3))[: s["images"]]
    x = torch.bernoulli(x_grey, generator=torch.Generator().manual_seed(0)).to(ctx.device)
    model = IWAE.paper(1, output_bias=x_grey.mean(0), generator=torch.Generator().manual_seed(0)).to(ctx.device)
    sec.record["values"].update(
        images=f"{x.shape[0]} {source} images",
        k=s["k"],
        model="1 layer, untrained",
        read_by=ctx.shared.get("mnist_test_source"),
    )
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    for chunk in s["chunks"]:
        if not sec.fits(f"L_{s['k']} chunk {chunk}", 1):
            continue
        probe, _ = _timed(
            lambda c=chunk: log_likelihood(model, x[: s["probe"]], s["k"], chunk_size=c, generator=gen), ctx.device
        )
        estimate = probe * x.shape[0] / min(s["probe"], x.shape[0])
        row = dict(k=s["k"], images=x.shape[0], chunk_size=chunk)
        if estimate > sec.left():
            sec.row(**row, seconds=estimate, extrapolated_from_images=s["probe"])
            continue
        seconds, ll = _timed(lambda c=chunk: log_likelihood(model, x, s["k"], chunk_size=c, generator=gen), ctx.device)
        sec.row(**row, seconds=seconds, images_per_s=x.shape[0] / seconds, mean_nll=-float(ll.mean()))
