"""The CUDA path: a training step captured once as a CUDA graph and replayed, and the MNIST epoch time.

At batch 20 a step is a few hundred small kernels, so on a GPU the cost is kernel launches, not arithmetic. A CUDA
graph records the whole step (forward, backward, fused Adam) once and replays it with one launch. What this needs:

* static input: each batch is copied into one preallocated device tensor, and binarised on the device inside the
  graph (``torch.bernoulli`` on the grey levels, the paper's dynamic binarisation), so no host data and no host
  synchronisation per step;
* Adam with ``capturable=True`` (its step counter lives on the device); :func:`iwae.make_optimizer` builds the
  fused Adam and this module sets the flag before the first step;
* no host synchronisation inside the step (``iwae.IWAE`` applies its pruning masks on the GPU without asking the
  host whether any unit is pruned).

This file was written without access to a GPU: it has not been run on CUDA. :func:`graphed_step` falls back to the
eager step (and says so in the results) if capture fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

import iwae


def capturable_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """iwae.make_optimizer's fused Adam, with its state kept on the device so that a CUDA graph can replay it."""
    opt = iwae.make_optimizer(model)
    for group in opt.param_groups:
        group["capturable"] = True
    return opt


def graphed_step(
    step: Callable[[torch.Tensor], torch.Tensor], grey: torch.Tensor, warmup: int = 3
) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
    """Capture ``step(bernoulli(grey))`` as a CUDA graph; return (replay function, whether the capture worked).

    The replay function takes a (batch, x_dim) tensor of grey levels on the device, copies it into the static
    input and replays the graph; it returns the static loss tensor (read it only when you want to synchronise).
    """
    static_grey = grey.clone()

    def eager(g: torch.Tensor) -> torch.Tensor:
        return step(torch.bernoulli(g))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up on a side stream: lazy state (Adam moments, cuBLAS handles) is created
        for _ in range(warmup):
            step(torch.bernoulli(static_grey))
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            static_loss = step(torch.bernoulli(static_grey))
    except RuntimeError:
        return eager, False

    def replay(g: torch.Tensor) -> torch.Tensor:
        static_grey.copy_(g)
        graph.replay()
        return static_loss

    return replay, True


def project_step_cuda(layers: int, k: int, kind: str, estimator: str, grey: torch.Tensor):
    """The project's step on the GPU, graph-captured; returns (step taking grey levels, captured flag)."""
    torch.manual_seed(0)
    model = iwae.IWAE.paper(layers).to(grey.device)
    step = iwae.make_train_step(model, capturable_optimizer(model), k=k, bound=kind, estimator=estimator)
    return graphed_step(step, grey)


def epoch_seconds(
    layers: int = 2,
    k: int = 50,
    batch: int = 20,
    n_train: int = 60_000,
    passes: int = 1,
    max_seconds: float | None = None,
) -> dict:
    """Wall time of one pass over an MNIST-sized training set (grey levels on the device, shuffled on the device,
    binarised on the device inside the graph), IWAE with ``k`` samples; the host waits only at the end. With
    ``max_seconds``, the pass stops once that much time has gone (checked every 500 steps; a failed capture steps
    eagerly, far slower) and its time is extrapolated from the steps taken (``extrapolated``: True)."""
    device = torch.device("cuda")
    g = torch.Generator(device=device).manual_seed(0)
    grey = torch.rand(n_train, 784, device=device, generator=g).pow(4)  # MNIST-like intensities in [0, 1]
    replay, captured = project_step_cuda(layers, k, "iwae", "reparam", grey[:batch])
    n_steps = n_train // batch
    torch.cuda.synchronize()
    start, done = time.perf_counter(), 0
    for _ in range(passes):
        order = torch.randperm(n_train, device=device, generator=g)
        for i in range(n_steps):
            loss = replay(grey[order[i * batch : (i + 1) * batch]])
            done += 1
            if max_seconds is not None and done % 500 == 0 and time.perf_counter() - start > max_seconds:
                break
        else:
            continue
        break
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) * n_steps / done
    return {
        "layers": layers,
        "k": k,
        "batch": batch,
        "steps": n_steps,
        "steps_timed": done,
        "extrapolated": done < n_steps * passes,
        "seconds_per_pass": seconds,
        "cuda_graph": captured,
        "final_loss": float(loss),
        "device": torch.cuda.get_device_name(device),
    }
