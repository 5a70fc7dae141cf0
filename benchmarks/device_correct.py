"""The device check's correctness sections: fleets against single runs and CUDA graphs against eager steps,
``iwae.log_likelihood`` on the device against the CPU, and the compiled step against the eager one.

Every comparison starts from the same weights and feeds the same minibatches and the same noise: each run's
minibatch is binarised from its own generator, whose next draws are that step's noise (as ``iwae train`` draws them).
"""

from __future__ import annotations

import copy
import gzip
import math
import struct
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks import measure
from benchmarks.device_check import NEEDS_CUDA, Context, Section, Skip
from iwae.analysis.diagnostics import weight_diagnostics
from iwae.evaluate import log_likelihood
from iwae.fleets.fleet import make_fleet
from iwae.models.model import IWAE
from iwae.objectives import Objective
from iwae.runs.train_step import build_step, make_optimizer

# (loss relative, parameter absolute) tolerances of a comparison after up to 20 Adam steps at lr <= 1e-3. In float32
# a gradient near zero carries a rounding error of about 1e-6 that Adam (eps 1e-4) turns into a step of about lr/100:
# float32 runs drift apart by up to about 1e-4 (measured on a CPU); float64 is the strict comparison.
TOL = {torch.float32: (1e-5, 1e-3), torch.float64: (1e-12, 1e-10)}


def grey(n: int, device: torch.device, seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``n`` MNIST-like grey images (intensities in [0, 1], mostly dark), drawn on the CPU from ``seed``."""
    return torch.rand(n, 784, generator=torch.Generator().manual_seed(seed)).pow(4).to(device, dtype)


def mnist(ctx: Context, split: str) -> Tensor | None:
    """MNIST intensities of ``split`` on the CPU (iwae.data.load, else the idx file read here), None if absent."""
    key = f"mnist_{split}"
    if key not in ctx.shared:
        try:
            from iwae import data

            ctx.shared[key], source = data.load("mnist", split, ctx.data_dir), "iwae.data.load"
        except ImportError:  # numpy missing: read the idx file with torch alone
            ctx.shared[key], source = _read_idx(ctx.data_dir / "mnist", split), "the idx file, read here"
        except Exception as err:  # DataNotFoundError, DataFormatError
            ctx.shared[key], source = None, f"none ({type(err).__name__}: {err})"
        ctx.shared[f"{key}_source"] = source
    return ctx.shared[key]


def _read_idx(folder: Path, split: str) -> Tensor | None:
    name = "t10k-images-idx3-ubyte" if split == "test" else "train-images-idx3-ubyte"
    path = next((p for p in (folder / f"{name}.gz", folder / name) if p.exists()), None)
    if path is None:
        return None
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    _, n, rows, cols = struct.unpack(">4I", raw[:16])
    x = torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).view(n, rows * cols).float() / 255
    return x if split == "test" else x[:-400]


def _flat(models: list[IWAE]) -> Tensor:
    return torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models]).double().cpu()


def _setup(s: dict[str, Any], device: torch.device, dtype: torch.dtype) -> tuple[list, list, list, list, list]:
    """The runs of the fleet comparison: models, Adams, generators, objectives (mixed bounds), grey data."""
    runs = range(s["runs"])
    models = [IWAE.paper(s["layers"], generator=torch.Generator().manual_seed(m)).to(device, dtype) for m in runs]
    gens = [torch.Generator(device=device).manual_seed(100 + m) for m in runs]
    objectives = [Objective("vae" if m % 3 == 1 else "iwae", s["k"]) for m in runs]
    greys = [grey(8 * s["batch"], device, 50 + m, dtype) for m in runs]
    return models, [make_optimizer(model) for model in models], gens, objectives, greys


def _lrs(runs: int, t: int) -> list[float]:
    """Each run's learning rate at step t: they differ, and change at step 10 (a new stage)."""
    return [(1e-3 if t < 10 else 3e-4) / (1 + m % 2) for m in range(runs)]


def _minibatch(g: Tensor, t: int, batch: int, gen: torch.Generator) -> Tensor:
    start = (t * batch) % (g.shape[0] - batch + 1)
    return torch.bernoulli(g[start : start + batch], generator=gen)


def fleet_trajectory(
    mode: str, s: dict[str, Any], device: torch.device, dtype: torch.dtype, stats: dict | None = None
) -> tuple[Tensor, Tensor]:
    """Losses (steps, runs) and final parameters (runs, P) of ``make_fleet(..., mode)``; the fleet's graph
    bookkeeping (:attr:`iwae.fleets.fleet.StackedFleet.graph_stats`, and the mode it ran in) into ``stats``."""
    models, opts, gens, objectives, greys = _setup(s, device, dtype)
    fleet = make_fleet(models, opts, objectives, gens, mode)
    losses = []
    for t in range(s["steps"]):
        xs = [_minibatch(g, t, s["batch"], gen) for g, gen in zip(greys, gens)]
        losses.append(fleet.step(xs, _lrs(s["runs"], t)))
    fleet.sync()
    if stats is not None and hasattr(fleet, "graph_stats"):
        stats.update(fleet.graph_stats, mode_run=fleet.mode_run)
    return torch.stack(losses).double().cpu(), _flat(models)


def single_trajectories(s: dict[str, Any], device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The same runs, each alone through ``build_step``."""
    models, opts, gens, objectives, greys = _setup(s, device, dtype)
    losses = torch.empty(s["steps"], s["runs"], dtype=torch.float64)
    for m, (model, opt, gen, objective, g) in enumerate(zip(models, opts, gens, objectives, greys)):
        step = build_step(model, opt, objective, generator=gen)
        for t in range(s["steps"]):
            for group in opt.param_groups:
                group["lr"] = _lrs(s["runs"], t)[m]
            losses[t, m] = step(_minibatch(g, t, s["batch"], gen)).item()
    return losses, _flat(models)


def compare(
    sec: Section, name: str, got: tuple[Tensor, Tensor], want: tuple[Tensor, Tensor], dtype: torch.dtype, **info: Any
) -> None:
    """A check that two (losses, parameters) trajectories agree within ``dtype``'s tolerance."""
    loss_rel = float((got[0] - want[0]).abs().max() / want[0].abs().max().clamp_min(1e-30))
    param_abs = float((got[1] - want[1]).abs().max())
    tol_loss, tol_param = TOL[dtype]
    sec.check(
        name,
        loss_rel <= tol_loss and param_abs <= tol_param,
        loss_max_rel_diff=loss_rel,
        param_max_abs_diff=param_abs,
        tol_loss_rel=tol_loss,
        tol_param_abs=tol_param,
        bitwise=loss_rel == 0 and param_abs == 0,
        **info,
    )


def fleet_section(sec: Section, ctx: Context) -> None:
    """(a-ii) stacked fleet = M single runs; CUDA-graph fleet = stacked fleet; float32 and float64."""
    s = ctx.settings["fleet"]
    sec.record["values"]["setup"] = (
        f"{s['runs']} runs, {s['layers']} layers, k={s['k']} (mixed vae/iwae bounds), "
        f"batch {s['batch']}, {s['steps']} steps, learning rates per run changing at "
        "step 10"
    )
    for dtype in (torch.float32, torch.float64):
        name = str(dtype).removeprefix("torch.")
        if not sec.fits(f"fleet comparisons in {name}", 2):
            continue
        stacked = fleet_trajectory("stacked", s, ctx.device, dtype)
        singles = single_trajectories(s, ctx.device, dtype)
        compare(sec, f"stacked fleet = {s['runs']} single build_step runs ({name})", stacked, singles, dtype)
        if not ctx.cuda:
            sec.skip(f"graph fleet = stacked fleet ({name})", NEEDS_CUDA)
            continue
        stats: dict[str, Any] = {}
        graph = fleet_trajectory("graph", s, ctx.device, dtype, stats)
        # a failed capture falls back to eager steps, which would compare eager with eager and pass
        sec.check(f"graph fleet captured and replayed its CUDA graphs ({name})", stats.get("mode_run") == "graph",
                  **stats)  # fmt: skip
        compare(sec, f"graph fleet = stacked fleet ({name})", graph, stacked, dtype)
        compare(sec, f"graph fleet = {s['runs']} single build_step runs ({name})", graph, singles, dtype)


class SharedNoise:
    """``log_weights(x, k)`` of a model with its noise drawn on the CPU from one seeded generator, then moved to the
    model's device: the same draws whatever the device (CPU and CUDA generators give different streams)."""

    def __init__(self, model: IWAE, seed: int) -> None:
        self.model, self.gen = model, torch.Generator().manual_seed(seed)

    def log_weights(self, x: Tensor, k: int) -> Tensor:
        shapes = [(k, x.shape[0], d) for d in self.model.latent_dims]
        noise = [torch.randn(shape, generator=self.gen).to(x.device) for shape in shapes]
        return self.model.forward_samples(x, k, noise=noise).log_w


def ll_section(sec: Section, ctx: Context) -> None:
    """(a-iii) iwae.evaluate.log_likelihood on the device = on the CPU: with the same noise, to float32 rounding (and
    the weights' Pareto k-hat with it); with each device's own generator (different random streams), within Monte
    Carlo error."""
    s = ctx.settings["ll"]
    n, test = s["images"], mnist(ctx, "test")
    if test is None:
        x_grey, what = grey(n, torch.device("cpu"), 9), "synthetic"
    else:
        x_grey, what = test[:: max(1, test.shape[0] // n)][:n], "MNIST test"
    x = torch.bernoulli(x_grey, generator=torch.Generator().manual_seed(0))
    sec.record["values"].update(images=f"{x.shape[0]} binarised {what} images", k=s["k"], device_is_cpu=not ctx.cuda)
    model = IWAE.paper(1, output_bias=x_grey.mean(0), generator=torch.Generator().manual_seed(0))
    on_device, xd = copy.deepcopy(model).to(ctx.device), x.to(ctx.device)
    cpu = log_likelihood(SharedNoise(model, 7), x, s["k"]).double()
    dev = log_likelihood(SharedNoise(on_device, 7), xd, s["k"]).double().cpu()
    rel = float((cpu - dev).abs().max() / cpu.abs().max())
    sec.check(
        "L_k on the device = on the CPU (same noise)",
        rel <= 1e-5,
        max_abs_diff=float((cpu - dev).abs().max()),
        max_rel_diff=rel,
        tol_rel=1e-5,
        mean_nll_cpu=-float(cpu.mean()),
        mean_nll_device=-float(dev.mean()),
    )
    if sec.fits("the weights' diagnostics on the device", 1):
        khat_cpu = weight_diagnostics(SharedNoise(model, 7), x, s["k"]).khat
        khat_dev = weight_diagnostics(SharedNoise(on_device, 7), xd, s["k"]).khat.cpu()
        # (float32 rounding moves k-hat by about 1e-4: float32 against float64 on the CPU)
        gap = float((khat_cpu - khat_dev).abs().max())
        sec.check("Pareto k-hat of the weights on the device = on the CPU (same noise)", gap <= 2e-3,
                  max_abs_diff=gap, tol_abs=2e-3, median_khat=float(khat_cpu.median()))  # fmt: skip
    if not sec.fits("L_k with each device's own generator", 1):
        return
    a = log_likelihood(model, x, s["k"], generator=torch.Generator().manual_seed(1))
    gen = torch.Generator(device=ctx.device).manual_seed(2)  # seed 2: another stream even on the CPU
    d = a.double() - log_likelihood(on_device, xd, s["k"], generator=gen).double().cpu()
    # the per-example differences are independent with mean 0: their spread is the Monte Carlo error, measured
    se = float(d.std()) / math.sqrt(d.numel())
    z = float(d.mean()) / se if se > 0 else math.inf
    sec.check(
        "mean L_k on the device = on the CPU within Monte Carlo error (each device's own generator)",
        abs(z) <= 5,
        mean_diff=float(d.mean()),
        stderr_of_mean_diff=se,
        z=z,
        tol_z=5,
    )


def _compiled(sec: Section, ctx: Context, s: dict[str, Any]) -> None:
    """The compiled step (reduce-overhead) = the eager step on a copy of the model, same noise; then their times."""
    layers, k = s["layers"], s["k"]
    if not ctx.cuda:
        raise Skip(NEEDS_CUDA + " (torch.compile mode reduce-overhead)")
    if sec.left() < 40:  # a compilation cannot be cut short: start one only with room for it
        raise Skip(f"skipped: {sec.left():.0f} s left, a compilation takes up to a minute")
    model = IWAE.paper(layers, generator=torch.Generator().manual_seed(0)).to(ctx.device)
    copy_ = copy.deepcopy(model)
    objective = Objective("iwae", k)
    eager = build_step(model, make_optimizer(model), objective, generator=torch.Generator(ctx.device).manual_seed(3))
    gen = torch.Generator(ctx.device).manual_seed(3)
    compiled = build_step(copy_, make_optimizer(copy_), objective, generator=gen, compile=True)
    g = grey(8 * 20, ctx.device, 5)
    xs = [torch.bernoulli(g[i * 20 : (i + 1) * 20]) for i in range(8)]
    counters = torch._dynamo.utils.counters
    breaks, skips = sum(counters["graph_break"].values()), counters["inductor"]["cudagraph_skips"]
    start = time.perf_counter()
    losses = [(compiled(xs[0]).item(), eager(xs[0]).item())]
    sec.record["values"][f"{layers}L k={k} compile_seconds"] = time.perf_counter() - start
    # reduce-overhead may silently not apply: a graph break splits the step, a skipped CUDA graph runs it eagerly
    breaks = sum(counters["graph_break"].values()) - breaks
    skips = counters["inductor"]["cudagraph_skips"] - skips
    reasons = [str(r) for r in counters["graph_break"]]
    sec.check(f"compiled step: no graph break, no skipped CUDA graph ({layers}L k={k})", breaks == 0 and skips == 0,
              graph_breaks=breaks, cudagraph_skips=skips, break_reasons=reasons)  # fmt: skip
    losses += [(compiled(xs[t % 8]).item(), eager(xs[t % 8]).item()) for t in range(1, s["steps"])]
    got, want = torch.tensor(losses, dtype=torch.float64).T
    compare(
        sec,
        f"compiled step = eager step ({layers}L k={k}, {s['steps']} steps, float32)",
        (got, _flat([copy_])),
        (want, _flat([model])),
        torch.float32,
    )
    if not sec.fits(f"compiled step time {layers}L k={k}", 2):
        return
    cursor = iter(range(10**9))
    fns = {"eager": lambda: eager(xs[next(cursor) % 8]), "compiled": lambda: compiled(xs[next(cursor) % 8])}
    times = measure.time_interleaved(fns, s["calls"], s["repeats"], 3, ctx.device)
    for impl, t in times.items():
        sec.row(layers=layers, k=k, impl=impl, ms_per_step=t * 1e3, seconds_per_mnist_pass=t * 3000)


def compiled_section(sec: Section, ctx: Context) -> None:
    """(a-i) the compiled step against the eager step, 2 layers k = 50 (the configuration timed for the protocol)."""
    _compiled(sec, ctx, ctx.settings["compiled"])


def compiled_extra_section(sec: Section, ctx: Context) -> None:
    """The same for 1 layer k = 1, when the budget leaves room for another compilation."""
    _compiled(sec, ctx, ctx.settings["compiled_extra"])
