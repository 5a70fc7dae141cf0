"""The ``iwae`` command: train, resume, evaluate, sample, download (and the experiments of the paper)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from iwae import data
from iwae.checkpoint import CheckpointError
from iwae.config import add_config_options, config_from_args, int_list, positive_float, positive_int
from iwae.rundir import RunError, load_run
from iwae.train import TrainingDiverged, train_and_evaluate

__all__ = ["main", "build_parser"]


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=positive_int,
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
    add_config_options(t)
    t.add_argument(
        "--config",
        metavar="FILE",
        help="JSON file of config values (e.g. another run's config.json); flags given here override it",
    )
    t.add_argument("--out", required=True, help="run folder to create")
    t.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_threads(t)

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
    e.add_argument("--k", type=positive_int, help="importance samples (default: the run's eval k)")
    e.add_argument("--split", choices=data.SPLITS, default="test", help="split (default test)")
    e.add_argument(
        "--n",
        type=positive_int,
        help="use N examples spread evenly through the split (default: the run's eval-n; more than the split: all)",
    )
    e.add_argument("--pruned", action="store_true", help="also the NLL with inactive units removed (a second L_k)")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_threads(e)

    c = sub.add_parser(
        "compare",
        help="paired NLL difference of two runs on the same images and noise",
        description="Score both runs' models on the same N images of the split with the same importance-sample "
        "stream; print each run's NLL and the mean per-image difference A - B with its paired standard error, and "
        "write them as JSON.",
    )
    c.add_argument("run_a", help="run folder made by `iwae train`")
    c.add_argument("run_b", help="run folder made by `iwae train`, of the same data set")
    c.add_argument("--split", choices=data.SPLITS, default="test", help="split (default test)")
    c.add_argument("--k", type=positive_int, help="importance samples (default: the runs' eval k, if they agree)")
    c.add_argument("--n", type=positive_int, help="N examples spread evenly through the split (default: eval-n)")
    c.add_argument("--seed", type=int, help="seed of the images' binarization and the noise (default: the runs')")
    c.add_argument("--out", help="JSON file to write (default compare-<A>-<B>-<split>-k<k>-n<n>.json here)")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_threads(c)

    s = sub.add_parser("sample", help="a grid of samples (Bernoulli means) from a saved run")
    s.add_argument("run_dir", help="run folder made by `iwae train`")
    s.add_argument("--n", type=positive_int, default=100, help="number of samples (default 100)")
    s.add_argument("--out", default="samples.png", help="PNG file to write (default samples.png)")
    s.add_argument("--seed", type=int, default=0, help="seed (default 0)")

    from iwae.experiments.cli import add_reproduce_command

    add_reproduce_command(sub)

    d = sub.add_parser("download", help="fetch and verify a data set")
    d.add_argument("dataset", choices=data.DATASETS, help="data set to fetch")
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
    n.add_argument("--k", type=int_list, default=[1, 5, 50, 500], help="numbers of samples (default 1,5,50,500)")
    n.add_argument("--estimators", default="reparam,stl,dreg", help="comma-separated (default reparam,stl,dreg)")
    n.add_argument("--draws", type=positive_int, default=100, help="gradient draws per k and estimator (100)")
    n.add_argument("--batch", type=positive_int, default=20, help="images in the fixed minibatch (default 20)")
    n.add_argument("--out", required=True, help="folder for snr.png, snr.md, snr.json (and model/)")
    n.add_argument("--train-passes", type=positive_float, default=1.0, help="passes for the small model (1)")
    n.add_argument("--data-dir", help="data directory (default: the run's, else $IWAE_DATA_DIR)")
    n.add_argument("--seed", type=int, default=0, help="seed of the minibatch, the noise and the small model (0)")
    n.add_argument("--device", help="cpu, cuda or cuda:N (default: the run's device)")
    n.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _train(args: argparse.Namespace) -> None:
    config = config_from_args(args, args.config)
    metrics = train_and_evaluate(args.out, config, progress=not args.quiet, evaluate=not args.no_eval)
    if metrics is not None:
        _report(metrics, Path(args.out))


def _resume(args: argparse.Namespace) -> None:
    _report(train_and_evaluate(args.run_dir, progress=not args.quiet), Path(args.run_dir))


def _report(metrics: dict, run_dir: Path) -> None:
    active = "+".join(map(str, metrics["active_units"]))
    print(
        f"{run_dir}: test NLL {metrics['test_nll']:.2f} nats (mean -L_{metrics['eval_k']} over {metrics['eval_n']} "
        f"test images), train NLL {metrics['train_nll']:.2f}, active units {active}, "
        f"NLL with inactive units removed {metrics['test_nll_pruned']:.2f}, trained {metrics['train_seconds']:.0f} s"
    )


def _evaluate(args: argparse.Namespace) -> None:
    from iwae.evaluate_run import evaluate_run

    r = evaluate_run(args.run_dir, k=args.k, split=args.split, n=args.n, progress=not args.quiet, pruned=args.pruned)
    pruned = f", NLL with inactive units removed {r['nll_pruned']:.2f}" if args.pruned else ""
    print(
        f"{args.run_dir}: {r['split']} NLL {r['nll']:.2f} +- {r['nll_sem']:.2f} nats (mean -L_{r['eval_k']} over "
        f"{r['n']} images){pruned}, active units {'+'.join(map(str, r['active_units']))} (on "
        f"{r['active_units_n']} {r['active_units_split']} images); eval-{r['split']}-k{r['eval_k']}-n{r['n']}.json"
    )


def _compare(args: argparse.Namespace) -> None:
    from iwae.atomic import write_json
    from iwae.compare import compare_runs, format_comparison

    r = compare_runs(args.run_a, args.run_b, split=args.split, k=args.k, n=args.n, seed=args.seed,
                     progress=not args.quiet)  # fmt: skip
    names = f"{Path(args.run_a).name}-{Path(args.run_b).name}"
    out = args.out or f"compare-{names}-{r['split']}-k{r['eval_k']}-n{r['n']}.json"
    write_json(out, r)
    print(f"{format_comparison(r)}\n\nwrote {out}")


def _sample(args: argparse.Namespace) -> None:
    import torch

    from iwae.plots import save_image_grid

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
    "compare": _compare,
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
