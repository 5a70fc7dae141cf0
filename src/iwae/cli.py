"""The ``iwae`` command: train, resume, evaluate, sample, download (and the experiments of the paper).

The arguments are parsed before torch is imported: the parser needs only names (data sets, bounds, estimators),
and each command imports what it runs, so ``iwae --help`` answers at once.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from iwae import data
from iwae.config import (
    RESUMABLE,
    add_config_options,
    config_from_args,
    int_list,
    overrides_from_args,
    positive_float,
    positive_int,
)

__all__ = ["main", "build_parser", "Command", "COMMANDS"]


_RUN_DIR_HELP = "run folder made by `iwae train`"


def _add_progress_and_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads for torch (default for train and resume: 1 on the CPU for batches of up to 100, which "
        "does not slow down when another process holds a core; else torch's choice)",
    )


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data directory (default: the run's, if it exists; else $IWAE_DATA_DIR)")


def _train_arguments(p: argparse.ArgumentParser) -> None:
    add_config_options(p)
    p.add_argument(
        "--config",
        metavar="FILE",
        help="JSON file of config values (e.g. another run's config.json); flags given here override it",
    )
    p.add_argument("--out", required=True, help="run folder to create")
    _add_progress_and_threads(p)
    from iwae.experiments.slurm import add_executor_arguments

    add_executor_arguments(p)


def _resume_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help=_RUN_DIR_HELP)
    add_config_options(p, RESUMABLE)  # recorded in the run's config.json
    p.add_argument(
        "--re-evaluate", action="store_true", help="evaluate a finished run again (with the settings given here)"
    )
    _add_progress_and_threads(p)


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help=_RUN_DIR_HELP)
    p.add_argument("--k", type=positive_int, help="importance samples (default: the run's eval k)")
    p.add_argument("--split", choices=data.SPLITS, default="test", help="split (default test)")
    p.add_argument(
        "--n",
        type=positive_int,
        help="use N examples spread evenly through the split (default: the run's eval-n; more than the split: all)",
    )
    p.add_argument("--pruned", action="store_true", help="also the NLL with inactive units removed (a second L_k)")
    p.add_argument("--nproc", type=positive_int,
                   help="shard the examples over N processes here (noise drawn per block of examples: the same "
                   "numbers for every N; also under torchrun)")  # fmt: skip
    _add_data_dir(p)
    _add_progress_and_threads(p)


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", help=_RUN_DIR_HELP)
    p.add_argument("run_b", help=f"{_RUN_DIR_HELP}, of the same data set")
    p.add_argument("--split", choices=data.SPLITS, default="test", help="split (default test)")
    p.add_argument("--k", type=positive_int, help="importance samples (default: the runs' eval k, if they agree)")
    p.add_argument("--n", type=positive_int, help="N examples spread evenly through the split (default: eval-n)")
    p.add_argument("--seed", type=int, help="seed of the images' binarization and the noise (default: the runs')")
    p.add_argument("--out", help="JSON file to write (default compare-<A>-<B>-<split>-k<k>-n<n>.json here)")
    _add_data_dir(p)
    _add_progress_and_threads(p)


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help=_RUN_DIR_HELP)
    p.add_argument("--n", type=positive_int, default=100, help="number of samples (default 100)")
    p.add_argument("--out", default="samples.png", help="PNG file to write (default samples.png)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")


def _reproduce_arguments(p: argparse.ArgumentParser) -> None:
    from iwae.experiments.cli import add_reproduce_arguments

    add_reproduce_arguments(p)


def _download_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", choices=data.DATASETS, help="data set to fetch")
    p.add_argument("--data-dir", help="data directory (default: $IWAE_DATA_DIR, else the per-user cache)")


def _snr_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", nargs="?", help=f"{_RUN_DIR_HELP} (default: train a small model)")
    p.add_argument("--k", type=int_list, default=[1, 5, 50, 500], help="numbers of samples (default 1,5,50,500)")
    p.add_argument("--estimators", default="reparam,stl,dreg", help="comma-separated (default reparam,stl,dreg)")
    p.add_argument("--draws", type=positive_int, default=100, help="gradient draws per k and estimator (100)")
    p.add_argument("--batch", type=positive_int, default=20, help="images in the fixed minibatch (default 20)")
    p.add_argument("--out", required=True, help="folder for snr.png, snr.md, snr.json (and model/)")
    p.add_argument("--train-passes", type=positive_float, default=1.0, help="passes for the small model (1)")
    p.add_argument("--data-dir", help="data directory (default: the run's, else $IWAE_DATA_DIR)")
    p.add_argument("--seed", type=int, default=0, help="seed of the minibatch, the noise and the small model (0)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the run's device)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _train(args: argparse.Namespace) -> None:
    from iwae.train import train_and_evaluate

    config = config_from_args(args, args.config)
    if args.executor == "slurm":
        from iwae.experiments.slurm import submit_run

        if (metrics := submit_run(args, config)) is not None:
            _report(metrics, Path(args.out))
        return
    _report(train_and_evaluate(args.out, config, progress=not args.quiet, threads=args.threads), Path(args.out))


def _resume(args: argparse.Namespace) -> None:
    from iwae.rundir import status
    from iwae.train import train_and_evaluate

    if status(args.run_dir) == "done" and not args.re_evaluate:
        print(f"{args.run_dir} is already finished (trained and evaluated: metrics.json); nothing to do. "
              f"`iwae resume {args.run_dir} --re-evaluate` evaluates it again.")  # fmt: skip
        return
    metrics = train_and_evaluate(
        args.run_dir, progress=not args.quiet, threads=args.threads, changes=overrides_from_args(args, RESUMABLE),
        evaluate=True if args.re_evaluate else None,
    )  # fmt: skip
    _report(metrics, Path(args.run_dir))


def _report(metrics: dict | None, run_dir: Path) -> None:
    if metrics is None:
        print(f"{run_dir}: trained, not evaluated (--no-eval); `iwae resume {run_dir} --eval` evaluates it")
        return
    active = "+".join(map(str, metrics["active_units"]))
    print(
        f"{run_dir}: test NLL {metrics['test_nll']:.2f} nats (mean -L_{metrics['eval_k']} over {metrics['eval_n']} "
        f"test images), train NLL {metrics['train_nll']:.2f}, active units {active}, "
        f"NLL with inactive units removed {metrics['test_nll_pruned']:.2f}, trained {metrics['train_seconds']:.0f} s"
    )


def _evaluate(args: argparse.Namespace) -> None:
    import os

    if args.nproc or "WORLD_SIZE" in os.environ:
        _evaluate_sharded(args)
        return
    from iwae.evaluate_run import evaluate_run

    r = evaluate_run(args.run_dir, k=args.k, split=args.split, n=args.n, progress=not args.quiet, pruned=args.pruned,
                     data_dir=args.data_dir)  # fmt: skip
    pruned = f", NLL with inactive units removed {r['nll_pruned']:.2f}" if args.pruned else ""
    print(
        f"{args.run_dir}: {r['split']} NLL {r['nll']:.2f} +- {r['nll_sem']:.2f} nats (mean -L_{r['eval_k']} over "
        f"{r['n']} images){pruned}, active units {'+'.join(map(str, r['active_units']))} (on "
        f"{r['active_units_n']} {r['active_units_split']} images); eval-{r['split']}-k{r['eval_k']}-n{r['n']}.json"
    )


def _evaluate_sharded(args: argparse.Namespace) -> None:
    import os

    from iwae.distributed import evaluate_sharded

    if args.pruned:
        raise ValueError("--pruned is not sharded; evaluate the pruned model without --nproc or torchrun")
    r = evaluate_sharded(args.run_dir, args.k, args.split, args.n, nproc=args.nproc, data_dir=args.data_dir)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, process 0 alone reports
        print(f"{args.run_dir}: {r['split']} NLL {r['nll']:.4f} +- {r['nll_sem']:.2f} nats (mean -L_{r['eval_k']} "
              f"over {r['n']} images, noise {r['noise']}), active units {'+'.join(map(str, r['active_units']))}; "
              f"eval-{r['split']}-k{r['eval_k']}-n{r['n']}-blocks.json")  # fmt: skip


def _compare(args: argparse.Namespace) -> None:
    from iwae.atomic import write_json
    from iwae.compare import compare_runs, format_comparison

    r = compare_runs(args.run_a, args.run_b, split=args.split, k=args.k, n=args.n, seed=args.seed,
                     progress=not args.quiet, data_dir=args.data_dir)  # fmt: skip
    names = f"{Path(args.run_a).name}-{Path(args.run_b).name}"
    out = args.out or f"compare-{names}-{r['split']}-k{r['eval_k']}-n{r['n']}.json"
    write_json(out, r)
    print(f"{format_comparison(r)}\n\nwrote {out}")


def _sample(args: argparse.Namespace) -> None:
    import torch

    from iwae.plots import save_image_grid
    from iwae.rundir import load_run

    _, model, _ = load_run(args.run_dir)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_image_grid(model.sample(args.n, generator=gen), args.out)
    print(f"wrote {args.n} samples to {args.out}")


def _download(args: argparse.Namespace) -> None:
    paths = data.download(args.dataset, args.data_dir)
    print("\n".join(map(str, paths)) + f"\n{args.dataset}: {len(paths)} files present and verified")


def _reproduce(args: argparse.Namespace) -> None:
    from iwae.experiments.cli import reproduce
    from iwae.rundir import RunError

    if reproduce(args):
        raise RunError("some runs failed (listed above); fix the cause and run the same command again to continue")


def _status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a run folder, or a reproduction's --out folder (its runs/), or a folder of runs")


def _status(args: argparse.Namespace) -> None:
    from iwae.experiments.status import format_states, run_states

    print(format_states(run_states(args.folder)))


def _snr(args: argparse.Namespace) -> None:
    from iwae.snr import snr_command

    result = snr_command(
        args.out, args.run_dir, args.k, args.estimators.split(","), args.draws, args.batch, seed=args.seed,
        data_dir=args.data_dir, device=args.device, train_passes=args.train_passes, progress=not args.quiet,
    )  # fmt: skip
    model = ("trained " if result["model"]["trained_here"] else "") + f"model {result['model']['run_dir']}"
    print(f"{args.out}: snr.png, snr.md, snr.json ({model}, {result['seconds']:.0f} s)")
    print((Path(args.out) / "snr.md").read_text().split("\n\n")[-1].rstrip())


class Command(NamedTuple):
    """A sub-command: the function it runs, the one that adds its arguments, its help line and description."""

    run: Callable[[argparse.Namespace], None]
    arguments: Callable[[argparse.ArgumentParser], None]
    help: str
    description: str | None = None


COMMANDS = {
    "train": Command(
        _train,
        _train_arguments,
        "train a model and evaluate it",
        "Train a VAE/IWAE on the paper's protocol (Adam, batch 20, 3^i passes at 1e-3*10^(-i/7)), then evaluate it "
        "into the run folder.",
    ),
    "resume": Command(
        _resume,
        _resume_arguments,
        "continue an interrupted run",
        "Continue a run from its last checkpoint to the result it would have reached uninterrupted, then evaluate it.",
    ),
    "evaluate": Command(_evaluate, _evaluate_arguments, "NLL and active units of a saved run"),
    "compare": Command(
        _compare,
        _compare_arguments,
        "paired NLL difference of two runs on the same images and noise",
        "Score both runs' models on the same N images of the split with the same importance-sample stream; print "
        "each run's NLL and the mean per-image difference A - B with its paired standard error, and write them as "
        "JSON.",
    ),
    "sample": Command(_sample, _sample_arguments, "a grid of samples (Bernoulli means) from a saved run"),
    "reproduce": Command(
        _reproduce,
        _reproduce_arguments,
        "reproduce the paper's tables and figures",
        "Train every model a table or figure needs (finished runs are skipped, unfinished ones resumed), then write "
        "DIR/report.md with the paper's numbers beside ours, and DIR/results.json.",
    ),
    "status": Command(
        _status,
        _status_arguments,
        "which runs are done, running, queued or failed",
        "One line per run folder (local or Slurm runs): done, running, queued, failed (with the last lines of its "
        "log), stopped (`iwae resume` continues it) or new.",
    ),
    "download": Command(_download, _download_arguments, "fetch and verify a data set"),
    "snr": Command(
        _snr,
        _snr_arguments,
        "gradient signal-to-noise ratio against k, per estimator",
        "SNR = |mean|/std of each gradient coordinate over many draws on one minibatch (Rainforth et al. 2018), "
        "averaged over the encoder's and the decoder's parameters, for each k and estimator of the IWAE bound. "
        "Writes OUT/snr.png, OUT/snr.md and OUT/snr.json. Without RUN_DIR, first trains the paper's 1-layer MNIST "
        "model on IWAE k=5 for --train-passes passes (2,980 steps each) into OUT/model, or reuses it.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``iwae`` argument parser: one sub-command per entry of :data:`COMMANDS`, in that order."""
    parser = argparse.ArgumentParser(
        prog="iwae", description="Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, ICLR 2016)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.arguments(sub.add_parser(name, help=command.help, description=command.description))
    return parser


class Terminated(BaseException):
    """SIGTERM arrived (e.g. from a job scheduler); raised where the process was, like KeyboardInterrupt."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def _stopped(args: argparse.Namespace, what: str) -> str:
    """The line printed when a command is stopped: what happened, and how to go on from there."""
    run = {"train": "out", "resume": "run_dir"}.get(args.command)
    if run is not None:
        how = f"; continue with `iwae resume {getattr(args, run)}` (it restarts from its last checkpoint)"
    elif args.command == "reproduce":
        how = "; run the same command again to continue (finished runs are kept, the others resumed)"
    else:
        how = ""
    return f"iwae: {what}{how}"


def _expected_errors() -> tuple[type[BaseException], ...]:
    """The errors reported in one line, without a traceback."""
    from iwae.checkpoint import CheckpointError
    from iwae.rundir import RunError
    from iwae.train import TrainingDiverged

    return RunError, TrainingDiverged, CheckpointError, ValueError, OSError, FloatingPointError


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main_thread else None
    try:
        COMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        print(_stopped(args, "interrupted"), file=sys.stderr)
        return 130
    except Terminated:
        print(_stopped(args, "terminated (SIGTERM)"), file=sys.stderr)
        return 143
    except Exception as err:
        if not isinstance(err, _expected_errors()):
            raise
        print(f"iwae: error: {err}", file=sys.stderr)
        return 1
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
