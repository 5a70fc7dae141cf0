"""A saved run's NLL by annealed importance sampling (:func:`iwae.ais.ais_log_likelihood`, ``iwae ais``).

The images are those of the run's own evaluation (:func:`iwae.runs.evaluate_run.eval_images`: n spread through the
split, binarized by its stream), so the result pairs image by image with ``iwae evaluate --n`` on the same n; the
chains' noise comes from the split's ``ais`` stream of the run's seed. The result is written to
``ais-<split>-s<steps>-c<chains>-n<n>.json`` in the run folder, with the per-image estimates.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from iwae.ais import ais_log_likelihood
from iwae.runs.evaluate_run import check_split, eval_images, stream, summarize
from iwae.runs.rundir import load_run
from iwae.util.atomic import write_json

__all__ = ["ais_run"]


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
