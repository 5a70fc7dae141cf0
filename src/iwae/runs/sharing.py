"""Loading a trained model in Python, and exporting one to share: its weights alone, its config, its numbers and a
model card.

:func:`load_run` opens a run folder (``iwae train``'s) or an exported folder (``iwae export``'s) alike; ``iwae
evaluate``, ``sample`` and ``compare`` accept either. An exported folder holds ``model.safetensors`` (parameters
and buffers, with a sha256 of them), ``config.json`` (without the machine's data path, device ``auto``),
``metrics.json``, ``metrics.jsonl`` and ``test_ll.json`` as the run wrote them (so ``iwae evaluate DIR`` replays
its numbers, image by image), the run's figures (samples, active units, training curve), and ``README.md``, the model
card.

:func:`snapshot_run` copies an unfinished run instead, to be continued on another machine: its config (without the
machine's data path), its checkpoint (model, Adam, position and random streams, checked whole) and the lines of
``metrics.jsonl`` that checkpoint counts, so that ``iwae resume`` on the copy goes on exactly where the checkpoint
stands. A final evaluation under way is not carried: it starts again there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple

from iwae.models.model import IWAE
from iwae.runs.checkpoint import CHECKPOINT_NAME, WEIGHTS_NAME, CheckpointError, load_checkpoint, save_weights
from iwae.runs.config import TrainConfig, passes_text, schedule
from iwae.runs.evaluate_run import machines_text
from iwae.runs.rundir import (
    ACTIVE_UNITS_NAME,
    CONFIG_NAME,
    LOCK_NAME,
    LOG_NAME,
    METRICS_NAME,
    PER_IMAGE_NAME,
    SAMPLES_NAME,
    TRAINING_NAME,
    RunError,
    build_model,
    is_analysis,
    is_exported,
    read_config,
)
from iwae.runs.rundir import load_run as _load
from iwae.util import atomic

__all__ = ["LoadedRun", "load_run", "export_run", "snapshot_run", "SNAPSHOT_FILES", "MODEL_CARD_NAME"]

MODEL_CARD_NAME = "README.md"


class LoadedRun(NamedTuple):
    """A trained model with the config that made it and its final numbers (None before its evaluation)."""

    model: IWAE
    config: TrainConfig
    metrics: dict[str, Any] | None


def load_run(path: str | Path, data_dir: str | Path | None = None, device: str | None = None) -> LoadedRun:
    """The model of a run folder or an exported folder, in eval mode, with its config and ``metrics.json``.

    ``data_dir`` says where the run's data are, for evaluating it (default: as :func:`iwae.runs.rundir.with_data_dir`).
    ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``) is where the model is put: default the run's own device
    (a run trained with ``--device cuda`` loads on a machine without CUDA with ``device="cpu"``).

    :raises RunError: ``path`` holds no run.
    """
    config, model, _ = _load(path, data_dir, device)
    metrics_path = Path(path) / METRICS_NAME
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    return LoadedRun(model.eval(), config, metrics)


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    """Write the evaluated run of ``run_dir`` into the new folder ``out`` (see the module docstring); ``out``.

    :raises RunError: the run is not evaluated yet, or ``out`` exists and is not empty.
    """
    run_dir, out = Path(run_dir), Path(out)
    config = read_config(run_dir)  # a folder that is no run is named as such
    if not (run_dir / METRICS_NAME).is_file():
        evaluate = "" if config.evaluate else " --eval"  # a run trained with --no-eval is evaluated on request
        raise RunError(f"{run_dir} is not evaluated (no {METRICS_NAME}); finish it first: "
                       f"`iwae resume {run_dir}{evaluate}`")  # fmt: skip
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"{out} exists and is not an empty folder; export into a new folder")
    _, model, _ = _load(run_dir, device="cpu")  # its weights only: where it trained does not matter
    shared = config.replace(data_dir=None, device="auto", init_from=None)  # nothing of this machine
    metrics = json.loads((run_dir / METRICS_NAME).read_text())
    card = model_card(run_dir.name, shared, metrics, model)  # before any file: a metrics.json it cannot read stops here
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:  # whole, or nothing
        staged = Path(tmp) / "export"
        staged.mkdir()
        save_weights(staged / WEIGHTS_NAME, model)
        atomic.write_text(staged / CONFIG_NAME, shared.to_json())
        atomic.write_json(staged / METRICS_NAME, metrics)
        # the learning curve, each test image's L_k, the figures
        for name in (LOG_NAME, PER_IMAGE_NAME, SAMPLES_NAME, ACTIVE_UNITS_NAME, TRAINING_NAME):
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, staged / name)  # (the staged folder is renamed whole at the end)
        atomic.write_text(staged / MODEL_CARD_NAME, card)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staged, out)
    return out


SNAPSHOT_FILES = (CONFIG_NAME, LOG_NAME, CHECKPOINT_NAME)  # all that a snapshot holds


def snapshot_run(run_dir: str | Path, out: str | Path) -> Path:
    """Copy the unfinished run of ``run_dir`` into ``out``, a folder ``iwae resume`` continues (the module docstring).

    The run may be training meanwhile: its checkpoint is copied first, then the log, cut back to the checkpoint's
    lines. ``out`` is replaced if it holds an earlier snapshot (nothing but :data:`SNAPSHOT_FILES` and what the
    commands that question a model wrote into it, :func:`~iwae.runs.rundir.is_analysis`: they go with it). Returns
    ``out``.
    ``init_from`` stays in the config (a run with a checkpoint never reads it; a reproduction compares it).

    :raises RunError: the run is finished (export it instead) or has no checkpoint yet, or ``out`` lies in the run's
        folder, was resumed, or holds other files.
    :raises CheckpointError: the checkpoint is damaged.
    """
    run_dir, out = Path(run_dir), Path(out)
    config = read_config(run_dir)
    if is_exported(run_dir):
        raise RunError(f"{run_dir} is an exported model (its weights alone): there is no training to continue")
    if (run_dir / METRICS_NAME).is_file():
        raise RunError(f"{run_dir} is finished; share its model with `iwae export {run_dir} --out FOLDER`")
    if not (run_dir / CHECKPOINT_NAME).is_file():
        raise RunError(f"{run_dir} has no checkpoint yet: nothing to continue from; snapshot it once it has trained")
    if out.resolve().is_relative_to(run_dir.resolve()):
        raise RunError(f"{out} lies in the run's own folder {run_dir}; snapshot into a folder outside it")
    if out.exists():
        if (out / LOCK_NAME).exists():
            raise RunError(f"{out} is a run folder of its own (it holds a {LOCK_NAME}: something trained there); "
                           "delete it, or snapshot into a new folder")  # fmt: skip
        if not out.is_dir() or any(p.name not in SNAPSHOT_FILES and not is_analysis(p.name) for p in out.iterdir()):
            raise RunError(f"{out} holds files other than an earlier snapshot's ({', '.join(SNAPSHOT_FILES)}, and "
                           "what `iwae evaluate`, `diagnose`, `ais`, `compare` or `sample` wrote into it); snapshot "
                           "into a new folder")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:  # whole, or nothing
        staged = Path(tmp) / "snapshot"
        staged.mkdir()
        # one file, which the run replaces whole: the copy is one checkpoint, never two halves
        atomic.write_bytes(staged / CHECKPOINT_NAME, (run_dir / CHECKPOINT_NAME).read_bytes())
        try:
            state, _ = load_checkpoint(staged / CHECKPOINT_NAME, build_model(config))  # its sha256, finite values
        except CheckpointError as err:
            why = str(err).split(": ", 1)[-1].split(";")[0]  # the problem, without the file's name and advice
            raise CheckpointError(f"{run_dir / CHECKPOINT_NAME} is damaged ({why}); "
                                  "nothing was copied: snapshot the run again after its next checkpoint, or "
                                  "resume it from a copy of its own") from err  # fmt: skip
        log = run_dir / LOG_NAME  # each line written before the checkpoint that counts it
        lines = [line for line in log.read_text().splitlines(keepends=True) if line.strip()] if log.is_file() else []
        if len(lines) < state["log_lines"]:
            raise RunError(f"{log} has {len(lines)} lines, fewer than its checkpoint's {state['log_lines']}: the log "
                           f"was cut; `iwae resume {run_dir}` makes its next checkpoint count the lines there, and "
                           "a snapshot after it works")  # fmt: skip
        atomic.write_text(staged / LOG_NAME, "".join(lines[: state["log_lines"]]))
        atomic.write_text(staged / CONFIG_NAME, config.replace(data_dir=None).to_json())  # no path of this machine
        old = Path(tmp) / "old"
        if out.exists():
            os.replace(out, old)  # the earlier snapshot, checked above: removed with the temporary folder (a
            # process killed before the next line leaves no OUT, and the earlier snapshot in that folder)
        os.replace(staged, out)
    return out


def model_card(name: str, config: TrainConfig, metrics: dict[str, Any], model: IWAE) -> str:
    """The exported folder's README: what the model is, how it was trained and scored, how to make it again (its
    config is the folder's) and how to use it."""
    passes = sum(stage.passes for stage in schedule(config))
    rates = sorted({stage.lr for stage in schedule(config)}, reverse=True)
    n_stages = len(schedule(config))
    stages = f"{n_stages} stage{'s' if n_stages > 1 else ''}"
    units = "+".join(map(str, metrics["active_units"]))
    binarized = "fixed binarization" if config.dataset == "binarized-mnist" else "binarized afresh at every use"
    code = metrics.get("code") or {}
    dirty = " with uncommitted changes" if code.get("dirty") else ""
    made = f"iwae {code.get('version', '?')}, commit {code.get('commit') or 'unknown'}{dirty}"
    evaluator = metrics.get("eval_machine") or "a machine not recorded"
    seconds = metrics.get("eval_seconds")  # absent from runs evaluated before it was recorded
    evaluated = "" if seconds is None else f" Evaluated in {seconds / 3600:,.1f} hours on {evaluator}."
    pruned = metrics.get("test_nll_pruned")  # (None for a model of one's own)
    sampler = callable(getattr(model, "sample", None))
    # (a model of one's own was checked to take a generator, on its device, not to have a default for it)
    draw = ("samples = model.sample(16)" if config.model is None else
            "samples = model.sample(16, generator=torch.Generator(next(model.parameters()).device).manual_seed(0))"
            )  # fmt: skip
    own = [] if config.model is None else [
        f"- Its code is not in this folder: loading it imports `{config.model.partition(':')[0]}` and calls "
        f"`{config.model}` (with `model_kwargs` from `config.json`), which must be importable there."
    ]  # fmt: skip
    what = (f"{len(model.latent_dims)} stochastic layer(s) of {'+'.join(map(str, model.latent_dims))} units"
            if config.model is None else f"a model of one's own, `{config.model}` ({type(model).__name__}, latent "
            f"units {'+'.join(map(str, model.latent_dims))})")  # fmt: skip
    return "\n".join([
        f"# {name}",
        "",
        f"An importance weighted autoencoder (Burda, Grosse & Salakhutdinov, 2016) trained with `iwae`: "
        f"{what}, trained on the {config.bound} bound with k = {config.k} ({config.estimator} gradients), seed "
        f"{config.seed}.",
        "",
        f"- Data: {config.dataset}, {binarized}.",
        f"- Schedule: {passes_text(passes)} passes over the training set in {stages} (the "
        f"paper's is 3,280 in 8), learning rates {rates[0]:.2e} down to {rates[-1]:.2e}, batch {config.batch_size}, "
        f"Adam (betas {config.adam_betas}, eps 1e-4).",
        f"- Test NLL: {metrics['test_nll']:.2f} ± {metrics['test_nll_sem']:.2f} nats (mean -L_{metrics['eval_k']} "
        f"over {metrics['eval_n']:,} test images, ± one standard error over images); train NLL "
        f"{metrics['train_nll']:.2f}; active units {units}"
        f"{'' if pruned is None else f'; NLL without the inactive units {pruned:.2f}'}.",
        f"- Trained for {metrics['train_seconds'] / 3600:,.1f} hours on {machines_text(metrics)}.{evaluated}",
        f"- Evaluated by: {made}.",
        f"- Exported on {date.today().isoformat()} by `iwae export {name} --out DIR`. To train it "
        f"again: `iwae train --config THIS_FOLDER/config.json --out {name}` (with the data in `IWAE_DATA_DIR`), "
        f"then `iwae export {name} --out DIR`.",
        *own,
        "",
        "```python",
        *(["import torch"] if sampler and config.model else []),
        "import iwae",
        "model, config, metrics = iwae.load_run(\"THIS_FOLDER\")",
        *([draw] if sampler else []),
        "```",
        "",
        "`iwae evaluate THIS_FOLDER` replays the test NLL above (with the data in `IWAE_DATA_DIR`); "
        f"{'`iwae sample` and ' if sampler else ''}`iwae compare` take the folder too.",
        "",
    ])  # fmt: skip
