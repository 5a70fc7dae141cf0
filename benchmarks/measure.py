"""Timing, the machine's matmul ceiling, FLOP counts, and log_likelihood throughput and peak memory.

Timing: every function is warmed up, then timed with ``time.perf_counter`` over ``steps`` calls per repeat; the
functions being compared take turns repeat by repeat (A, B, C, A, B, C, ...), so that a change in the load on a
shared machine hits all of them alike, and each reports the median over repeats.

Peak memory: torch's CPU allocations are invisible to ``tracemalloc``, so :func:`log_likelihood_memory` runs the
evaluation in a fresh Python process, resets the kernel's resident-set high-water mark (``/proc/self/clear_refs``)
just before it and reads ``VmHWM`` just after: the difference from the resident set before is the peak memory the
evaluation added. Where that reset is unavailable it falls back to ``resource.getrusage().ru_maxrss`` before and
after, which can only under-count (an earlier, higher mark hides the evaluation's).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import iwae

# Matmul shapes (m, k, n) for the ceiling: the paper networks' layers at k * batch = 1000 rows, and a square one.
CEILING_SHAPES = ((1000, 200, 784), (1000, 784, 200), (1000, 200, 200), (2048, 2048, 2048))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], object]], steps: int, repeats: int, warmup: int, device: torch.device
) -> dict[str, float]:
    """Median seconds per call of each function; the functions alternate repeat by repeat."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(ts) for name, ts in times.items()}


def matmul_ceiling(device: torch.device, repeats: int = 5, min_seconds: float = 0.05) -> dict:
    """Measured float32 GEMM throughput: the best median GFLOP/s over :data:`CEILING_SHAPES`."""
    per_shape = {}
    for m, k, n in CEILING_SHAPES:
        a = torch.randn(m, k, device=device)
        b = torch.randn(k, n, device=device)
        flops = 2.0 * m * k * n
        calls = max(1, int(min_seconds * 100e9 / flops))  # about min_seconds at 100 GFLOP/s
        t = time_interleaved({"mm": lambda a=a, b=b: a @ b}, calls, repeats, 3, device)["mm"]
        per_shape[f"{m}x{k}x{n}"] = flops / t / 1e9
    return {"gflops": max(per_shape.values()), "per_shape_gflops": per_shape, "shapes": "m x k x n, float32"}


def _linear_macs(module: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def step_flops(model: iwae.IWAE, k: int, batch: int, kind: str = "iwae", estimator: str = "reparam") -> float:
    """The minimum FLOPs of one training step: q(h^1 | x) once per example, every other conditional once per sample
    (q(h^l | h^(l-1)) for l >= 2 reads a sample), backward about twice the forward. Matmuls only.

    For ``estimator="sample-one"`` the k-sample forward pass has no backward and one sample gets forward + backward.
    """
    first = _linear_macs(model.encoder[0])
    rest = sum(_linear_macs(m) for m in model.encoder[1:]) + _linear_macs(model.decoder)
    forward = 2.0 * batch * (first + k * rest)
    if estimator == "sample-one":
        return forward + 3 * 2.0 * batch * (first + rest)
    return 3 * forward


def log_likelihood_flops(model: iwae.IWAE, k: int, n_images: int) -> float:
    """Minimum FLOPs of L_k on n images: q(h^1 | x) once per image, the rest once per sample. Forward only."""
    first = _linear_macs(model.encoder[0])
    rest = sum(_linear_macs(m) for m in model.encoder[1:]) + _linear_macs(model.decoder)
    return 2.0 * n_images * (first + k * rest)


def synthetic_binary(n: int, x_dim: int = 784, seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """MNIST-like binary images: each pixel on with a per-pixel probability (about 13% of pixels on, as in MNIST)."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(x_dim, generator=g).pow(4) * 0.6  # mean about 0.12, many pixels nearly always off
    return torch.bernoulli(probs.expand(n, x_dim), generator=g).to(device)


def log_likelihood_throughput(
    layers: int, k: int, n_images: int, total_images: int, device: torch.device, repeats: int = 3
) -> dict:
    """Time iwae.log_likelihood(model, x, k) on ``n_images`` images and extrapolate to ``total_images``."""
    torch.manual_seed(0)
    model = iwae.IWAE.paper(layers).to(device).eval()
    x = synthetic_binary(n_images, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    run = {"ll": lambda: iwae.log_likelihood(model, x, k=k, generator=gen)}
    seconds = time_interleaved(run, 1, repeats, 1, device)["ll"]
    flops = log_likelihood_flops(model, k, n_images)
    return {
        "layers": layers,
        "k": k,
        "images_timed": n_images,
        "seconds": seconds,
        "images_per_s": n_images / seconds,
        "samples_per_s": n_images * k / seconds,
        "gflops": flops / seconds / 1e9,
        "extrapolated_images": total_images,
        "extrapolated_seconds": seconds * total_images / n_images,
    }


_MEMORY_CHILD = """
import json, resource, sys, torch, iwae
layers, k, n, threads = map(int, sys.argv[1:5])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = iwae.IWAE.paper(layers).eval()
x = torch.bernoulli(torch.full((n, 784), 0.13))
iwae.log_likelihood(model, x[:2], k=2)  # load every kernel once, so only the evaluation's memory is measured

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

try:  # Linux: reset the high-water mark (VmHWM) to the current resident set
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before, method = status("VmRSS"), "VmHWM after minus VmRSS before (high-water mark reset), fresh process"
except OSError:
    before, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss after minus before, fresh process"
iwae.log_likelihood(model, x, k=k)
after = status("VmHWM") if method.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kib": before, "after_kib": after, "process_peak_kib": max(peak, after), "method": method}))
"""


def log_likelihood_memory(layers: int, k: int, n_images: int, threads: int) -> dict:
    """Peak resident memory that iwae.log_likelihood adds, measured in a fresh process (see the module docstring)."""
    args = [sys.executable, "-c", _MEMORY_CHILD, str(layers), str(k), str(n_images), str(threads)]
    src = str(Path(iwae.__file__).resolve().parents[1])
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=_env_with_path(src))
    usage = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "layers": layers,
        "k": k,
        "images": n_images,
        "process_peak_mib": usage["process_peak_kib"] / 1024,
        "added_peak_mib": (usage["after_kib"] - usage["before_kib"]) / 1024,
        "method": usage["method"],
    }


def _env_with_path(src: str) -> dict:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_gemms(model: iwae.IWAE, k: int, batch: int) -> list[tuple[str, nn.Linear, int]]:
    """The GEMMs of a reparam training step as (kind, layer, rows): every linear layer's ``forward`` (bias fused),
    ``weight`` gradient and ``input`` gradient, q(h^1 | x)'s layers at ``batch`` rows and every other layer at
    ``k * batch`` rows; the layer that reads x needs no input gradient."""
    first = {id(m) for m in model.encoder[0].modules()}
    reads_x = model.encoder[0].trunk[0] if len(model.encoder[0].trunk) else model.encoder[0].mean
    out = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            rows = batch if id(module) in first else k * batch
            kinds = ("forward", "weight") if module is reads_x else ("forward", "weight", "input")
            out += [(kind, module, rows) for kind in kinds]
    return out


def step_floor(model: iwae.IWAE, k: int, batch: int, device: torch.device, repeats: int = 5) -> dict:
    """What any implementation of a reparam training step must spend on this machine, measured: the step's GEMMs
    (:func:`step_gemms`) alone, timed back to back, and one Adam update of the model's parameters
    (``iwae.make_optimizer``, fused).

    Elementwise work (tanh, exp, the Bernoulli log-likelihood), the noise and the framework are left out, so a real
    step is always slower: the floor over a peer's step time bounds the ratio any implementation could reach.
    """
    gemms = []
    for kind, module, rows in step_gemms(model, k, batch):
        w, b = module.weight.detach().to(device), module.bias.detach().to(device)
        x = torch.randn(rows, module.in_features, device=device)
        g = torch.randn(rows, module.out_features, device=device)
        if kind == "forward":
            gemms.append(lambda x=x, w=w, b=b: torch.addmm(b, x, w.t()))
        elif kind == "weight":
            gemms.append(lambda x=x, g=g: g.t().mm(x))
        else:
            gemms.append(lambda g=g, w=w: g.mm(w))

    def all_gemms() -> None:
        for fn in gemms:
            fn()

    params = nn.ParameterList(p.detach().clone().to(device) for p in model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = iwae.make_optimizer(params)
    t = time_interleaved({"gemm": all_gemms, "adam": opt.step}, 20, repeats, 3, device)
    return {"gemm_ms": t["gemm"] * 1e3, "adam_ms": t["adam"] * 1e3, "floor_ms": (t["gemm"] + t["adam"]) * 1e3}
