"""Evaluating a saved run: test/train NLL (mean of -L_5000), active units, NLL with inactive units removed, figures.

:func:`finish_run` writes ``metrics.json`` and ``samples.png``, ``active_units.png``, ``training.png`` into the run
folder; :func:`evaluate_run` (``iwae evaluate``) measures one split and writes ``eval-<split>-k<k>-n<n>.json``.
Every draw comes from the stream of the run's seed and one entry of :data:`STREAMS` (:mod:`iwae.util.streams`), and
both functions measure through :func:`measure` (on the same CPU threads, :func:`eval_threads`), so ``iwae
evaluate`` on the test and train splits gives every number of ``metrics.json`` exactly, and evaluating the same run
twice gives the same numbers.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from iwae import data
from iwae.data.resources import SPLIT_SIZES, locate
from iwae.evaluate import active_units, count_active, log_likelihood, prune_inactive
from iwae.models.model import IWAE
from iwae.plots import plot_active_units, plot_training, save_image_grid
from iwae.runs.config import TrainConfig, passes_at
from iwae.runs.eval_progress import measurement, progress_path, resumable_log_likelihood, saved_seconds
from iwae.runs.rundir import (
    ACTIVE_UNITS_NAME,
    METRICS_NAME,
    PER_IMAGE_NAME,
    SAMPLES_NAME,
    TRAINING_NAME,
    RunError,
    load_run,
    read_log,
)
from iwae.util import streams
from iwae.util.atomic import write_json
from iwae.util.cpu import flush_subnormals
from iwae.util.machine import describe

__all__ = [
    "STREAMS",
    "ACTIVE_SPLIT",
    "check_split",
    "stream",
    "eval_images",
    "scored_passes",
    "eval_split",
    "spread",
    "nll",
    "summarize",
    "activity",
    "measure",
    "progress_paths",
    "per_image_record",
    "read_per_image",
    "evaluate_run",
    "curve_images",
    "curve_point",
    "NOT_RECORDED",
    "train_machines",
    "machines_text",
    "finish_run",
    "eval_threads",
]

# The evaluation's random streams, (split, purpose): the generator of each is iwae.util.streams' ("eval", split,
# purpose) of the run's seed.
# - binarize: the dynamic binarization of the split's images (unused for binarized-mnist, which is fixed);
# - nll: the importance samples of L_k on that split;
# - active: the samples of h^(l-1) behind A_u of layers l > 1 (Section 5.2), and the same draws again to decide
#   which units the pruned model drops, so that it drops exactly the units counted inactive;
# - curve: the importance samples of the learning curve's L_curve_k (:func:`curve_point`), the same draws at every
#   stage's end, so that the curve's steps are paired; its images are binarized by the test split's ``binarize``.
# Each (split, purpose) has its own stream so that no two measurements share noise by accident, and both
# `finish_run` and `iwae evaluate` draw them from here, so the second replays the first.
STREAMS: tuple[tuple[str, str], ...] = (
    *((split, purpose) for split in data.SPLITS for purpose in ("binarize", "nll", "active", "ais")),
    ("test", "curve"),
)

# The learning curve's split (:func:`curve_point`).
CURVE_SPLIT = "test"

# A_u is a property of the model, measured on (n examples of) the training data whatever split is scored.
ACTIVE_SPLIT = "train"


def check_split(split: str) -> str:
    """``split`` if it is one of :data:`iwae.data.SPLITS`, else a ValueError listing them."""
    if split not in data.SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(data.SPLITS)}")
    return split


def stream(
    config: TrainConfig, device: torch.device, split: str, purpose: str, seed: int | None = None
) -> torch.Generator:
    """A fresh generator for one evaluation stream of :data:`STREAMS`, of ``seed`` (default the run's) under the
    run's random-stream scheme."""
    check_split(split)
    if (split, purpose) not in STREAMS:
        raise ValueError(f"no evaluation stream for split {split!r} and purpose {purpose!r}; see STREAMS")
    seed = config.seed if seed is None else seed
    return streams.generator(seed, "eval", split, purpose, device=device, scheme=config.streams)


def spread(total: int, n: int | None) -> torch.Tensor:
    """Indices of n of ``total`` examples spread evenly through them (every total/n-th), or all of them.

    Evaluating on a subset this way keeps it representative of a split stored in class order: the fixed
    binarization's test set, for one, begins with about 1,000 zeros (30% more ink than the average image).
    """
    if n is None or n >= total:
        return torch.arange(total)
    return torch.arange(n) * total // n


def eval_images(config: TrainConfig, split: str, n: int | None, device: torch.device, seed: int) -> torch.Tensor:
    """n examples of the split spread evenly through it (:func:`spread`), on ``device``; dynamic data are binarized
    afresh with the split's ``binarize`` stream of ``seed``."""
    return eval_split(config, split, n, device, seed)[1]


def eval_split(
    config: TrainConfig, split: str, n: int | None, device: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`eval_images` with the indices of those examples in the split, as ``(index, x)``."""
    x = data.load(config.dataset, check_split(split), config.data_dir)
    index = spread(x.shape[0], n)
    x = x[index].to(device)
    if not data.is_binary(config.dataset):
        x = data.binarize(x, generator=stream(config, device, split, "binarize", seed))
    return index, x


def nll(
    model: IWAE,
    x: torch.Tensor,
    k: int,
    gen: torch.Generator,
    progress: bool = True,
    *,
    desc: str | None = None,
    bar: tqdm | None = None,
    flush_denormal: bool = True,
) -> dict[str, Any]:
    """Mean of -L_k over the rows of x, with the standard error of that mean (over examples), and n.

    The progress bar (or ``bar``, counting a longer evaluation) is labelled ``desc``; ``flush_denormal`` as in
    :func:`iwae.evaluate.log_likelihood` (a run's evaluation passes its config's)."""
    ll = log_likelihood(
        model, x, k, generator=gen, progress=progress, desc=desc, bar=bar, flush_denormal=flush_denormal
    )
    return summarize(ll)


def summarize(ll: torch.Tensor) -> dict[str, Any]:
    """Mean of -L_k over examples from per-example L_k, the standard error of that mean, and n."""
    return {"nll": -ll.mean().item(), "nll_sem": (ll.std() / ll.numel() ** 0.5).item(), "n": ll.numel()}


def activity(config: TrainConfig, model: IWAE, n: int | None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A_u per layer (Section 5.2) on n examples of :data:`ACTIVE_SPLIT`, and those examples."""
    device = next(model.parameters()).device
    x = eval_images(config, ACTIVE_SPLIT, n, device, config.seed)
    return active_units(model, x, generator=stream(config, device, ACTIVE_SPLIT, "active")), x


def measure(
    config: TrainConfig,
    model: IWAE,
    split: str,
    k: int,
    n: int | None,
    *,
    pruned: bool = False,
    progress: bool = True,
    bar: tqdm | None = None,
    active: tuple[list[torch.Tensor], torch.Tensor] | None = None,
    keep: Path | None = None,
) -> tuple[dict[str, Any], list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """NLL (mean -L_k ± s.e.) of n examples of ``split``, and A_u on n examples of :data:`ACTIVE_SPLIT`; ``seconds``:
    the time its L_k took (with ``keep``, over every process that worked on them).

    With ``pruned``, also ``nll_pruned``: the NLL of the model without its inactive units (Section 5.2), on the
    same images and the same noise stream as ``nll``, and ``units_pruned``. With no inactive unit that model is
    the model itself, so ``nll_pruned`` is ``nll``, not measured again. Returns the numbers, the A_u tensors
    (for the figure) and the per-example ``(index, L_k)`` behind ``nll`` (the examples' indices in the split). The
    samples are counted on ``bar`` if given (a bar over a longer evaluation). ``active``: :func:`activity`'s
    result for the same n, when the caller has it already (it does not depend on ``split``). ``keep``: a run
    folder in which to keep the progress of each L_k (:func:`progress_paths`), so that a stopped measurement goes on
    where it stopped, with the same numbers (:mod:`iwae.runs.eval_progress`).
    """
    device = next(model.parameters()).device
    index, x = eval_split(config, split, n, device, config.seed)
    A, x_active = active if active is not None else activity(config, model, n)
    desc = f"{split} NLL, L_{k}, {x.shape[0]} images"
    score = _Scorer(config, split, x, k, keep, progress, bar)
    ll = score(model, "nll", desc)
    result = {
        "split": split, "eval_k": k, **summarize(ll),
        "active_units": count_active(A, config.active_threshold), "active_units_split": ACTIVE_SPLIT,
        "active_units_n": x_active.shape[0], "active_threshold": config.active_threshold,
    }  # fmt: skip
    if pruned:
        result["units_pruned"] = sum(model.latent_dims) - sum(result["active_units"])
        result["nll_pruned"] = result["nll"]
        if result["units_pruned"]:
            gen = stream(config, device, ACTIVE_SPLIT, "active")
            smaller = prune_inactive(model, x_active, config.active_threshold, generator=gen)
            if bar is not None:
                bar.total += k * x.shape[0]
            desc = f"{split} NLL without {result['units_pruned']} inactive units, L_{k}, {x.shape[0]} images"
            result["nll_pruned"] = summarize(score(smaller, "nll_pruned", desc))["nll"]
    result["seconds"] = score.seconds
    return result, A, (index, ll)


@dataclass
class _Scorer:
    """L_k of one split's images ``x`` with its ``nll`` stream, afresh for each model measured; with ``keep``,
    through :func:`iwae.runs.eval_progress.resumable_log_likelihood`, its progress kept in that run folder. Counts
    the ``seconds`` of the measurements (those of the processes before a stop too, which their progress keeps)."""

    config: TrainConfig
    split: str
    x: torch.Tensor
    k: int
    keep: Path | None
    progress: bool
    bar: tqdm | None
    seconds: float = 0.0

    def __call__(self, model: IWAE, what: str, desc: str) -> torch.Tensor:
        config, x, k, flush = self.config, self.x, self.k, self.config.flush_denormal
        gen = stream(config, x.device, self.split, "nll")
        if self.keep is None:
            began = time.monotonic()
            ll = log_likelihood(
                model, x, k, generator=gen, progress=self.progress, desc=desc, bar=self.bar, flush_denormal=flush
            )
            self.seconds += time.monotonic() - began
            return ll
        identity = measurement(config, model, x, self.split, what, k)
        path = progress_path(self.keep, self.split, k, x.shape[0], what)
        bar = self.bar if self.bar is not None else tqdm(total=k * x.shape[0], unit="sample", disable=not self.progress,
                                                        leave=False)  # fmt: skip
        bar.set_description(desc)
        try:
            ll = resumable_log_likelihood(model, x, k, gen, path, identity, bar=bar, flush_denormal=flush)
            self.seconds += saved_seconds(path)  # the file of this very measurement, complete
            return ll
        finally:
            if self.bar is None:
                bar.close()


def progress_paths(run_dir: str | Path, split: str, k: int, n: int) -> list[Path]:
    """The files in which :func:`measure` keeps the progress of its L_k on n images of ``split``."""
    return [progress_path(run_dir, split, k, n, what) for what in ("nll", "nll_pruned")]


def curve_images(config: TrainConfig, device: torch.device) -> torch.Tensor:
    """The learning curve's ``curve_n`` test images, spread through the test set and binarized as in
    :func:`eval_images`: the same images at every stage."""
    return eval_images(config, CURVE_SPLIT, config.curve_n, device, config.seed)


def curve_point(config: TrainConfig, model: IWAE, x: torch.Tensor) -> dict[str, Any]:
    """One point of the learning curve: mean -L_curve_k on ``x`` (:func:`curve_images`) with its standard error,
    k, n and the seconds it took, as the fields of a ``metrics.jsonl`` record.

    The importance samples come from the ``curve`` stream, seeded afresh at each call: the training's generators
    are not touched, so a run with a curve trains exactly as one without.
    """
    start = time.monotonic()
    gen = stream(config, x.device, CURVE_SPLIT, "curve")
    result = nll(model, x, config.curve_k, gen, progress=False, flush_denormal=config.flush_denormal)
    return {
        "test_nll_curve": result["nll"], "test_nll_curve_sem": result["nll_sem"], "curve_k": config.curve_k,
        "curve_n": result["n"], "curve_seconds": time.monotonic() - start,
    }  # fmt: skip


def evaluate_run(
    run_dir: str | Path,
    k: int | None = None,
    split: str = "test",
    n: int | None = None,
    progress: bool = True,
    *,
    pruned: bool = False,
    data_dir: str | None = None,
    threads: int | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """:func:`measure` for a saved run; written to ``eval-<split>-k<k>-n<n>.json`` in the run folder and returned.

    ``k`` and ``n`` default to the run's ``eval_k`` and ``eval_n``, so the test split gives ``metrics.json``'s
    ``test_nll``, ``test_nll_sem``, ``active_units`` (and with ``pruned``, ``test_nll_pruned``) and the train split
    its ``train_nll`` and ``train_nll_sem``, exactly, whatever torch's thread settings: on a CPU it measures on the
    threads ``metrics.json`` was measured on (:func:`eval_threads`), unless ``threads`` says otherwise.
    ``data_dir`` overrides where the run's data are read (:func:`iwae.runs.rundir.with_data_dir`). ``device``
    overrides the run's device: the noise is drawn there, so another kind of device gives another estimate (the
    same within Monte Carlo error, not the recorded numbers exactly).
    """
    check_split(split)
    config, model, position = load_run(run_dir, data_dir, device)
    if pruned and not can_prune(model):
        raise RunError(f"{run_dir} holds a model of one's own ({config.model}): the pruned model removes units of the "
                       "paper's layers; evaluate it without --pruned")  # fmt: skip
    k = k or config.eval_k
    if k < 1:
        raise ValueError(f"k must be a positive number of importance samples, got {k}")
    model.eval()
    with flush_subnormals(config.flush_denormal), eval_threads(run_dir, next(model.parameters()).device, threads):
        result, _, _ = measure(config, model, split, k, n or config.eval_n, pruned=pruned, progress=progress,
                               keep=Path(run_dir))  # fmt: skip
    result["passes"] = scored_passes(Path(run_dir), config, position)
    write_json(Path(run_dir) / f"eval-{split}-k{k}-n{result['n']}.json", result)
    for path in progress_paths(run_dir, split, k, result["n"]):
        path.unlink(missing_ok=True)
    return result


def scored_passes(run_dir: Path, config: TrainConfig, position: dict[str, Any]) -> float | None:
    """The passes a saved model had trained: its checkpoint's, mid-training too; an exported model's (no position),
    as its ``metrics.json`` records them."""
    if position:
        return passes_at(config, position["stage"], position["step"])
    path = run_dir / METRICS_NAME
    return json.loads(path.read_text()).get("passes") if path.is_file() else None


def code_version() -> dict[str, str | bool | None]:
    """The package's version, and the git commit of its own source checkout with whether the package's files
    differ from it (None where it is installed from a wheel, lies in another repository, or git is missing); read
    at its first call in the process (training calls it as it starts)."""
    return dict(_code_version())  # a copy: callers may change theirs


@functools.cache  # read once a process: the checkout may move on while a long run trains from the code it loaded
def _code_version() -> dict[str, str | bool | None]:
    import subprocess

    import iwae

    __version__ = iwae.__version__
    root = Path(iwae.__file__).resolve().parents[2]  # src/iwae/__init__.py -> the checkout's root

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root:  # not a checkout of this project (a wheel, another repository)
        return {"version": __version__, "commit": None, "dirty": None}
    return {
        "version": __version__,
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "src")),
    }


@contextmanager
def eval_threads(run_dir: str | Path, device: torch.device, threads: int | None = None) -> Iterator[None]:
    """On a CPU, run the block on the torch threads that the run's ``metrics.json`` was measured on (its
    ``eval_threads``), then restore torch's setting: matrix products sum in another order on another number of
    threads, so the same evaluation on other threads differs in its last digits. Elsewhere, or for a run not yet
    evaluated (or evaluated before ``eval_threads`` was recorded), the block runs as it is; ``threads``, if given,
    instead of the recorded ones."""
    path = Path(run_dir) / METRICS_NAME
    if threads is None and path.is_file() and device.type == "cpu":
        threads = json.loads(path.read_text()).get("eval_threads")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluation_sizes(config: TrainConfig) -> tuple[int, int]:
    """How many test and training images the final evaluation scores."""
    sizes = SPLIT_SIZES[config.dataset]
    return len(spread(sizes["test"], config.eval_n)), len(spread(sizes["train"], config.eval_n))


def describe_evaluation(config: TrainConfig) -> str:
    """What the final evaluation computes, in words, and the options that set its size."""
    n_test, n_train = evaluation_sizes(config)
    return (f"L_{config.eval_k} on {n_test:,} test and {n_train:,} training images (and on the test images again "
            "without inactive units, if any; --eval-k and --eval-n set the size)")  # fmt: skip


def _evaluation_bar(config: TrainConfig, progress: bool) -> tqdm:
    """One progress bar over the whole final evaluation (its time left is the estimate), announced on stderr."""
    if progress:
        print(f"final evaluation: {describe_evaluation(config)}", file=sys.stderr)
    return tqdm(total=config.eval_k * sum(evaluation_sizes(config)), unit="sample", disable=not progress, leave=False)


NOT_RECORDED = "not recorded"  # train_machines' key for seconds whose machine no checkpoint kept


def machines_text(metrics: dict[str, Any]) -> str:
    """Where a run's training time went (``metrics.json``'s ``train_machines``), largest share first, in words."""
    machines = metrics.get("train_machines") or {NOT_RECORDED: metrics["train_seconds"]}
    total = sum(machines.values()) or 1.0
    shares = sorted(machines.items(), key=lambda item: -item[1])
    return " and ".join(
        f"{'machines not recorded' if name == NOT_RECORDED else name} ({seconds / total:.0%}, {seconds / 3600:,.1f} h)"
        for name, seconds in shares
    )


def train_machines(state: dict[str, Any]) -> dict[str, float]:
    """A checkpoint's training seconds by machine; those its run spent before machines were kept (an older
    checkpoint resumed) under :data:`NOT_RECORDED` (a remainder under a second is the sums' rounding, dropped)."""
    machines = dict(state.get("train_machines", {}))
    unrecorded = state["train_seconds"] - sum(machines.values())
    if unrecorded > 1.0:
        machines[NOT_RECORDED] = unrecorded
    return machines


def can_prune(model: torch.nn.Module) -> bool:
    """Whether the model without its inactive units can be built (Section 5.2): the paper's layers (an
    :class:`~iwae.models.model.IWAE`), not a model of one's own."""
    return isinstance(model, IWAE)


def finish_run(run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """The end-of-training evaluation of Section 5 and Appendix C/E: ``metrics.json`` and the three figures."""
    run_dir = Path(run_dir)
    config, model, state = load_run(run_dir)
    model.eval()
    k, device = config.eval_k, next(model.parameters()).device
    with flush_subnormals(config.flush_denormal), _evaluation_bar(config, progress) as bar:
        began = time.monotonic()
        active = activity(config, model, config.eval_n)  # A_u once, for both splits' records
        active_seconds = time.monotonic() - began
        test, A, (index, test_ll) = measure(config, model, "test", k, config.eval_n, pruned=can_prune(model),
                                            progress=progress, bar=bar, active=active, keep=run_dir)  # fmt: skip
        train, _, _ = measure(config, model, "train", k, config.eval_n, progress=progress, bar=bar, active=active,
                              keep=run_dir)  # fmt: skip
    log = read_log(run_dir)
    metrics = {
        "dataset": config.dataset, "layers": len(model.latent_dims), "bound": config.bound,
        "estimator": config.estimator, "k": config.k, "eval_k": k, "eval_n": test["n"],
        "test_nll": test["nll"], "test_nll_sem": test["nll_sem"],
        "train_nll": train["nll"], "train_nll_sem": train["nll_sem"],
        "active_units": test["active_units"], "active_units_split": test["active_units_split"],
        "active_units_n": test["active_units_n"], "active_threshold": config.active_threshold,
        "activity": [layer.tolist() for layer in A],  # A_u of each unit (Section 5.2), inactive ones' too
        # (None for a model of one's own: pruning removes units of the paper's layers)
        "test_nll_pruned": test.get("nll_pruned"), "units_pruned": test.get("units_pruned"),
        "train_seconds": state["train_seconds"], "train_machines": train_machines(state),
        "passes": log[-1]["pass"] if log else 0.0,
        # the L_k measurements' seconds over every stop and resume (their progress files keep them), and A_u's
        "eval_seconds": active_seconds + test["seconds"] + train["seconds"],
        "eval_threads": torch.get_num_threads() if device.type == "cpu" else None, "eval_machine": describe(device),
        # which files the data came from (Omniglot: the paper's chardata.mat or the rebuilt archives)
        "data_files": sorted(locate(config.dataset, Path(config.data_dir)) or {}),
        "code": code_version(),  # the code that evaluated it (and, for a run trained in one go, trained it)
    }  # fmt: skip
    if hasattr(model, "sample"):  # (a model of one's own may have no sampler)
        gen = streams.generator(config.seed, "samples", device=device, scheme=config.streams)
        save_image_grid(model.sample(100, generator=gen), run_dir / SAMPLES_NAME, nrow=10)
    title = f"{config.dataset}, {len(model.latent_dims)} layer(s), {config.bound} k={config.k}"
    plot_active_units(A, run_dir / ACTIVE_UNITS_NAME, config.active_threshold, title)
    points = [r for r in log if "test_nll_curve" in r]
    curve = [(r["pass"], r["test_nll_curve"]) for r in points]
    label = f"test NLL (L_{points[-1]['curve_k']}, {points[-1]['curve_n']} images)" if points else ""
    passes, bounds = [r["pass"] for r in log], [r["train_bound"] for r in log]
    plot_training(passes, bounds, run_dir / TRAINING_NAME, title, curve, label)
    write_json(run_dir / PER_IMAGE_NAME, per_image_record(config, k, index, test_ll))
    write_json(run_dir / METRICS_NAME, metrics)
    for path in progress_paths(run_dir, "test", k, test["n"]) + progress_paths(run_dir, "train", k, train["n"]):
        path.unlink(missing_ok=True)
    return metrics


def per_image_record(config: TrainConfig, k: int, index: torch.Tensor, ll: torch.Tensor) -> dict[str, Any]:
    """The per-image L_k behind a test NLL (``test_ll.json``): which images (indices into the test split), on which
    evaluation streams (the seed and scheme), so that two runs' records are paired when these agree."""
    return {
        "split": "test", "eval_k": k, "seed": config.seed, "streams": config.streams, "dataset": config.dataset,
        "index": index.tolist(), "ll": ll.double().tolist(),
    }  # fmt: skip


def read_per_image(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``test_ll.json`` (:func:`per_image_record`), checked: as many finite values as indices."""
    path = Path(run_dir) / PER_IMAGE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no per-image record; `iwae evaluate` a finished run to score it again")
    record = json.loads(path.read_text())
    ll = record.get("ll")
    if not isinstance(ll, list) or len(ll) != len(record.get("index", ())) or not all(map(math.isfinite, ll)):
        raise ValueError(f"{path}: damaged per-image record (values missing, non-finite or not one per index)")
    return record
