"""The ``iwae`` command: train, resume, evaluate, sample, download (and the experiments of the paper).

The arguments are parsed before torch is imported: the parser needs only names (data sets, bounds, estimators),
and each command imports what it runs, so ``iwae --help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from iwae import data
from iwae.cli import runs as cli_runs
from iwae.cli.options import add_config_options, config_from_args, overrides_from_args
from iwae.cli.runs import RUN_DIR_HELP, add_progress_and_threads, report_run
from iwae.runs.config import RESUMABLE, seed_list
from iwae.util.suggest import nearest

__all__ = ["main", "build_parser", "Command", "COMMANDS"]

# iwae.fleets.fleet.make_fleet's modes (the parser imports no torch), and off: each seed's run on its own, one after
# another
FLEET_MODES = ("auto", "stacked", "graph", "loop", "off")


def _train_arguments(p: argparse.ArgumentParser) -> None:
    add_config_options(p)
    p.add_argument(
        "--config",
        metavar="FILE",
        help="JSON file of config values (e.g. another run's config.json); flags given here override it",
    )
    p.add_argument("--out", required=True, help="run folder to create (with --seeds: the fleet's folder)")
    p.add_argument(
        "--seeds",
        type=seed_list,
        help="train one run per seed (e.g. 0,1,2 or 0-9) as one fleet, in OUT/seed-N, stepped together "
        "(overrides --seed; see --fleet)",
    )
    p.add_argument(
        "--fleet",
        choices=FLEET_MODES,
        default="auto",
        help="with --seeds: how the fleet steps: stacked (one vmapped step for all runs), graph (stacked, as one "
        "CUDA graph), loop (the runs' own steps in turn) or auto (graph on CUDA where the estimator allows; loop "
        "on a CPU, where stacking is no faster), or off (no fleet: each seed's run trained on its own, one after "
        "another; resume each OUT/seed-N) (default auto)",
    )
    add_progress_and_threads(p)
    from iwae.experiments.slurm import add_executor_arguments

    add_executor_arguments(p)


def _resume_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help=RUN_DIR_HELP + ", or the folder of a fleet (`iwae train --seeds`)")
    add_config_options(p, RESUMABLE, recorded=True)  # recorded in the run's config.json
    p.add_argument(
        "--re-evaluate", action="store_true", help="evaluate a finished run again (with the settings given here)"
    )
    add_progress_and_threads(p)


def _reproduce_arguments(p: argparse.ArgumentParser) -> None:
    from iwae.cli.reproduce import add_reproduce_arguments

    add_reproduce_arguments(p)


def _download_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", choices=data.DATASETS, help="data set to fetch")
    p.add_argument("--data-dir", help="data directory (default: $IWAE_DATA_DIR, else the per-user cache)")


def _check_out(out: Path, seeds: bool) -> None:
    """Refuse an --out that is a file, or a folder holding files of the user's own (not a run, not a fleet)."""
    from iwae.runs.rundir import RunError

    names = {p.name for p in out.iterdir()} if out.is_dir() else set()
    ours = {"config.json", ".lock"} | ({"fleet.json"} | {n for n in names if n.startswith("seed-")} if seeds else set())
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; name a new folder for the run")
    if names and not ours & names:
        raise RunError(f"--out {out} holds other files and is not a run folder; name a new or empty folder")


def _train(args: argparse.Namespace) -> None:
    from iwae.runs.train import train_and_evaluate

    _check_out(Path(args.out), bool(args.seeds))
    config = config_from_args(args, args.config)
    if args.seeds:
        from iwae.cli.fleet import train_fleet

        train_fleet(args, config)
        return
    if args.executor == "slurm":
        from iwae.experiments.slurm import submit_run

        if (metrics := submit_run(args, config)) is not None:
            report_run(metrics, Path(args.out))
        return
    report_run(train_and_evaluate(args.out, config, progress=not args.quiet, threads=args.threads), Path(args.out))


def _resume(args: argparse.Namespace) -> None:
    from iwae.runs.rundir import is_exported, status
    from iwae.runs.train import train_and_evaluate

    if (Path(args.run_dir) / "fleet.json").exists():
        from iwae.cli.fleet import resume_fleet

        resume_fleet(args)
        return
    if status(args.run_dir) == "done" and not args.re_evaluate and not is_exported(args.run_dir):  # (refused below)
        again = f"`iwae resume {args.run_dir} --re-evaluate` evaluates it again."
        print(f"{args.run_dir} is already finished (trained and evaluated: metrics.json); nothing to do. {again}"
              f"{_stale(Path(args.run_dir))}")  # fmt: skip
        return
    metrics = train_and_evaluate(
        args.run_dir, progress=not args.quiet, threads=args.threads, changes=overrides_from_args(args, RESUMABLE),
        evaluate=True if args.re_evaluate else None,
    )  # fmt: skip
    report_run(metrics, Path(args.run_dir))


def _stale(run_dir: Path) -> str:
    """A warning where the finished run's ``metrics.json`` is not the evaluation its ``config.json`` asks for (a
    ``--re-evaluate`` with other settings that was stopped), or nothing."""
    import json

    from iwae.data.resources import TEST_SIZES
    from iwae.runs.rundir import METRICS_NAME, read_config

    config, metrics = read_config(run_dir), json.loads((run_dir / METRICS_NAME).read_text())
    k, n = metrics.get("eval_k"), metrics.get("eval_n")
    sizes = {size if config.eval_n is None else min(config.eval_n, size) for size in TEST_SIZES[config.dataset]}
    if None in (k, n) or (k == config.eval_k and n in sizes):  # (a folder from before metrics.json held both)
        return ""
    asked = f"all {' or '.join(map(str, sorted(sizes)))}" if config.eval_n is None else min(sizes)
    return (f" But its metrics.json holds L_{k} on {n} test images where its config.json asks for "
            f"L_{config.eval_k} on {asked} (a --re-evaluate that was stopped): run it with --re-evaluate.")  # fmt: skip


def _download(args: argparse.Namespace) -> None:
    paths = data.download(args.dataset, args.data_dir)
    print("\n".join(map(str, paths)) + f"\n{args.dataset}: {len(paths)} files present and verified")


def _reproduce(args: argparse.Namespace) -> None:
    from iwae.cli.reproduce import reproduce
    from iwae.runs.rundir import RunError

    if reproduce(args):
        raise RunError("some runs failed (listed above); fix the cause and run the same command again to continue")


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
    "evaluate": Command(
        cli_runs.evaluate,
        cli_runs.evaluate_arguments,
        "NLL and active units of a saved run",
        "Score a run (finished or not: its checkpoint's model) or an exported model by L_k on N images spread through "
        "the split, with the noise of the run's own evaluation stream, and print the mean NLL with its standard "
        "error over images and the active units; writes eval-<split>-k<K>-n<N>.json into the folder. A stopped "
        "evaluation keeps its progress, and the same command goes on from it.",
    ),
    "ais": Command(
        cli_runs.ais,
        cli_runs.ais_arguments,
        "NLL of a saved run by annealed importance sampling (tighter than L_5000)",
        "Anneal from the recognition model's proposal to the posterior with HMC moves in the noise space (Wu et al. "
        "2017) on N images of the run's evaluation, and print the mean NLL with its standard error; writes "
        "ais-<split>-s<steps>-c<chains>-n<N>.json into the run folder. Costs about steps x 10 forward and backward "
        "passes of the chains (and 4 pilot chains that adapt the step size): meant for a subset of the test set, or "
        "a GPU. With --simulated, bidirectional Monte Carlo measures how close that AIS comes to log p(x): AIS "
        "forward and in reverse from the exact latent, on N data simulated from the model (Grosse et al. 2015).",
    ),
    "diagnose": Command(
        cli_runs.diagnose,
        cli_runs.diagnose_arguments,
        "how far a saved run's L_k can be trusted: its importance weights' ESS and Pareto k-hat, per image",
        "Score N images of the split by L_k as `iwae evaluate` does (the same images and samples), keeping each "
        "image's weights' effective sample size and the Pareto k-hat of their tail (Vehtari et al. 2024): above 0.5 "
        "the weights have infinite variance, and above min(1 - 1/log10(K), 0.7) (0.7 from K = 2,155 on) the "
        "image's L_k is unreliable at this K (at least 10). Prints the shares of images above both and writes "
        "diagnostics-<split>-k<K>-n<N>.json and .png into the run folder; --n as large as the split (10000 for "
        "MNIST's test set) diagnoses all of it.",
    ),
    "compare": Command(
        cli_runs.compare,
        cli_runs.compare_arguments,
        "paired NLL difference of two runs on the same images and noise",
        "Score both runs' models on the same N images of the split with the same importance-sample stream; print "
        "each run's NLL and the mean per-image difference A - B with its paired standard error, and write them as "
        "JSON.",
    ),
    "sample": Command(
        cli_runs.sample,
        cli_runs.sample_arguments,
        "a grid of samples (Bernoulli means) from a saved run",
        "Draw N samples from the generative model of a saved run (ancestral sampling, h^L ~ N(0, I) down to the "
        "Bernoulli means of the pixels, Appendix E) and write them as a square grid of images, by default into the "
        "run's folder.",
    ),
    "export": Command(
        cli_runs.export,
        cli_runs.export_arguments,
        "export a trained model to share: its weights, config, numbers and a model card",
        "Write the evaluated run's weights alone (model.safetensors, with a sha256), its config.json without this "
        "machine's paths, its metrics and a README model card into a new folder; `iwae evaluate`, `sample` and "
        "`compare` take that folder, and `iwae.load_run(FOLDER)` loads it in Python.",
    ),
    "snapshot": Command(
        cli_runs.snapshot,
        cli_runs.snapshot_arguments,
        "copy an unfinished run, to continue it on another machine",
        "Copy the run's config.json (without this machine's paths), its checkpoint (checked whole) and the lines of "
        "metrics.jsonl the checkpoint counts into OUT, replacing an earlier snapshot there; `iwae resume OUT` goes "
        "on exactly where the checkpoint stands. The run may be training meanwhile.",
    ),
    "reproduce": Command(
        _reproduce,
        _reproduce_arguments,
        "reproduce the paper's tables and figures",
        "Train every model a table or figure needs (finished runs are skipped, unfinished ones resumed), then write "
        "DIR/report.md with the paper's numbers beside ours, and DIR/results.json.",
    ),
    "status": Command(
        cli_runs.status,
        cli_runs.status_arguments,
        "which runs are done, running, queued or failed",
        "One line per run folder (local or Slurm runs): done, running, queued, failed (with the last lines of its "
        "log), stopped (`iwae resume` continues it) or new.",
    ),
    "download": Command(_download, _download_arguments, "fetch and verify a data set"),
    "snr": Command(
        cli_runs.snr,
        cli_runs.snr_arguments,
        "gradient signal-to-noise ratio against k, per estimator",
        "SNR = |mean|/std of each gradient coordinate over many draws on one minibatch (Rainforth et al. 2018), "
        "averaged over the encoder's and the decoder's parameters, for each k and estimator of the IWAE bound. "
        "Writes OUT/snr.png, OUT/snr.md and OUT/snr.json. Without RUN_DIR, first trains the paper's 1-layer MNIST "
        "model on IWAE k=5 for --train-passes passes (2,980 steps each) into OUT/model, or reuses it.",
    ),
}


class Parser(argparse.ArgumentParser):
    """argparse, but every error is one line, without the whole usage first: a mistyped choice or option with the
    nearest ones; no option is taken from an abbreviation of it (``--stage`` is not ``--stages``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # what no option of the command takes: name the nearest of its options
            commands = next((a.choices for a in self._actions if isinstance(a, argparse._SubParsersAction)), {})
            known = [o for a in commands[parsed.command]._actions for o in a.option_strings] if commands else []
            first = next((e.split("=")[0] for e in extras if e.startswith("-") and e != "--"), "")
            near = nearest(first, known, cutoff=0.7) if first not in known else None
            hint = f"; did you mean {near}?" if near else f"; `iwae {parsed.command} --help` lists its options"
            self.exit(2, f"{self.prog} {parsed.command}: error: unrecognized arguments: {' '.join(extras)}{hint}\n")
        return parsed

    def error(self, message: str) -> NoReturn:
        found = re.match(r"argument (\S+): invalid choice: '?(.*?)'? \(choose from (.*)\)$", message)
        if found is None:  # a bad value, a missing option: the message and where to look, without the usage
            self.exit(2, f"{self.prog}: error: {message}; `{self.prog} --help` lists the options\n")
        option, value, listing = found.groups()
        choices = re.findall(r"'([^']*)'", listing) or [c.strip() for c in listing.split(",")]
        near = nearest(value, choices)
        hint = f"; did you mean {near!r}?" if near else f"; choose one of {', '.join(choices)}"
        self.exit(2, f"{self.prog}: error: {option}: unknown choice {value!r}{hint}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``iwae`` argument parser: one sub-command per entry of :data:`COMMANDS`, in that order."""
    from iwae import __version__

    parser = Parser(
        prog="iwae", description="Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, ICLR 2016)."
    )
    parser.add_argument("--version", action="version", version=f"iwae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.arguments(sub.add_parser(name, help=command.help, description=command.description))
    return parser


class Terminated(BaseException):
    """SIGTERM arrived (e.g. from a job scheduler); raised where the process was, like KeyboardInterrupt."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


# A measurement's kept progress (iwae.runs.eval_progress.PROGRESS_SUFFIX, which imports torch: a stop while torch
# is still loading must not load it again to say so), by the file-name prefix of the command that keeps it.
_PROGRESS = {"evaluate": "eval-*.progress.safetensors", "ais": "ais-*.progress.safetensors"}


def _stopped(args: argparse.Namespace, what: str) -> str:
    """The line printed when a command is stopped: what happened, and how to go on from there (as far as the
    folders show that something was kept)."""
    run = {"train": "out", "resume": "run_dir"}.get(args.command)
    folder = Path(getattr(args, run or "run_dir", None) or ".")
    if args.command == "train" and getattr(args, "seeds", None) and getattr(args, "fleet", None) == "off":
        how = "; run the same command again to continue (finished runs are kept, the stopped one resumed)"
    elif args.command == "train" and "slurm-job.json" in _names(folder):  # (iwae.experiments.slurm.JOB_NAME)
        how = f"; its Slurm job goes on without this process: `iwae status {folder}` follows it"
    elif args.command == "train" and not {"config.json", "fleet.json"} & _names(folder):
        how = "; the run had not begun (nothing was kept): run the same command again"
    elif run is not None:
        again = " --re-evaluate" if getattr(args, "re_evaluate", False) else ""
        how = f"; continue with `iwae resume {folder}{again}` (it goes on from its last checkpoint)"
    elif args.command == "reproduce":
        how = "; run the same command again to continue (finished runs are kept, the others resumed)"
    elif args.command == "evaluate" or (args.command == "ais" and not args.simulated):
        if folder.is_dir() and any(folder.glob(_PROGRESS[args.command])):
            how = "; run the same command again to go on where it stopped (its progress is kept in the run folder)"
        else:
            how = "; it had kept no progress yet: run the same command again to start it afresh"
    else:
        how = ""
    return f"iwae: {what}{how}"


def _stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has gone (poll reports an error on it)."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor (a captured stream), or no poll here
        return False


def _names(folder: Path) -> set[str]:
    """The names in ``folder`` (none if it is no folder)."""
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def _expected_errors() -> tuple[type[BaseException], ...]:
    """The errors reported in one line, without a traceback."""
    from iwae.runs.checkpoint import CheckpointError
    from iwae.runs.rundir import RunError
    from iwae.runs.train import TrainingDiverged

    return RunError, TrainingDiverged, CheckpointError, ValueError, OSError, FloatingPointError


def _is_out_of_memory(err: BaseException) -> bool:
    """A GPU's or the host's memory ran out (torch's CPU allocator says so in a RuntimeError)."""
    import torch

    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(err)


def _out_of_memory(args: argparse.Namespace, err: BaseException) -> str:
    """The line printed when memory ran out: torch's first line, what is kept, and what to change."""
    what = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if args.command in ("train", "resume"):
        run = args.out if args.command == "train" else args.run_dir
        fix = (
            "the run keeps its last checkpoint: free the memory (other processes on the device) and continue with "
            f"`iwae resume {run}` (--device moves it); a smaller --k or --batch-size needs a new run"
        )
        if getattr(args, "seeds", None) and args.fleet == "off":  # a run per seed, one after another
            fix = "free the memory and run the same command again (finished runs are kept, the stopped one resumed)"
        elif getattr(args, "seeds", None):
            fix += ", fewer --seeds at once, or --fleet off (the runs one after another)"
    elif args.command == "reproduce":
        fix = "free the memory and run the same command again (finished runs are kept), or --fleet off"
    else:
        fix = "free the memory (other processes on the device) and run it again"
    return f"iwae: error: out of memory ({what}); {fix}"


def _warning_line() -> Callable[..., None]:
    """``warnings.showwarning`` for the command line: each warning once, in one line, without its source line."""
    shown: set[str] = set()

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        text = str(message)
        if text not in shown:
            shown.add(text)
            kind = "warning" if category is UserWarning else category.__name__
            print(f"iwae: {kind}: {text}", file=sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    show = _warning_line()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show  # (an option's former name is warned about as it is parsed)
            args = build_parser().parse_args(argv)
    except Warning as warning:  # turned into an error (python -W error, PYTHONWARNINGS=error): said as one
        print(f"iwae: error: {warning}", file=sys.stderr)
        return 2
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main_thread else None
    try:
        if getattr(args, "threads", None):
            import torch  # (seconds on a cold start: a Ctrl-C meanwhile is reported as any other)

            torch.set_num_threads(args.threads)
        with warnings.catch_warnings():
            warnings.showwarning = show
            COMMANDS[args.command].run(args)
            sys.stdout.flush()  # (a reader gone away is found here, where it is handled, not at exit)
    except KeyboardInterrupt:
        print(_stopped(args, "interrupted"), file=sys.stderr)
        return 130
    except Terminated:
        print(_stopped(args, "terminated (SIGTERM)"), file=sys.stderr)
        return 143
    except BrokenPipeError as err:
        if not _stdout_gone():  # another pipe or socket broke: an error like any other
            print(f"iwae: error: {err}", file=sys.stderr)
            return 1
        # the reader of the output went away (`iwae status | head`): nothing left to say, and nowhere to say it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (so that exiting flushes nowhere)
        return 1
    except Exception as err:
        if _is_out_of_memory(err):
            print(_out_of_memory(args, err), file=sys.stderr)
            return 1
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
