"""An independent peer on the same budget: Pyro's ``RenyiELBO(alpha=0)`` against ``iwae.runs.train``, one evaluator.

    python -m benchmarks.peer_nll --k 5 --seeds 0,1,2 --out results/fidelity/peer-k5.json

For each seed, in one process on one thread: ``iwae.runs.train`` trains the paper's 1-layer MNIST model with IWAE
(Eq. 14) on the given schedule (default: the committed CPU reproduction's, 8 stages at 0.003 of the paper's passes);
Pyro's ``RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True)`` trains the same networks
(:class:`benchmarks.peers.PyroIWAE`) from the very same initial weights (the project's initialisation for that seed),
for the same steps at the same learning rates, on minibatches of 20 of the same 59,600 training images, shuffled
every pass and binarized afresh at every use. Pyro's Adam sees the gradient of the batch's *sum* of L_k where the
project's sees its mean, so it runs with eps = 20 x 1e-4, which makes every Adam update the same function of the
per-example mean gradient as the project's (eps 1e-4). Both models are then scored by ``iwae.log_likelihood`` on
the same binarized test images, each after the same global seed (the Pyro model through its own traces).
Writes the JSON and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from benchmarks import report
from benchmarks.peers import PyroIWAE
from iwae import data
from iwae.evaluate import log_likelihood
from iwae.runs import rundir
from iwae.runs.config import TrainConfig, schedule
from iwae.runs.evaluate_run import eval_images
from iwae.runs.train import train
from iwae.util.machine import cpu_model
from iwae.util.streams import SCHEME, SCHEMES

BATCH = 20
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-4


def stage_steps(config: TrainConfig, per_pass: int) -> list[tuple[int, float]]:
    """(steps, learning rate) of each stage, as ``iwae.runs.train`` counts them (at least one step a stage)."""
    return [(max(1, round(s.passes * per_pass)), s.lr) for s in schedule(config)]


def train_pyro(config: TrainConfig, x_train: torch.Tensor) -> tuple[PyroIWAE, float, int]:
    """The Pyro model trained on ``config``'s schedule: (model, seconds in steps, steps)."""
    import pyro
    from pyro.infer import SVI, RenyiELBO

    pyro.clear_param_store()
    nets = PyroIWAE(1)
    nets.load_state_dict(_project_init(config, x_train), strict=True)
    stages = stage_steps(config, math.ceil(x_train.shape[0] / BATCH))
    optim = pyro.optim.Adam({"lr": stages[0][1], "betas": ADAM_BETAS, "eps": ADAM_EPS * BATCH})
    elbo = RenyiELBO(alpha=0.0, num_particles=config.k, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(nets.model, nets.guide, optim, elbo)
    pyro.set_rng_seed(config.seed)  # Pyro's samples come from the global torch generator
    shuffle, noise = torch.Generator().manual_seed(config.seed), torch.Generator().manual_seed(config.seed + 1)
    per_pass = math.ceil(x_train.shape[0] / BATCH)
    seconds, steps, loss = 0.0, 0, 0.0
    for total, lr in stages:
        for opt in optim.optim_objs.values():  # one torch Adam per parameter, made at the first step
            for group in opt.param_groups:
                group["lr"] = lr
        start = time.monotonic()
        for t in range(total):
            if t % per_pass == 0:  # a new pass (each stage starts one, as in iwae.runs.train)
                perm = torch.randperm(x_train.shape[0], generator=shuffle)
            xb = data.binarize(x_train[perm[(t % per_pass) * BATCH : (t % per_pass + 1) * BATCH]], generator=noise)
            loss += svi.step(xb)
        seconds, steps = seconds + time.monotonic() - start, steps + total
    if not math.isfinite(loss):
        raise FloatingPointError(f"the Pyro run of seed {config.seed} diverged")
    return nets, seconds, steps


def _project_init(config: TrainConfig, x_train: torch.Tensor) -> dict[str, torch.Tensor]:
    """The project's initial weights for this seed, named as :class:`PyroIWAE`'s (1 stochastic layer)."""
    w = rundir.build_model(config, output_bias=x_train.mean(0)).state_dict()
    q, p = "encoder.0.", "decoder.0."
    names = {"q.0.trunk.0": q + "trunk.0", "q.0.trunk.2": q + "trunk.2", "q.0.mean": q + "mean",
             "q.0.log_std": q + "log_std", "px.0.0": p + "trunk.0", "px.0.2": p + "trunk.2",
             "px.1": p + "logits"}  # fmt: skip
    return {f"{a}.{t}": w[f"{b}.{t}"] for a, b in names.items() for t in ("weight", "bias")}


def train_project(config: TrainConfig, folder: Path, x_train: torch.Tensor) -> tuple[torch.nn.Module, float, int]:
    """``iwae.runs.train`` on ``config`` in ``folder``: (model, seconds in passes, steps)."""
    train(config, folder, progress=False)
    _, model, position = rundir.load_run(folder)
    steps = sum(n for n, _ in stage_steps(config, math.ceil(x_train.shape[0] / BATCH)))
    return model, position["train_seconds"], steps


def score(model: torch.nn.Module, x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Per-image L_k by ``iwae.log_likelihood``, the importance samples from the global generator seeded ``seed``."""
    torch.manual_seed(seed)
    return log_likelihood(model, x, k).double()


def run_seed(args: argparse.Namespace, seed: int, x_train: torch.Tensor, x_test: torch.Tensor, root: Path) -> dict:
    """Train both implementations with one seed, score both on ``x_test``; per-image L_k differences paired."""
    config = TrainConfig(dataset="mnist", layers=1, bound="iwae", k=args.k, stages=args.stages,
                         pass_scale=args.pass_scale, seed=seed, device="cpu", curve_k=0, checkpoint_minutes=1e6,
                         streams=args.streams, flush_denormal=args.flush_denormal)  # fmt: skip
    ours, ours_seconds, steps = train_project(config, root / f"iwae-seed{seed}", x_train)
    peer, peer_seconds, peer_steps = train_pyro(config, x_train)
    a, b = score(ours, x_test, args.eval_k, 10_000 + seed), score(peer, x_test, args.eval_k, 10_000 + seed)
    diff = a - b  # per image: NLL(Pyro) - NLL(iwae)
    n = x_test.shape[0]
    result = {
        "seed": seed, "steps": steps, "iwae_nll": -a.mean().item(), "iwae_nll_sem": a.std().item() / n**0.5,
        "pyro_nll": -b.mean().item(), "pyro_nll_sem": b.std().item() / n**0.5,
        "diff": diff.mean().item(), "diff_paired_sem": diff.std().item() / n**0.5,
        "iwae_ms_per_step": 1000 * ours_seconds / steps, "pyro_ms_per_step": 1000 * peer_seconds / peer_steps,
    }  # fmt: skip
    print(", ".join(f"{k} {v:.4g}" for k, v in result.items()), flush=True)
    return result


def summarize(per_seed: list[dict]) -> dict:
    """Means over seeds; the difference's uncertainty from the seed spread and from the paired evaluation."""
    col = {key: torch.tensor([r[key] for r in per_seed], dtype=torch.float64) for key in per_seed[0]}
    s = len(per_seed)
    spread = col["diff"].std().item() if s > 1 else float("nan")
    return {
        "iwae_nll": col["iwae_nll"].mean().item(), "pyro_nll": col["pyro_nll"].mean().item(),
        "iwae_nll_seed_sd": col["iwae_nll"].std().item(), "pyro_nll_seed_sd": col["pyro_nll"].std().item(),
        "diff": col["diff"].mean().item(), "diff_seed_sd": spread, "diff_seed_sem": spread / s**0.5,
        "diff_paired_sem": col["diff_paired_sem"].square().sum().sqrt().item() / s,
        "iwae_ms_per_step": col["iwae_ms_per_step"].mean().item(),
        "pyro_ms_per_step": col["pyro_ms_per_step"].mean().item(),
    }  # fmt: skip


def machine() -> str:
    """CPU model (``lscpu``), cores, torch and (where installed) pyro versions."""
    try:
        import pyro

        pyro_version = f", pyro {pyro.__version__}"
    except ImportError:
        pyro_version = ""
    return (f"{cpu_model()}, {os.cpu_count()} cores, one torch thread; torch {torch.__version__}{pyro_version}, "
            f"Python {platform.python_version()}")  # fmt: skip


def markdown(result: dict) -> str:
    """The table of results/fidelity/peer-k<k>.md, every number from ``result``."""
    a, s = result["args"], result["summary"]
    rows = [f"| {r['seed']} | {r['iwae_nll']:.2f} ± {r['iwae_nll_sem']:.2f} | {r['pyro_nll']:.2f} ± "
            f"{r['pyro_nll_sem']:.2f} | {r['diff']:+.3f} ± {r['diff_paired_sem']:.3f} | {r['iwae_ms_per_step']:.2f} | "
            f"{r['pyro_ms_per_step']:.2f} |" for r in result["seeds"]]  # fmt: skip
    return "\n".join([
        f"# iwae against Pyro's RenyiELBO(alpha=0), k={a['k']}, on the same budget",
        "",
        f"**A short schedule, not the paper's**: {result['passes']:g} passes ({result['steps']:,} steps of 20 images; "
        f"the paper trains 3,280 passes). NLL = mean of -L_{a['eval_k']} (`iwae.log_likelihood`) on {a['eval_n']:,} "
        "test images spread evenly through the test set, the same binarization for every model; ± one standard error "
        "over images. Difference = Pyro's NLL minus iwae's, paired per image (same images, same seed of the "
        "evaluation noise); ms per step: wall time of the training steps alone, both in this one process.",
        "",
        "| seed | iwae NLL | Pyro NLL | difference (paired s.e.) | iwae ms/step | Pyro ms/step |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        f"| mean | {s['iwae_nll']:.2f} | {s['pyro_nll']:.2f} | {s['diff']:+.3f} | {s['iwae_ms_per_step']:.2f} | "
        f"{s['pyro_ms_per_step']:.2f} |",
        "",
        f"Over the {len(result['seeds'])} seeds: difference {s['diff']:+.3f} nats; seed spread (s.d. of the per-seed "
        f"differences) {s['diff_seed_sd']:.3f}, so a standard error of {s['diff_seed_sem']:.3f} over seeds; paired "
        f"evaluation standard error of the mean difference {s['diff_paired_sem']:.3f}. Seed s.d. of the NLL: iwae "
        f"{s['iwae_nll_seed_sd']:.3f}, Pyro {s['pyro_nll_seed_sd']:.3f}.",
        "",
        *report.provenance(result),
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=5, help="importance samples in training (default 5)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--stages", type=int, default=8, help="stages of the paper's schedule (default 8)")
    parser.add_argument("--pass-scale", type=float, default=0.003, help="fraction of each stage's passes (0.003)")
    parser.add_argument("--eval-k", type=int, default=5000, help="importance samples of the test NLL (5000)")
    parser.add_argument("--eval-n", type=int, default=1000, help="test images, spread through the set (1000)")
    parser.add_argument(
        "--streams",
        type=int,
        choices=SCHEMES,
        default=SCHEME,
        help=f"random-stream scheme of the project's runs, as iwae train's (default {SCHEME})",
    )
    parser.add_argument(
        "--flush-denormal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="flush subnormal floats in the project's steps, as iwae train's (default on)",
    )
    parser.add_argument("--out", type=Path, help=report.OUT_HELP)
    args = parser.parse_args()
    report.check_out(parser, args.out)
    torch.set_num_threads(1)
    x_train = data.load("mnist", "train")
    config = TrainConfig(dataset="mnist", seed=0, device="cpu", streams=args.streams)
    x_test = eval_images(config, "test", args.eval_n, torch.device("cpu"), seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        seeds = [run_seed(args, int(s), x_train, x_test, Path(tmp)) for s in args.seeds.split(",")]
    per_pass = math.ceil(x_train.shape[0] / BATCH)
    steps = sum(n for n, _ in stage_steps(config.replace(stages=args.stages, pass_scale=args.pass_scale), per_pass))
    out = f" --out {args.out}" if args.out else ""
    result = {
        "command": f"python -m benchmarks.peer_nll --k {args.k} --seeds {args.seeds} --stages {args.stages} "
        f"--pass-scale {args.pass_scale:g} --eval-k {args.eval_k} --eval-n {args.eval_n} --streams {args.streams} "
        f"--{'' if args.flush_denormal else 'no-'}flush-denormal{out}",
        "args": {k: v for k, v in vars(args).items() if k != "out"}, "machine": machine(),
        "date": date.today().isoformat(), "steps": steps, "passes": steps / per_pass,
        "seeds": seeds, "summary": summarize(seeds),
    }  # fmt: skip
    report.publish(result, markdown(result), args.out)


if __name__ == "__main__":
    main()
