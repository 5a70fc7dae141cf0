"""The training loop (Section 5.1): the paper's Adam schedule, dynamic binarization, resumable run folders.

A run folder holds ``config.json``, ``metrics.jsonl`` (one line per pass), ``checkpoint.safetensors`` and, once
evaluated, ``metrics.json`` and the figures. The loop reads top to bottom: for each stage, for each step: shuffle at
the start of a pass, binarize the minibatch, take one step, log at the end of a pass, checkpoint every few minutes
and at the end of the stage. The checkpoint holds the model, Adam's moments, the position in the schedule, the
current pass's permutation and every generator state, so a run killed at any moment and resumed with
:func:`resume` reaches exactly the numbers it would have reached uninterrupted.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from iwae import data
from iwae.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from iwae.config import TrainConfig, schedule
from iwae.estimators import make_optimizer, make_train_step
from iwae.model import IWAE

__all__ = ["RunError", "TrainingDiverged", "train", "resume", "build_model", "resolve_device", "load_run"]

_CHECK_EVERY = 50  # steps between finiteness checks and checkpoint-timer looks (one host sync each)


class RunError(RuntimeError):
    """A run folder that cannot be created, read or continued."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise RunError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from err


def build_model(config: TrainConfig, output_bias: torch.Tensor | None = None) -> IWAE:
    """The paper's architecture (or the general one the config describes), visible bias from the data mean.

    The initial weights are drawn from a generator seeded by the config's seed.
    """
    gen = torch.Generator().manual_seed(config.seed)
    if config.latent_dims is None:
        return IWAE.paper(layers=config.layers, output_bias=output_bias, generator=gen)
    n = len(config.latent_dims)
    q_hidden = config.q_hidden or [[200, 200]] + [[100, 100]] * (n - 1)
    p_hidden = config.p_hidden or [[100, 100]] * (n - 1) + [[200, 200]]
    return IWAE(784, config.latent_dims, q_hidden, p_hidden, "bernoulli", output_bias, generator=gen)


def _generators(config: TrainConfig, device: torch.device) -> dict[str, torch.Generator]:
    # "shuffle" draws permutations on the CPU; "device" draws binarizations and reparameterisation noise.
    gens = {"shuffle": torch.Generator(), "device": torch.Generator(device=device)}
    gens["shuffle"].manual_seed(config.seed)
    gens["device"].manual_seed(config.seed + 1)
    return gens


def _new_run(config: TrainConfig, run_dir: Path) -> None:
    if (run_dir / "config.json").exists():
        raise RunError(f"{run_dir} already holds a run; continue it with `iwae resume {run_dir}` or pick another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(config.to_json())
    except OSError as err:
        raise RunError(f"cannot write the run folder {run_dir}: {err.strerror or err}") from err


def load_run(run_dir: str | Path) -> tuple[TrainConfig, IWAE, dict[str, Any]]:
    """Config, model (on the config's device) and checkpoint state of a saved run."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise RunError(f"{run_dir} is not a run folder (no config.json); make one with `iwae train --out {run_dir}`")
    config = TrainConfig.load(run_dir / "config.json")
    model = build_model(config).to(resolve_device(config.device))
    state, _ = load_checkpoint(run_dir / CHECKPOINT_NAME, model)
    return config, model, state


def train(config: TrainConfig, run_dir: str | Path, *, progress: bool = True) -> Path:
    """Start a new run in ``run_dir`` (which must not hold one) and train it to the end of its schedule."""
    run_dir = Path(run_dir)
    _new_run(config, run_dir)
    return _train(config, run_dir, fresh=True, progress=progress)


def resume(run_dir: str | Path, *, progress: bool = True) -> Path:
    """Continue a run from its last checkpoint (or from the start, if it was stopped before the first one)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise RunError(f"{run_dir} is not a run folder (no config.json); start one with `iwae train --out {run_dir}`")
    config = TrainConfig.load(run_dir / "config.json")
    return _train(config, run_dir, fresh=not (run_dir / CHECKPOINT_NAME).exists(), progress=progress)


def _train(config: TrainConfig, run_dir: Path, *, fresh: bool, progress: bool) -> Path:
    device = resolve_device(config.device)
    x_train = data.load(config.dataset, "train", config.data_dir).to(device)
    binary = data.is_binary(config.dataset)
    model = build_model(config, output_bias=x_train.mean(0)).to(device)
    optimizer = make_optimizer(model, betas=config.adam_betas)
    gens = _generators(config, device)
    stages = schedule(config)
    pos: dict[str, Any] = {"stage": 0, "step": 0, "train_seconds": 0.0, "log_lines": 0, "pass_loss": 0.0}
    perm = None
    if fresh:
        if config.init_from:
            _, source, _ = load_run(config.init_from)
            model.load_state_dict(source.state_dict())
        (run_dir / "metrics.jsonl").write_text("")
    else:
        pos, extra = load_checkpoint(run_dir / CHECKPOINT_NAME, model, optimizer)
        gens["shuffle"].set_state(extra["rng_shuffle"])
        gens["device"].set_state(extra["rng_device"].cpu() if device.type == "cpu" else extra["rng_device"])
        perm = extra.get("perm")
        _truncate_lines(run_dir / "metrics.jsonl", pos["log_lines"])
    step = make_train_step(
        model, optimizer, config.k, config.objective, config.estimator, m=config.m, beta=config.beta,
        generator=gens["device"], compile=config.compile,
    )  # fmt: skip
    n, bs = x_train.shape[0], config.batch_size
    steps_per_pass = math.ceil(n / bs)
    done_passes = sum(_stage_steps(s.passes, steps_per_pass) for s in stages[: pos["stage"]]) / steps_per_pass
    writer = _tensorboard(run_dir) if config.tensorboard else None

    def checkpoint() -> None:
        tensors = {"rng_shuffle": gens["shuffle"].get_state(), "rng_device": gens["device"].get_state()}
        if perm is not None:
            tensors["perm"] = perm
        save_checkpoint(run_dir / CHECKPOINT_NAME, model, optimizer, pos, tensors)

    last_save = time.monotonic()
    while pos["stage"] < len(stages):
        stage = stages[pos["stage"]]
        for group in optimizer.param_groups:
            group["lr"] = stage.lr
        total = _stage_steps(stage.passes, steps_per_pass)
        bar = tqdm(
            total=total, initial=pos["step"], unit="step", disable=not progress, leave=False,
            desc=f"stage {stage.index + 1}/{len(stages)} lr {stage.lr:.2e}",
        )  # fmt: skip
        loss_sum = torch.tensor(pos["pass_loss"], device=device, dtype=torch.float64)
        tick = time.monotonic()
        pass_start = tick
        while pos["step"] < total:
            t = pos["step"] % steps_per_pass
            if t == 0:  # a new pass: reshuffle
                perm = torch.randperm(n, generator=gens["shuffle"]).to(device)
                loss_sum.zero_()
                pass_start = time.monotonic()
            xb = x_train[perm[t * bs : (t + 1) * bs]]
            if not binary:
                xb = data.binarize(xb, generator=gens["device"])  # a fresh draw every time (Section 5)
            loss_sum += step(xb)
            pos["step"] += 1
            bar.update()
            end_of_pass = t == steps_per_pass - 1 or pos["step"] == total
            if pos["step"] % _CHECK_EVERY == 0 or end_of_pass:
                if not torch.isfinite(loss_sum):
                    bar.close()
                    raise TrainingDiverged(
                        f"the training loss became non-finite in stage {stage.index + 1}, step {pos['step']}; "
                        f"the last good checkpoint in {run_dir} is kept (try a lower learning rate or another seed)"
                    )
                now = time.monotonic()
                pos["train_seconds"] += now - tick
                tick = now
                pos["pass_loss"] = float(loss_sum)
                if end_of_pass:
                    steps = t + 1
                    record = {
                        "stage": stage.index, "lr": stage.lr,
                        "pass": done_passes + pos["step"] / steps_per_pass,
                        "train_bound": -float(loss_sum) / steps,
                        "seconds": now - pass_start, "examples_per_s": steps * bs / max(now - pass_start, 1e-9),
                    }  # fmt: skip
                    _append_line(run_dir / "metrics.jsonl", record)
                    pos["log_lines"] += 1
                    bar.set_postfix(bound=f"{record['train_bound']:.2f}", ex_s=f"{record['examples_per_s']:.0f}")
                    if writer is not None:
                        writer.add_scalar("train/bound", record["train_bound"], record["pass"])
                if pos["step"] < total and now - last_save >= 60 * config.checkpoint_minutes:
                    checkpoint()
                    last_save = time.monotonic()
        bar.close()
        done_passes += total / steps_per_pass
        pos.update(stage=pos["stage"] + 1, step=0, pass_loss=0.0)
        perm = None
        checkpoint()
        last_save = time.monotonic()
    if writer is not None:
        writer.close()
    return run_dir


def _stage_steps(passes: float, steps_per_pass: int) -> int:
    """Steps in a stage of ``passes`` passes (fractional passes allowed, at least one step)."""
    return max(1, round(passes * steps_per_pass))


def _append_line(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_lines(path: Path, n: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (they will be written again)."""
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    path.write_text("".join(lines[:n]))


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise RunError("--tensorboard needs the `tensorboard` package: pip install tensorboard") from err
    return SummaryWriter(str(run_dir / "tensorboard"))
