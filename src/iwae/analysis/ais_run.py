"""A saved run's NLL by annealed importance sampling (:func:`iwae.ais.ais_log_likelihood`, ``iwae ais``).

The images are those of the run's own evaluation (:func:`iwae.runs.evaluate_run.eval_images`: n spread through the
split, binarized by its stream), so the result pairs image by image with ``iwae evaluate --n`` on the same n; the
chains' noise comes from the split's ``ais`` stream of the run's seed. The result is written to
``ais-<split>-s<steps>-c<chains>-n<n>.json`` in the run folder (``...-prior.json`` for chains annealed from the
prior, ``...-both.json`` for both starts pooled), with the per-image estimates. Meanwhile the
estimates so far are kept after each block of :data:`BLOCK` images (with the state of the chains' generator, as
:mod:`iwae.runs.eval_progress` keeps an evaluation's), so a stopped ``iwae ais`` run again goes on where it was, to
the numbers of one that never stopped.

:func:`bdmc_run` measures instead how close such AIS comes to log p(x), by bidirectional Monte Carlo
(:func:`iwae.bdmc`) on n data simulated from the run's model (drawn from the test split's ``ais`` stream too):
``bdmc-s<steps>-c<chains>-n<n>.json`` (``...-prior.json`` from the prior).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from iwae.ais import anneal_starts, bdmc, check_anneal_from, iter_ais_log_likelihood
from iwae.runs.eval_progress import PROGRESS_SUFFIX, measurement, resumable_blocks, saved_seconds
from iwae.runs.evaluate_run import check_split, eval_images, stream, summarize
from iwae.runs.rundir import RunError, load_run
from iwae.util.atomic import write_json

__all__ = ["ais_run", "bdmc_run"]

BLOCK = 256  # images annealed at a time (ais_log_likelihood's default): the progress is kept after each


def _check_methods(run_dir: str | Path, model: torch.nn.Module, methods: list[str]) -> None:
    """A RunError naming the methods a model of one's own lacks for this AIS (the paper's model has them all)."""
    missing = [m for m in methods if not callable(getattr(model, m, None))]
    if missing:
        raise RunError(f"{run_dir}: its model ({type(model).__name__}) has no {' and '.join(missing)}, which this "
                       "AIS reads (iwae.IWAE's and iwae.GaussianLatentModel's say what each gives); anneal from q "
                       "(--from q), on test images (no --simulated)")  # fmt: skip


def _file_stem(stem: str, anneal_from: str) -> str:
    """A result's file name without its extension: ``stem``, then ``-prior`` or ``-both`` unless annealed from q."""
    return stem + ("" if anneal_from == "q" else f"-{anneal_from}")


def ais_run(
    run_dir: str | Path,
    steps: int = 500,
    chains: int = 16,
    split: str = "test",
    n: int = 100,
    *,
    data_dir: str | None = None,
    device: str | None = None,
    anneal_from: str = "q",
    progress: bool = False,
) -> dict[str, Any]:
    """AIS NLL of the run's model on n images of ``split`` (module docstring): ``nll``, ``nll_sem``, ``n``, the
    settings, the seconds and the per-image estimates ``ll``; written to the run folder and returned.
    ``anneal_from``: ``"q"``, ``"prior"`` or ``"both"`` (:func:`iwae.ais_log_likelihood`)."""
    check_split(split)
    check_anneal_from(anneal_from)
    config, model, _ = load_run(run_dir, data_dir, device)
    _check_methods(run_dir, model, ["log_px_at_prior_noise"] if anneal_from != "q" else [])
    dev = next(model.parameters()).device
    x = eval_images(config, split, n, dev, config.seed).to(next(model.parameters()).dtype)
    name = _file_stem(f"ais-{split}-s{steps}-c{chains}-n{x.shape[0]}", anneal_from)
    path = Path(run_dir) / f"{name}{PROGRESS_SUFFIX}"
    generator = stream(config, dev, split, "ais")
    identity = {**measurement(config, model, x, split, "ais", chains), "steps": steps, "block": BLOCK,
                **({} if anneal_from == "q" else {"anneal_from": anneal_from})}  # fmt: skip

    def scored(start: int) -> Iterator[tuple[int, torch.Tensor]]:
        blocks = iter_ais_log_likelihood(model, x, steps, chains, block=BLOCK, generator=generator, start=start,
                                         bar=bar, anneal_from=anneal_from,
                                         flush_denormal=config.flush_denormal)  # fmt: skip
        with closing(blocks):
            yield from blocks

    per_example = steps * len(anneal_starts(anneal_from))  # annealing steps an image takes
    with tqdm(total=per_example * x.shape[0], desc="AIS", unit="step", disable=not progress, leave=False) as bar:
        ll = resumable_blocks(x, BLOCK, generator, path, identity, scored, bar=bar, per_example=per_example)
    result = {"split": split, "steps": steps, "chains": chains, "anneal_from": anneal_from, **summarize(ll),
              "seconds": saved_seconds(path), "ll": ll.tolist(), "file": f"{name}.json"}  # fmt: skip
    write_json(Path(run_dir) / f"{name}.json", result)
    path.unlink()
    return result


def bdmc_run(
    run_dir: str | Path,
    steps: int = 500,
    chains: int = 16,
    n: int = 100,
    *,
    device: str | None = None,
    anneal_from: str = "q",
    progress: bool = False,
) -> dict[str, Any]:
    """Bidirectional Monte Carlo on n data simulated from the run's model (module docstring): the mean forward-AIS
    ``lower`` and reverse-AIS ``upper`` estimates of log p(x), their paired ``gap`` with its standard error
    ``gap_sem`` (a bound, in expectation, on AIS's error with these settings), the settings, the seconds and the
    per-example estimates; written to the run folder (``...-prior.json`` from the prior) and returned."""
    check_anneal_from(anneal_from)
    config, model, _ = load_run(run_dir, device=device)
    _check_methods(
        run_dir, model, ["simulate"] + (["log_px_at_prior_noise", "prior_noise"] if anneal_from != "q" else [])
    )
    dev = next(model.parameters()).device
    start = time.perf_counter()
    result = bdmc(model, n, steps=steps, chains=chains, generator=stream(config, dev, "test", "ais"),
                  anneal_from=anneal_from, flush_denormal=config.flush_denormal, progress=progress)  # fmt: skip
    gap = (result.upper - result.lower).double()
    out = {"steps": steps, "chains": chains, "n": n, "lower": result.lower.double().mean().item(),
           "upper": result.upper.double().mean().item(), "gap": gap.mean().item(),
           "gap_sem": (gap.std() / n**0.5).item() if n > 1 else float("nan"),
           "seconds": time.perf_counter() - start, "lower_ll": result.lower.double().tolist(),
           "upper_ll": result.upper.double().tolist()}  # fmt: skip
    name = _file_stem(f"bdmc-s{steps}-c{chains}-n{n}", anneal_from)
    out = {**out, "anneal_from": anneal_from, "file": f"{name}.json"}
    write_json(Path(run_dir) / f"{name}.json", out)
    return out
