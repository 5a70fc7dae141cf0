"""The ``iwae`` commands on saved runs: evaluate, compare, sample, export, snapshot, status and snr (their
arguments and what they run), and the options they share with ``iwae train`` and ``iwae resume``.

As in :mod:`iwae.cli.commands`, the arguments are declared without torch; each command imports what it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from iwae import data
from iwae.cli.options import add_config_options, overrides_from_args
from iwae.objectives.names import KINDS, PARAMS
from iwae.runs.config import choice_or_own, int_list, positive_float, positive_int

__all__ = [
    "RUN_DIR_HELP", "add_progress_and_threads", "report_run", "evaluate_arguments", "evaluate",
    "compare_arguments", "compare", "sample_arguments", "sample", "export_arguments", "export",
    "snapshot_arguments", "snapshot", "status_arguments",
    "status", "snr_arguments",
    "snr",
]  # fmt: skip


RUN_DIR_HELP = "run folder made by `iwae train`"


TRAINING_THREADS = (
    "1 on the CPU for batches of up to 100, which does not slow down when another process holds a core; else "
    "torch's choice"
)


def add_progress_and_threads(p: argparse.ArgumentParser, default: str = TRAINING_THREADS) -> None:
    """``--quiet`` and ``--threads``, whose help states the command's own ``default``."""
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=positive_int, help=f"CPU threads for torch (default: {default})")


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data directory (default: the run's, if it exists; else $IWAE_DATA_DIR)")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the run's device; the noise is drawn there, so "
                   "another kind of device gives other draws)")  # fmt: skip


def report_run(metrics: dict | None, run_dir: Path) -> None:
    """The line printed for a run trained (and evaluated) by `iwae train` or `iwae resume`."""
    if metrics is None:
        print(f"{run_dir}: trained, not evaluated (--no-eval); `iwae resume {run_dir} --eval` evaluates it")
        return
    active = "+".join(map(str, metrics["active_units"]))
    pruned = metrics.get("test_nll_pruned")  # (None for a model of one's own)
    print(
        f"{run_dir}: test NLL {metrics['test_nll']:.2f} nats (mean -L_{metrics['eval_k']} over {metrics['eval_n']} "
        f"test images), train NLL {metrics['train_nll']:.2f}, active units {active}"
        f"{'' if pruned is None else f', NLL with inactive units removed {pruned:.2f}'}; training steps took "
        f"{metrics['train_seconds']:.0f} s (curve points, checkpoints and the evaluation aside)"
    )


def evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help=RUN_DIR_HELP)
    p.add_argument("--k", type=positive_int, help="importance samples (default: the run's eval k)")
    p.add_argument("--split", choices=data.SPLITS, default="test", help="split (default test)")
    p.add_argument(
        "--n",
        "--images",
        dest="n",
        type=positive_int,
        help="use N examples spread evenly through the split (default: the run's eval-n; more than the split: all); "
        "under torchrun write --images, as torchrun takes --n for one of its own options",
    )
    p.add_argument("--pruned", action="store_true", help="also the NLL with inactive units removed (a second L_k)")
    p.add_argument("--nproc", type=positive_int,
                   help="shard the examples over N processes here (noise drawn per block of examples: the same "
                   "numbers for every N; also under torchrun)")  # fmt: skip
    _add_data_dir(p)
    _add_device(p)
    add_progress_and_threads(p, "those metrics.json was measured on, so that its numbers come out exactly; else "
                             "torch's choice")  # fmt: skip


def evaluate(args: argparse.Namespace) -> None:
    import os

    if args.nproc or "WORLD_SIZE" in os.environ:
        _evaluate_sharded(args)
        return
    from iwae.runs.evaluate_run import evaluate_run

    r = evaluate_run(args.run_dir, k=args.k, split=args.split, n=args.n, progress=not args.quiet, pruned=args.pruned,
                     data_dir=args.data_dir, threads=args.threads, device=args.device)  # fmt: skip
    pruned = f", NLL with inactive units removed {r['nll_pruned']:.2f}" if args.pruned else ""
    print(
        f"{args.run_dir}{_unfinished(args.run_dir, r['passes'])}: {r['split']} NLL {r['nll']:.2f} +- "
        f"{r['nll_sem']:.2f} nats (mean -L_{r['eval_k']} over "
        f"{r['n']} images){pruned}, active units {'+'.join(map(str, r['active_units']))} (on "
        f"{r['active_units_n']} {r['active_units_split']} images); eval-{r['split']}-k{r['eval_k']}-n{r['n']}.json"
    )


def _unfinished(run_dir: str, passes: float | None) -> str:
    """`` (unfinished: after P of T passes)`` for a model scored before the end of its schedule, or nothing."""
    from iwae.runs.config import passes_text, total_passes
    from iwae.runs.rundir import read_config

    total = total_passes(read_config(run_dir))
    if passes is None or passes >= total:
        return ""
    return f" (unfinished: after {passes_text(passes)} of {passes_text(total)} passes)"


def _evaluate_sharded(args: argparse.Namespace) -> None:
    import os

    from iwae.analysis.distributed import evaluate_sharded

    if args.pruned:
        raise ValueError("--pruned is not sharded; evaluate the pruned model without --nproc or torchrun")
    if args.device:  # each process takes its own device
        raise ValueError("--device is not for a sharded evaluation (each process takes its own); leave it out, or "
                         "evaluate without --nproc or torchrun")  # fmt: skip
    r = evaluate_sharded(args.run_dir, args.k, args.split, args.n, nproc=args.nproc, data_dir=args.data_dir)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, process 0 alone reports
        print(f"{args.run_dir}{_unfinished(args.run_dir, r['passes'])}: {r['split']} NLL {r['nll']:.2f} +- "
              f"{r['nll_sem']:.2f} nats (mean -L_{r['eval_k']} "
              f"over {r['n']} images, noise {r['noise']}), active units {'+'.join(map(str, r['active_units']))} "
              f"(on {r['active_units_n']} {r['active_units_split']} images); "
              f"eval-{r['split']}-k{r['eval_k']}-n{r['n']}-blocks.json")  # fmt: skip


def compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", help=RUN_DIR_HELP)
    p.add_argument("run_b", help=f"{RUN_DIR_HELP}, of the same data set")
    p.add_argument("--split", choices=data.SPLITS, default="test", help="split (default test)")
    p.add_argument("--k", type=positive_int, help="importance samples (default: the runs' eval k, if they agree)")
    p.add_argument("--n", "--images", dest="n", type=positive_int,
                   help="N examples spread evenly through the split (default: eval-n)")  # fmt: skip
    p.add_argument("--seed", type=int, help="seed of the images' binarization and the noise (default: run A's)")
    p.add_argument("--out", help="JSON file to write (default RUN_A/compare-<A>-<B>-<split>-k<k>-n<n>.json)")
    _add_data_dir(p)
    _add_device(p)
    add_progress_and_threads(p, "torch's choice")


def compare(args: argparse.Namespace) -> None:
    from iwae.analysis.compare import compare_runs, format_comparison
    from iwae.util.atomic import write_json

    r = compare_runs(args.run_a, args.run_b, split=args.split, k=args.k, n=args.n, seed=args.seed,
                     progress=not args.quiet, data_dir=args.data_dir, device=args.device)  # fmt: skip
    names = f"{Path(args.run_a).name}-{Path(args.run_b).name}"
    out = args.out or Path(args.run_a) / f"compare-{names}-{r['split']}-k{r['eval_k']}-n{r['n']}.json"
    write_json(out, r)
    print(f"{format_comparison(r)}\n\nwrote {out}")


def ais_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help=RUN_DIR_HELP)
    p.add_argument("--steps", type=positive_int, default=500, help="annealing steps (default 500)")
    p.add_argument("--chains", type=positive_int, default=16, help="chains per image (default 16)")
    p.add_argument("--split", choices=data.SPLITS, default="test", help="split (default test)")
    p.add_argument("--n", "--images", dest="n", type=positive_int, default=100,
                   help="N examples spread evenly through the split, as `iwae evaluate --n N` takes them "
                   "(default 100)")  # fmt: skip
    p.add_argument("--from", dest="anneal_from", choices=("q", "prior", "both"), default="q",
                   help="where the chains start: q, the recognition model's proposal (default); the prior (Wu et al. "
                   "2017: q unused, more steps needed, but not bound to the posterior modes that q covers); or both, "
                   "--chains from each, pooled, at the cost of the two (--simulated: q or prior)")  # fmt: skip
    p.add_argument("--simulated", action="store_true",
                   help="bidirectional Monte Carlo instead: AIS forward and in reverse on N data simulated from the "
                   "model, whose gap bounds AIS's error with these settings (--split and --data-dir are not "
                   "read)")  # fmt: skip
    _add_data_dir(p)
    _add_device(p)
    add_progress_and_threads(p, "torch's choice")


def ais(args: argparse.Namespace) -> None:
    from iwae.analysis.ais_run import ais_run, bdmc_run

    start = {"q": "", "prior": " from the prior", "both": " from q and the prior"}[args.anneal_from]
    if args.simulated:
        r = bdmc_run(args.run_dir, args.steps, args.chains, args.n, device=args.device, anneal_from=args.anneal_from,
                     progress=not args.quiet)  # fmt: skip
        print(f"{args.run_dir}: on {r['n']} data simulated from the model, log p(x) lies between {r['lower']:.2f} "
              f"(AIS) and {r['upper']:.2f} (reverse AIS): AIS{start} with {r['steps']} steps x {r['chains']} chains "
              f"is within {r['gap']:.3f} +- {r['gap_sem']:.3f} nats ({r['seconds']:.0f} s); {r['file']}")  # fmt: skip
        return
    r = ais_run(args.run_dir, args.steps, args.chains, args.split, args.n, data_dir=args.data_dir, device=args.device,
                anneal_from=args.anneal_from, progress=not args.quiet)  # fmt: skip
    print(f"{args.run_dir}: {r['split']} NLL {r['nll']:.2f} +- {r['nll_sem']:.2f} nats (AIS{start}, {r['steps']} "
          f"steps x {r['chains']} chains, over {r['n']} images; {r['seconds']:.0f} s); {r['file']}")  # fmt: skip


def diagnose_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help=RUN_DIR_HELP)
    p.add_argument("--k", type=positive_int, help="importance samples, at least 10 (default: the run's eval k)")
    p.add_argument("--split", choices=data.SPLITS, default="test", help="split (default test)")
    p.add_argument("--n", "--images", dest="n", type=positive_int, default=1000,
                   help="N examples spread evenly through the split, as `iwae evaluate --n N` takes them (default "
                   "1000; the run's eval-n, with its eval k, checks the run's recorded per-image L_k too)")  # fmt: skip
    _add_data_dir(p)
    _add_device(p)
    add_progress_and_threads(p, "those metrics.json was measured on")


def diagnose(args: argparse.Namespace) -> None:
    from iwae.analysis.diagnose_run import diagnose_run

    r = diagnose_run(args.run_dir, k=args.k, split=args.split, n=args.n, data_dir=args.data_dir, threads=args.threads,
                     device=args.device, progress=not args.quiet)  # fmt: skip
    recorded = ("" if r["recorded"] is None else "; the same L_k as the run's test_ll.json" if r["recorded"] == 0 else
                f"; {r['recorded']:.2g} nats at most from the run's test_ll.json on the same images (other samples: "
                "another device or code)")  # fmt: skip
    median = "inf" if r["khat_median"] is None else f"{r['khat_median']:.2f}"
    print(f"{args.run_dir}: {r['split']} NLL {r['nll']:.2f} +- {r['nll_sem']:.2f} nats (mean -L_{r['eval_k']} over "
          f"{r['n']} images); Pareto k-hat of the weights: median {median}, "
          f"{100 * r['khat_over_half']:.1f}% of images above 0.5 (infinite variance), "
          f"{100 * r['khat_unreliable']:.1f}% above {r['khat_threshold']:.2f} (L_{r['eval_k']} unreliable there); "
          f"effective sample size median {r['ess_median']:,.0f}, least {r['ess_min']:,.1f} of {r['eval_k']:,}"
          f"{recorded}; {r['file']}")  # fmt: skip


def sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help=RUN_DIR_HELP)
    p.add_argument("--n", type=positive_int, default=100, help="number of samples (default 100)")
    p.add_argument("--out", help="image file to write, its format by its suffix (default "
                   "RUN_DIR/samples-n<N>-seed<S>.png)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the samples' noise (default 0)")
    _add_device(p)
    add_progress_and_threads(p, "torch's choice")


def sample(args: argparse.Namespace) -> None:
    from iwae.plots import image_format, save_image_grid
    from iwae.runs.rundir import RunError, load_run
    from iwae.util import streams

    out = Path(args.out or Path(args.run_dir) / f"samples-n{args.n}-seed{args.seed}.png")
    image_format(out)  # (a name no image format fits is refused before any work)
    config, model, _ = load_run(args.run_dir, device=args.device)
    model.eval()  # (a model of one's own with dropout samples as it is evaluated)
    if not hasattr(model, "sample"):
        raise RunError(f"{args.run_dir} holds a model of one's own ({config.model}) without a sample(n, generator) "
                       "method to draw from")  # fmt: skip
    device = next(model.parameters()).device
    gen = streams.generator(args.seed, "samples", device=device, scheme=config.streams)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image_grid(model.sample(args.n, generator=gen), out)
    print(f"wrote {args.n} samples to {out}")


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help=f"{RUN_DIR_HELP}, evaluated")
    p.add_argument("--out", required=True, help="a new folder for the model: weights, config, metrics, model card")


def export(args: argparse.Namespace) -> None:
    from iwae.runs.sharing import export_run

    out = export_run(args.run_dir, args.out)
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"exported {args.run_dir} to {out}: {files} (README.md: the model card)")


def snapshot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help=f"{RUN_DIR_HELP}, unfinished (it may be training meanwhile)")
    p.add_argument("--out", required=True, help="a new folder, or an earlier snapshot's to replace")


def snapshot(args: argparse.Namespace) -> None:
    from iwae.runs.config import passes_at, passes_text
    from iwae.runs.rundir import checkpoint_position, read_config
    from iwae.runs.sharing import snapshot_run

    out = snapshot_run(args.run_dir, args.out)
    position = checkpoint_position(out)  # (snapshot_run has checked the checkpoint whole)
    done = passes_text(passes_at(read_config(out), position["stage"], position["step"]))
    print(f"copied {args.run_dir} to {out} as its checkpoint stands ({done} passes); continue: iwae resume {out}")


def status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a run folder, or a reproduction's --out folder (its runs/), or a folder of runs")


def status(args: argparse.Namespace) -> None:
    from iwae.experiments.status import format_states, run_states

    print(format_states(run_states(args.folder)))


def snr_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", nargs="?", help=f"{RUN_DIR_HELP} (default: train a small model)")
    p.add_argument("--k", type=int_list, default=[1, 5, 50, 500], help="numbers of samples (default 1,5,50,500)")
    p.add_argument("--estimators", default="reparam,stl,dreg", help="comma-separated (default reparam,stl,dreg)")
    p.add_argument("--bound", default="iwae", type=choice_or_own(KINDS, "an iwae.objectives.Bound"), metavar="BOUND",
                   help="the bound whose gradients are measured (iwae; or MODULE:NAME)")  # fmt: skip
    add_config_options(p, PARAMS)  # the bounds' parameters (m, beta, alpha), declared once
    p.add_argument("--draws", type=positive_int, default=100, help="gradient draws per k and estimator (100)")
    p.add_argument("--batch", type=positive_int, default=20, help="images in the fixed minibatch (default 20)")
    p.add_argument("--out", required=True, help="folder for snr.png, snr.md, snr.json (and model/)")
    p.add_argument("--train-passes", type=positive_float, default=1.0, help="passes for the small model (1)")
    p.add_argument("--data-dir", help="data directory (default: the run's, else $IWAE_DATA_DIR)")
    p.add_argument("--seed", type=int, default=0, help="seed of the minibatch, the noise and the small model (0)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the run's device)")
    add_progress_and_threads(p, "torch's choice; a model trained here: 1 on the CPU")


def snr(args: argparse.Namespace) -> None:
    from iwae.analysis.snr import snr_command

    result = snr_command(
        args.out, args.run_dir, args.k, args.estimators.split(","), args.draws, args.batch, seed=args.seed,
        data_dir=args.data_dir, device=args.device, train_passes=args.train_passes, progress=not args.quiet,
        bound=args.bound, params=overrides_from_args(args, PARAMS),
    )  # fmt: skip
    model = ("trained " if result["model"]["trained_here"] else "") + f"model {result['model']['run_dir']}"
    print(f"{args.out}: snr.png, snr.md, snr.json ({model}, {result['seconds']:.0f} s)")
    print((Path(args.out) / "snr.md").read_text().split("\n\n")[-1].rstrip())
