"""A saved run's NLL by annealed importance sampling (:func:`iwae.ais.ais_log_likelihood`, ``iwae ais``).

The images are those of the run's own evaluation (:func:`iwae.runs.evaluate_run.eval_images`: n spread through the
split, binarized by its stream), so the result pairs image by image with ``iwae evaluate --n`` on the same n; the
chains' noise comes from the split's ``ais`` stream of the run's seed. The result is written to
``ais-<split>-s<steps>-c<chains>-n<n>.json`` in the run folder, with the per-image estimates.

:func:`bdmc_run` measures instead how close such AIS comes to log p(x), by bidirectional Monte Carlo
(:func:`iwae.bdmc`) on n data simulated from the run's model (drawn from the test split's ``ais`` stream too):
``bdmc-s<steps>-c<chains>-n<n>.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from iwae.ais import ais_log_likelihood, bdmc
from iwae.runs.evaluate_run import check_split, eval_images, stream, summarize
from iwae.runs.rundir import load_run
from iwae.util.atomic import write_json

__all__ = ["ais_run", "bdmc_run"]


def ais_run(
    run_dir: str | Path,
    steps: int = 500,
    chains: int = 16,
    split: str = "test",
    n: int = 100,
    *,
    data_dir: str | None = None,
    device: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """AIS NLL of the run's model on n images of ``split`` (module docstring): ``nll``, ``nll_sem``, ``n``, the
    settings, the seconds and the per-image estimates ``ll``; written to the run folder and returned."""
    check_split(split)
    config, model, _ = load_run(run_dir, data_dir, device)
    dev = next(model.parameters()).device
    x = eval_images(config, split, n, dev, config.seed)
    start = time.perf_counter()
    ll = ais_log_likelihood(model, x, steps=steps, chains=chains, generator=stream(config, dev, split, "ais"),
                            flush_denormal=config.flush_denormal, progress=progress)  # fmt: skip
    result = {"split": split, "steps": steps, "chains": chains, **summarize(ll),
              "seconds": time.perf_counter() - start, "ll": ll.double().tolist()}  # fmt: skip
    write_json(Path(run_dir) / f"ais-{split}-s{steps}-c{chains}-n{result['n']}.json", result)
    return result


def bdmc_run(
    run_dir: str | Path,
    steps: int = 500,
    chains: int = 16,
    n: int = 100,
    *,
    device: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Bidirectional Monte Carlo on n data simulated from the run's model (module docstring): the mean forward-AIS
    ``lower`` and reverse-AIS ``upper`` estimates of log p(x), their paired ``gap`` with its standard error
    ``gap_sem`` (a bound, in expectation, on AIS's error with these settings), the settings, the seconds and the
    per-example estimates; written to the run folder and returned."""
    config, model, _ = load_run(run_dir, device=device)
    dev = next(model.parameters()).device
    start = time.perf_counter()
    result = bdmc(model, n, steps=steps, chains=chains, generator=stream(config, dev, "test", "ais"),
                  flush_denormal=config.flush_denormal, progress=progress)  # fmt: skip
    gap = (result.upper - result.lower).double()
    out = {"steps": steps, "chains": chains, "n": n, "lower": result.lower.double().mean().item(),
           "upper": result.upper.double().mean().item(), "gap": gap.mean().item(),
           "gap_sem": (gap.std() / n**0.5).item() if n > 1 else float("nan"),
           "seconds": time.perf_counter() - start, "lower_ll": result.lower.double().tolist(),
           "upper_ll": result.upper.double().tolist()}  # fmt: skip
    write_json(Path(run_dir) / f"bdmc-s{steps}-c{chains}-n{n}.json", out)
    return out
