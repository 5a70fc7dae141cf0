r"""A run's evaluation sharded across processes with torch.distributed (gloo on the CPU, NCCL on GPUs).

``torchrun --nproc-per-node N -m iwae evaluate RUN`` (or ``iwae evaluate RUN --nproc N``, which starts the N
processes itself on this machine) splits the split's examples into blocks of :data:`BLOCK` and gives each process
a contiguous range of blocks. The importance samples of block ``b`` (and the samples behind A_u of its examples)
come from a stream of their own, the evaluation stream's block ``b`` (:mod:`iwae.util.streams`), so every example sees
the same noise whatever the number of processes: the result is the same for every world size, to the order of
float64 sums. Per-example L_k values and the A_u moments are summed across processes (``all_reduce``); process 0
alone writes the file. Each process keeps the blocks it has scored (:class:`iwae.runs.eval_progress.BlockProgress`),
so an evaluation stopped and started again, with any number of processes, scores only the blocks missing.

This is another draw of the noise than the single stream of ``iwae evaluate`` without ``--nproc`` (the one every
``metrics.json`` was computed with), so its numbers differ from ``metrics.json``'s by Monte Carlo noise of the
order of their standard errors, and equal those of ``--nproc 1``.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from iwae.evaluate import count_active, log_likelihood
from iwae.models.model import IWAE
from iwae.runs.config import TrainConfig
from iwae.runs.eval_progress import BlockProgress, measurement
from iwae.runs.evaluate_run import ACTIVE_SPLIT, check_split, eval_images, scored_passes, summarize
from iwae.runs.rundir import load_run
from iwae.util import streams
from iwae.util.atomic import write_json
from iwae.util.cpu import flush_subnormals

__all__ = ["BLOCK", "block_generator", "shard", "log_likelihood_blocks", "active_units_blocks", "evaluate_sharded"]

BLOCK = 256  # examples per noise block: a multiple of the 32 examples per call of log_likelihood at large k


def block_generator(config: TrainConfig, split: str, purpose: str, block: int, device: torch.device) -> torch.Generator:
    """The generator of block ``block`` of the run's evaluation stream (split, purpose) (:mod:`iwae.util.streams`)."""
    return streams.generator(config.seed, "eval", split, purpose, "block", block, device=device, scheme=config.streams)


def shard(n: int) -> range:
    """The blocks of n examples that this process evaluates (all of them outside torch.distributed)."""
    rank, size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    blocks = math.ceil(n / BLOCK)
    return range(blocks * rank // size, blocks * (rank + 1) // size)


def _sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def log_likelihood_blocks(
    model: IWAE, x: torch.Tensor, k: int, config: TrainConfig, split: str, progress: BlockProgress | None = None
) -> torch.Tensor:
    """Per-example L_k of every row of x (float64, on every process), each block drawn by its own generator; with
    ``progress``, the blocks saved by an evaluation that stopped are taken from there, and this process's are
    saved as it goes."""
    ll = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    # every block read is kept in this process's file too: processes of an earlier start may have held them
    mine = progress.load() if progress is not None else {}
    for b in shard(x.shape[0]):
        rows = slice(b * BLOCK, (b + 1) * BLOCK)
        if b in mine and mine[b].shape[0] == ll[rows].shape[0]:
            mine[b] = mine[b].to(x.device)
        else:
            gen = block_generator(config, split, "nll", b, x.device)
            mine[b] = log_likelihood(model, x[rows], k, generator=gen, flush_denormal=config.flush_denormal).double()
            if progress is not None:
                progress.save(mine)
        ll[rows] = mine[b]
    if progress is not None:
        progress.save(mine, force=True)
    return _sum(ll)


@torch.no_grad()
def active_units_blocks(model: IWAE, x: torch.Tensor, config: TrainConfig) -> list[torch.Tensor]:
    """A_u per layer (:func:`iwae.evaluate.active_units`) from float64 moments summed over blocks and processes."""
    moments = torch.zeros(2, sum(model.latent_dims), dtype=torch.float64, device=x.device)
    for b in shard(x.shape[0]):
        gen = block_generator(config, ACTIVE_SPLIT, "active", b, x.device)
        means = model.posterior_means(x[b * BLOCK : (b + 1) * BLOCK], generator=gen)
        means = torch.cat([m.double() for m in means], 1)  # (rows, sum of the layers' units)
        moments += torch.stack([means.sum(0), means.square().sum(0)])
    mean, square = _sum(moments) / x.shape[0]
    return [a.float() for a in (square - mean.square()).clamp_min(0).split(list(model.latent_dims))]


def _evaluate(run_dir: str, k: int | None, split: str, n: int | None, data_dir: str | None) -> dict[str, Any]:
    """The sharded evaluation in this process; process 0 writes ``eval-<split>-k<k>-n<n>-blocks.json``."""
    config, model, position = load_run(run_dir, data_dir)
    model.eval()
    k, n, device, seed = k or config.eval_k, n or config.eval_n, next(model.parameters()).device, config.seed
    x = eval_images(config, check_split(split), n, device, seed)
    x_active = eval_images(config, ACTIVE_SPLIT, n, device, seed)
    rank = dist.get_rank() if dist.is_initialized() else 0
    stem = f"eval-{split}-k{k}-n{x.shape[0]}-blocks"
    # (its threads left out: the processes' blocks are summed, however many there were and on how many threads)
    identity = {**measurement(config, model, x, split, "nll", k), "threads": None, "block": BLOCK}
    progress = BlockProgress(run_dir, stem, identity, rank)
    with flush_subnormals(config.flush_denormal):
        A = active_units_blocks(model, x_active, config)
        ll = log_likelihood_blocks(model, x, k, config, split, progress)
    result = {
        "split": split, "eval_k": k, **summarize(ll), "active_units": count_active(A, config.active_threshold),
        "active_units_split": ACTIVE_SPLIT, "active_units_n": x_active.shape[0],
        "active_threshold": config.active_threshold, "noise": f"per block of {BLOCK} examples",
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "passes": scored_passes(Path(run_dir), config, position),
    }  # fmt: skip
    if rank == 0:
        write_json(Path(run_dir) / f"{stem}.json", result)
        progress.remove()  # after the all_reduce of log_likelihood_blocks: every process's blocks are in
    return result


def _rank_main(rank: int, size: int, port: int, threads: int, args: tuple, results: Any) -> None:
    """One process of :func:`evaluate_sharded` started by ``torch.multiprocessing.spawn``."""
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    try:
        result = _evaluate(*args)
        if rank == 0:
            results.put(result)
    finally:
        dist.destroy_process_group()


def evaluate_sharded(run_dir: str | Path, k: int | None = None, split: str = "test", n: int | None = None, *,
                     nproc: int | None = None, data_dir: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The block-noise evaluation of one split: under ``torchrun`` (``WORLD_SIZE`` set) in this process's share,
    else in ``nproc`` processes on this machine (gloo on the loopback), else here alone."""
    args = (str(run_dir), k, split, n, data_dir)
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        if torch.cuda.is_available():  # one GPU per process: "cuda" is this process's own
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        try:
            return _evaluate(*args)
        finally:
            dist.destroy_process_group()
    if not nproc or nproc == 1:
        return _evaluate(*args)
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.get_context("spawn").SimpleQueue()
    threads = max(1, torch.get_num_threads() // nproc)
    mp.spawn(_rank_main, args=(nproc, port, threads, args, results), nprocs=nproc, join=True)
    return results.get()
