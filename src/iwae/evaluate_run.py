"""Evaluating a saved run: test/train NLL (mean of -L_5000), active units, NLL with inactive units removed, figures.

Writes ``metrics.json`` and ``samples.png``, ``active_units.png``, ``training.png`` into the run folder. Every
evaluation draws its binarization and importance samples from a generator seeded by the run's seed, so evaluating
the same run twice gives the same numbers.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from iwae import data
from iwae.config import TrainConfig
from iwae.evaluate import active_units, count_active, log_likelihood, prune_inactive
from iwae.model import IWAE
from iwae.plots import plot_active_units, plot_training, save_image_grid
from iwae.train import load_run

__all__ = ["nll", "evaluate_run", "finish_run", "SPLITS"]

SPLITS = ("test", "train", "validation")


def _eval_generator(config: TrainConfig, device: torch.device, salt: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(10_000 * config.seed + salt)


def spread(total: int, n: int | None) -> torch.Tensor:
    """Indices of n of ``total`` examples spread evenly through them (every total/n-th), or all of them.

    Evaluating on a subset this way keeps it representative of a split stored in class order: the fixed
    binarization's test set, for one, begins with about 1,000 zeros (30% more ink than the average image).
    """
    if n is None or n >= total:
        return torch.arange(total)
    return torch.arange(n) * total // n


def _split(config: TrainConfig, split: str, n: int | None, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    """n examples of the split spread evenly through it (:func:`spread`), binarized afresh (dynamic data) with
    ``gen``, on the model's device."""
    x = data.load(config.dataset, split, config.data_dir)
    x = x[spread(x.shape[0], n)].to(device)
    return x if data.is_binary(config.dataset) else data.binarize(x, generator=gen)


def nll(model: IWAE, x: torch.Tensor, k: int, gen: torch.Generator, progress: bool = True) -> dict[str, float]:
    """Mean of -L_k over the rows of x, with the standard error of that mean (over examples)."""
    ll = log_likelihood(model, x, k, generator=gen, progress=progress)
    return {"nll": -ll.mean().item(), "nll_sem": (ll.std() / ll.numel() ** 0.5).item(), "n": ll.numel()}


def evaluate_run(
    run_dir: str | Path, k: int | None = None, split: str = "test", n: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """NLL and active units of a saved run on one split; written to ``eval-<split>-k<k>.json`` and returned."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    config, model, _ = load_run(run_dir)
    k = k or config.eval_k
    if k < 1:
        raise ValueError(f"k must be a positive number of importance samples, got {k}")
    device = next(model.parameters()).device
    model.eval()
    x = _split(config, split, n or config.eval_n, device, _eval_generator(config, device, SPLITS.index(split)))
    A = active_units(model, x, generator=_eval_generator(config, device, 7))
    result = {
        "split": split, "eval_k": k, **nll(model, x, k, _eval_generator(config, device, 99), progress),
        "active_units": count_active(A, config.active_threshold),
    }  # fmt: skip
    _write_json(Path(run_dir) / f"eval-{split}-k{k}.json", result)
    return result


def finish_run(run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """The end-of-training evaluation of Section 5 and Appendix C/E: ``metrics.json`` and the three figures."""
    run_dir = Path(run_dir)
    config, model, state = load_run(run_dir)
    device = next(model.parameters()).device
    model.eval()
    k = config.eval_k
    test = _split(config, "test", config.eval_n, device, _eval_generator(config, device, 0))
    train = _split(config, "train", config.eval_n, device, _eval_generator(config, device, 1))
    A = active_units(model, train, generator=_eval_generator(config, device, 7))
    test_result = nll(model, test, k, _eval_generator(config, device, 99), progress)
    # Section 5.2: remove the inactive units and evaluate again on the same data and the same noise stream.
    pruned = prune_inactive(model, train, config.active_threshold, generator=_eval_generator(config, device, 7))
    pruned_result = nll(pruned, test, k, _eval_generator(config, device, 99), progress)
    train_result = nll(model, train, k, _eval_generator(config, device, 98), progress)
    log = _read_log(run_dir)
    metrics = {
        "dataset": config.dataset, "layers": len(model.latent_dims), "objective": config.objective,
        "estimator": config.estimator, "k": config.k, "eval_k": k, "eval_n": test_result["n"],
        "test_nll": test_result["nll"], "test_nll_sem": test_result["nll_sem"],
        "train_nll": train_result["nll"], "train_nll_sem": train_result["nll_sem"],
        "active_units": count_active(A, config.active_threshold), "active_threshold": config.active_threshold,
        "test_nll_pruned": pruned_result["nll"], "train_seconds": state["train_seconds"],
        "passes": log[-1]["pass"] if log else 0.0,
    }  # fmt: skip
    gen = torch.Generator(device=device).manual_seed(config.seed)
    save_image_grid(model.sample(100, generator=gen), run_dir / "samples.png", nrow=10)
    title = f"{config.dataset}, {len(model.latent_dims)} layer(s), {config.objective} k={config.k}"
    plot_active_units(A, run_dir / "active_units.png", config.active_threshold, title)
    plot_training([r["pass"] for r in log], [r["train_bound"] for r in log], run_dir / "training.png", title)
    _write_json(run_dir / "metrics.json", metrics)
    return metrics


def _read_log(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    """Write atomically, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
