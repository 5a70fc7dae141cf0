r"""Paired comparison of saved runs: per-example :math:`\mathcal{L}_k` of each model on the same images and noise.

Two models scored on different images, or with different importance samples, differ by the spread of the images
as well as by the models: the standard error of the difference of two NLLs is about :math:`\sqrt 2` times each
one's. Scoring both on the same binarized images with the same noise stream and taking per-image differences

.. math:: d_i = \mathcal{L}_k^B(x_i) - \mathcal{L}_k^A(x_i), \qquad
    \mathrm{NLL}_A - \mathrm{NLL}_B = \bar d \pm \frac{\mathrm{std}(d)}{\sqrt n}

removes that shared spread, so the paired standard error covers evaluation noise only (not training seeds).
The images and the noise are the evaluation streams of :data:`iwae.runs.evaluate_run.STREAMS` for one seed, so a run
scored here with its own seed gets exactly the NLL that ``iwae evaluate`` reports for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from iwae.evaluate import log_likelihood
from iwae.runs.evaluate_run import check_split, eval_images, stream, summarize
from iwae.runs.rundir import load_run

__all__ = ["log_likelihoods", "paired_difference", "paired_records", "compare_runs", "format_comparison"]


def _common(what: str, values: Sequence[Any], given: Any, option: str) -> Any:
    """``given`` if set, else the one value all runs share; a ValueError naming ``option`` when they differ."""
    if given is not None:
        return given
    if len(set(values)) > 1:
        raise ValueError(f"the runs have different {what} ({', '.join(map(str, values))}); choose one with {option}")
    return values[0]


def log_likelihoods(
    run_dirs: Sequence[str | Path],
    *,
    split: str = "test",
    k: int | None = None,
    n: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    data_dir: str | None = None,
    device: str | None = None,
) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Per-example L_k of each run's model on the same n images of ``split`` with the same noise stream.

    ``k`` and ``n`` default to the value the runs share (their ``eval_k`` and ``eval_n``); a ValueError asks for
    one when they differ. ``seed`` defaults to the first run's: runs of different seeds (a fleet's) are scored on
    the images and the noise of that seed's evaluation streams, under the first run's random-stream scheme. All
    models are scored on the first run's device, or on ``device`` (the noise depends on the device). Runs of
    different data sets are refused. The images are read from ``data_dir`` if given, else as the first run says
    (:func:`iwae.runs.rundir.with_data_dir`).

    :returns: the settings used (split, eval_k, n, seed, dataset) and one (n,) tensor of L_k per run.
    """
    check_split(split)
    first = load_run(run_dirs[0], data_dir, device)
    where = next(first[1].parameters()).device  # every model where the first is: one noise stream
    loaded = [first, *(load_run(run_dir, data_dir, str(where)) for run_dir in run_dirs[1:])]
    configs = [config for config, _, _ in loaded]
    datasets = [config.dataset for config in configs]
    if len(set(datasets)) > 1:
        runs = ", ".join(f"{run} ({name})" for run, name in zip(run_dirs, datasets))
        raise ValueError(f"cannot compare runs of different data sets: {runs}")
    k = _common("eval_k", [c.eval_k for c in configs], k, "k= (--k)")
    n = _common("eval_n", [c.eval_n for c in configs], n, "n= (--n)")
    seed = configs[0].seed if seed is None else seed  # runs of other seeds too: all scored with the first's streams
    if k < 1:
        raise ValueError(f"k must be a positive number of importance samples, got {k}")
    if n is not None and n < 2:
        raise ValueError(f"n must be at least 2 images (a standard error over images), got {n}")
    x = eval_images(configs[0], split, n, where, seed)
    lls = []
    for config, model, _ in loaded:
        model = model.eval()
        gen = stream(configs[0], where, split, "nll", seed)
        lls.append(log_likelihood(model, x, k, generator=gen, progress=progress, flush_denormal=config.flush_denormal))
    settings = {"split": split, "eval_k": k, "n": x.shape[0], "seed": seed, "dataset": datasets[0]}
    return settings, lls


def paired_difference(ll_a: torch.Tensor, ll_b: torch.Tensor) -> dict[str, float]:
    """NLL_A - NLL_B as the mean of per-example differences, with its paired standard error (float64)."""
    if ll_a.shape != ll_b.shape or ll_a.dim() != 1:
        raise ValueError(
            f"need two (n,) tensors of L_k on the same examples, got {tuple(ll_a.shape)}, {tuple(ll_b.shape)}"
        )
    if ll_a.numel() < 2:
        raise ValueError(f"a paired standard error needs at least 2 examples, got {ll_a.numel()}")
    d = ll_b.double() - ll_a.double()  # NLL_A - NLL_B per example
    return {"mean": d.mean().item(), "sem": (d.std() / d.numel() ** 0.5).item()}


PAIRING_KEYS = ("split", "eval_k", "seed", "streams", "dataset", "index")  # what two records must share to pair


def paired_records(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """NLL_A - NLL_B from two runs' per-image records (``test_ll.json``, :func:`iwae.runs.evaluate_run.read_per_image`),
    with its paired standard error: no scoring, since runs of one seed were scored on the same images with the same
    noise. A ValueError when the records differ in any of :data:`PAIRING_KEYS` (then they are not paired)."""
    for key in PAIRING_KEYS:
        if a.get(key) != b.get(key):
            raise ValueError(f"per-image records differ in {key!r}: not paired, so not compared")
    return paired_difference(torch.tensor(a["ll"], dtype=torch.float64), torch.tensor(b["ll"], dtype=torch.float64))


def compare_runs(run_a: str | Path, run_b: str | Path, **options: Any) -> dict[str, Any]:
    """Paired comparison of two runs (:func:`log_likelihoods`, :func:`paired_difference`).

    :param options: :func:`log_likelihoods`'s keywords (``split``, ``k``, ``n``, ``seed``, ``progress``,
        ``data_dir``, ``device``), with its defaults.
    :returns: the settings, ``a`` and ``b`` (run folder, NLL, its standard error over images) and
        ``difference``: ``{"mean", "sem"}`` of NLL(A) - NLL(B), negative when A scores better.
    """
    settings, (ll_a, ll_b) = log_likelihoods([run_a, run_b], **options)
    a, b = _summary(run_a, ll_a), _summary(run_b, ll_b)
    return {**settings, "a": a, "b": b, "difference": paired_difference(ll_a, ll_b)}


def _summary(run_dir: str | Path, ll: torch.Tensor) -> dict[str, Any]:
    stats = summarize(ll)
    return {"run": str(run_dir), "nll": stats["nll"], "nll_sem": stats["nll_sem"]}


def format_comparison(result: dict[str, Any]) -> str:
    """A short Markdown table of :func:`compare_runs`'s result."""
    d = result["difference"]
    head = f"{result['split']} NLL (mean -L_{result['eval_k']} over {result['n']} images, seed {result['seed']})"
    return "\n".join(
        [
            f"| run | {head} |",
            "| --- | ---: |",
            f"| A: {result['a']['run']} | {result['a']['nll']:.3f} ± {result['a']['nll_sem']:.3f} |",
            f"| B: {result['b']['run']} | {result['b']['nll']:.3f} ± {result['b']['nll_sem']:.3f} |",
            f"| A - B (paired) | {d['mean']:+.3f} ± {d['sem']:.3f} |",
        ]
    )
