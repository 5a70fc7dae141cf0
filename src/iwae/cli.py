"""The ``iwae`` command: train, resume, evaluate, sample, download (and the experiments of the paper)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from iwae import data
from iwae.checkpoint import CheckpointError
from iwae.config import DATASET_NAMES, TrainConfig
from iwae.estimators import ESTIMATORS, KINDS
from iwae.train import RunError, TrainingDiverged

__all__ = ["main", "build_parser"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _schedule(text: str) -> list[list[float]]:
    """'2187:1e-4' or '1:1e-3,3:7.2e-4' -> [[passes, lr], ...]."""
    try:
        return [[float(p), float(lr)] for p, lr in (item.split(":") for item in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PASSES:LR[,PASSES:LR...], got {text!r}") from None


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_schedule_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``iwae train`` and ``iwae reproduce``."""
    p.add_argument("--data-dir", help="data directory (default: $IWAE_DATA_DIR, else the per-user cache)")
    p.add_argument("--stages", type=_positive_int, default=8, help="run only stages i = 0..N-1 of the 8 (default 8)")
    p.add_argument(
        "--pass-scale",
        type=_positive_float,
        default=1.0,
        help="multiply every stage's 3^i passes by F, fractions allowed (default 1: 3,280 passes)",
    )
    p.add_argument("--eval-k", type=_positive_int, default=5000, help="importance samples for the test NLL (5000)")
    p.add_argument(
        "--eval-n",
        type=_positive_int,
        help="evaluate on N examples of each split, spread evenly through it (default all)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=_positive_int,
        help="CPU threads for torch (default: torch's choice); 1 is fastest for batch 20 on a busy machine",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iwae", description="Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, ICLR 2016)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a model and evaluate it",
        description="Train a VAE/IWAE on the paper's "
        "protocol (Adam, batch 20, 3^i passes at 1e-3*10^(-i/7)), then evaluate it into the run folder.",
    )
    t.add_argument("--dataset", choices=DATASET_NAMES, default="mnist", help="data set (default mnist)")
    t.add_argument("--layers", type=int, choices=(1, 2), default=1, help="stochastic layers, the paper's architectures")
    t.add_argument("--latent-dims", type=_int_list, help="general architecture: latent sizes, e.g. 2 or 100,50")
    t.add_argument("--objective", choices=KINDS, default="iwae", help="bound to train on (default iwae)")
    t.add_argument("--k", type=_positive_int, default=50, help="samples per example (default 50)")
    t.add_argument("--m", type=_positive_int, default=1, help="outer samples for miwae/piwae (default 1)")
    t.add_argument("--beta", type=float, default=0.5, help="ELBO weight for ciwae (default 0.5)")
    t.add_argument("--estimator", choices=ESTIMATORS, default="reparam", help="gradient estimator (default reparam)")
    t.add_argument("--out", required=True, help="run folder to create")
    t.add_argument("--batch-size", type=_positive_int, default=20, help="minibatch size (default 20)")
    t.add_argument(
        "--lr-variant",
        choices=("paper", "reference"),
        default="paper",
        help="paper: 1e-3*10^(-i/7), beta1 0.9; reference: the authors' code (rounded rates, beta1 0.99)",
    )
    t.add_argument("--schedule", type=_schedule, help="replace the 3^i stages by PASSES:LR[,PASSES:LR...]")
    t.add_argument("--init-from", help="start from the model of this run folder (e.g. Table 2)")
    t.add_argument("--checkpoint-minutes", type=_positive_float, default=5.0, help="checkpoint interval (default 5)")
    t.add_argument("--tensorboard", action="store_true", help="also log to RUN/tensorboard (needs tensorboard)")
    t.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    t.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the training step (reparam/stl estimators; CUDA graphs on a GPU; compiles for a minute)",
    )
    _add_threads(t)
    add_schedule_options(t)

    r = sub.add_parser(
        "resume",
        help="continue an interrupted run",
        description="Continue a run from its last "
        "checkpoint to the result it would have reached uninterrupted, then evaluate it.",
    )
    r.add_argument("run_dir", help="run folder made by `iwae train`")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_threads(r)

    e = sub.add_parser("evaluate", help="NLL and active units of a saved run")
    e.add_argument("run_dir", help="run folder made by `iwae train`")
    e.add_argument("--k", type=_positive_int, help="importance samples (default: the run's eval k)")
    e.add_argument("--split", choices=("test", "train", "validation"), default="test", help="split (default test)")
    e.add_argument(
        "--n",
        type=_positive_int,
        help="use N examples spread evenly through the split (default: the run's eval-n; more than the split: all)",
    )
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_threads(e)

    s = sub.add_parser("sample", help="a grid of samples (Bernoulli means) from a saved run")
    s.add_argument("run_dir", help="run folder made by `iwae train`")
    s.add_argument("--n", type=_positive_int, default=100, help="number of samples (default 100)")
    s.add_argument("--out", default="samples.png", help="PNG file to write (default samples.png)")
    s.add_argument("--seed", type=int, default=0, help="seed (default 0)")

    from iwae.experiments.cli import add_reproduce_command

    add_reproduce_command(sub, add_schedule_options)

    d = sub.add_parser("download", help="fetch and verify a data set")
    d.add_argument("dataset", choices=DATASET_NAMES, help="data set to fetch")
    d.add_argument("--data-dir", help="data directory (default: $IWAE_DATA_DIR, else the per-user cache)")

    n = sub.add_parser(
        "snr",
        help="gradient signal-to-noise ratio against k, per estimator",
        description="SNR = |mean|/std of each gradient coordinate over many draws on one minibatch (Rainforth et al. "
        "2018), averaged over the encoder's and the decoder's parameters, for each k and estimator of the IWAE "
        "bound. Writes OUT/snr.png, OUT/snr.md and OUT/snr.json. Without RUN_DIR, first trains the paper's 1-layer "
        "MNIST model on IWAE k=5 for --train-passes passes (2,980 steps each) into OUT/model, or reuses it.",
    )
    n.add_argument("run_dir", nargs="?", help="run folder made by `iwae train` (default: train a small model)")
    n.add_argument("--k", type=_int_list, default=[1, 5, 50, 500], help="numbers of samples (default 1,5,50,500)")
    n.add_argument("--estimators", default="reparam,stl,dreg", help="comma-separated (default reparam,stl,dreg)")
    n.add_argument("--draws", type=_positive_int, default=100, help="gradient draws per k and estimator (100)")
    n.add_argument("--batch", type=_positive_int, default=20, help="images in the fixed minibatch (default 20)")
    n.add_argument("--out", required=True, help="folder for snr.png, snr.md, snr.json (and model/)")
    n.add_argument("--train-passes", type=_positive_float, default=1.0, help="passes for the small model (1)")
    n.add_argument("--data-dir", help="data directory (default: the run's, else $IWAE_DATA_DIR)")
    n.add_argument("--seed", type=int, default=0, help="seed of the minibatch, the noise and the small model (0)")
    n.add_argument("--device", help="cpu, cuda or cuda:N (default: the run's device)")
    n.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _train(args: argparse.Namespace) -> None:
    from iwae.evaluate_run import finish_run
    from iwae.train import train

    config = TrainConfig(
        dataset=args.dataset, data_dir=args.data_dir, layers=args.layers, latent_dims=args.latent_dims,
        objective=args.objective, k=args.k, m=args.m, beta=args.beta, estimator=args.estimator,
        batch_size=args.batch_size, stages=args.stages, pass_scale=args.pass_scale, lr_variant=args.lr_variant,
        custom_schedule=args.schedule, init_from=args.init_from, eval_k=args.eval_k, eval_n=args.eval_n,
        seed=args.seed, device=args.device, checkpoint_minutes=args.checkpoint_minutes, tensorboard=args.tensorboard,
        compile=args.compile,
    )  # fmt: skip
    run_dir = train(config, args.out, progress=not args.quiet)
    if not args.no_eval:
        _report(finish_run(run_dir, progress=not args.quiet), run_dir)


def _resume(args: argparse.Namespace) -> None:
    from iwae.evaluate_run import finish_run
    from iwae.train import resume

    run_dir = resume(args.run_dir, progress=not args.quiet)
    _report(finish_run(run_dir, progress=not args.quiet), run_dir)


def _report(metrics: dict, run_dir: Path) -> None:
    active = "+".join(map(str, metrics["active_units"]))
    print(
        f"{run_dir}: test NLL {metrics['test_nll']:.2f} nats (mean -L_{metrics['eval_k']} over {metrics['eval_n']} "
        f"test images), train NLL {metrics['train_nll']:.2f}, active units {active}, "
        f"NLL with inactive units removed {metrics['test_nll_pruned']:.2f}, trained {metrics['train_seconds']:.0f} s"
    )


def _evaluate(args: argparse.Namespace) -> None:
    from iwae.evaluate_run import evaluate_run

    r = evaluate_run(args.run_dir, k=args.k, split=args.split, n=args.n, progress=not args.quiet)
    print(
        f"{args.run_dir}: {r['split']} NLL {r['nll']:.2f} +- {r['nll_sem']:.2f} nats (mean -L_{r['eval_k']} over "
        f"{r['n']} images), active units {'+'.join(map(str, r['active_units']))}"
    )


def _sample(args: argparse.Namespace) -> None:
    import torch

    from iwae.plots import save_image_grid
    from iwae.train import load_run

    _, model, _ = load_run(args.run_dir)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    save_image_grid(model.sample(args.n, generator=gen), args.out)
    print(f"wrote {args.n} samples to {args.out}")


def _download(args: argparse.Namespace) -> None:
    for path in data.download(args.dataset, args.data_dir):
        print(path)


def _reproduce(args: argparse.Namespace) -> None:
    from iwae.experiments.cli import reproduce

    if reproduce(args):
        raise RunError("some runs failed (listed above); fix the cause and run the same command again to continue")


def _snr(args: argparse.Namespace) -> None:
    from iwae.snr import snr_command

    result = snr_command(
        args.out, args.run_dir, args.k, args.estimators.split(","), args.draws, args.batch, seed=args.seed,
        data_dir=args.data_dir, device=args.device, train_passes=args.train_passes, progress=not args.quiet,
    )  # fmt: skip
    model = ("trained " if result["model"]["trained_here"] else "") + f"model {result['model']['run_dir']}"
    print(f"{args.out}: snr.png, snr.md, snr.json ({model}, {result['seconds']:.0f} s)")
    print((Path(args.out) / "snr.md").read_text().split("\n\n")[-1].rstrip())


COMMANDS = {
    "train": _train,
    "resume": _resume,
    "evaluate": _evaluate,
    "sample": _sample,
    "download": _download,
    "reproduce": _reproduce,
    "snr": _snr,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("iwae: interrupted; continue with `iwae resume RUN_DIR` (runs restart from their last checkpoint)",
              file=sys.stderr)  # fmt: skip
        return 130
    except (RunError, TrainingDiverged, CheckpointError, ValueError, OSError, FloatingPointError) as err:
        print(f"iwae: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
