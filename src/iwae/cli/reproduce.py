"""`iwae reproduce`: the paper's tables and figures as ordinary run folders, a report beside the paper's numbers."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from iwae.cli.options import add_config_options, overrides_from_args
from iwae.data.resources import DATASETS
from iwae.experiments.fleets import PACKINGS, with_seeds
from iwae.experiments.plan import EXPERIMENTS, PAPER_EXPERIMENTS, Schedule, plan
from iwae.experiments.slurm import add_executor_arguments
from iwae.runs.config import seed_list

__all__ = ["add_reproduce_arguments", "reproduce"]

SHARED = [f.name for f in dataclasses.fields(Schedule)]


def add_reproduce_arguments(r: argparse.ArgumentParser) -> None:
    """The arguments of ``iwae reproduce``."""
    names = ", ".join((*EXPERIMENTS, "all"))
    r.add_argument("experiment", nargs="*", help=f"what to reproduce, one or more of {names} (all: the paper's "
                   f"{', '.join(PAPER_EXPERIMENTS)})")  # fmt: skip
    r.add_argument("--out", help="output folder: DIR/runs/<run>/, DIR/report.md, DIR/results.json (required)")
    r.add_argument("--report-only", metavar="DIR",
                   help="only rewrite DIR/report.md and DIR/results.json from the runs finished so far")  # fmt: skip
    r.add_argument("--jobs", type=int, default=1, help="runs in parallel, each on its share of CPU threads or a GPU")
    r.add_argument("--threads", type=int, help="torch's CPU threads in each run (default: 1 on the CPU for batches "
                   "of up to 100, else the run's share of the cores)")  # fmt: skip
    r.add_argument("--datasets", default=None, help="Table 1 only: comma-separated subset of mnist,omniglot")
    r.add_argument("--estimate-only", action="store_true", help="print the plan and the time estimate, then stop")
    r.add_argument("--seeds", type=seed_list,
                   help="train every run once per seed (e.g. 0,1,2), in DIR/runs/<run>/seed-<S>; the report shows "
                        "mean ± sd over the seeds (overrides --seed)")  # fmt: skip
    r.add_argument("--fleet", choices=PACKINGS, default="auto",
                   help="pack compatible runs into fleets trained in one step (iwae train --seeds): auto (on a GPU "
                        "every compatible run; on a CPU none, where a fleet is no faster), stacked, graph or loop "
                        "(every compatible run, that fleet mode), off (every run on its own; always so with "
                        "--executor slurm) (default auto)")  # fmt: skip
    add_executor_arguments(r)
    add_config_options(r, SHARED)  # the values every run of the plan shares, declared by TrainConfig


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def reproduce(args: argparse.Namespace) -> int:
    """``iwae reproduce``: 1 if some run failed, else 0. DIR is locked against a second reproduction into it."""
    from iwae.runs.rundir import locked  # torch: imported once the arguments are parsed

    if args.report_only:
        from iwae.experiments.report import rewrite_report

        print(f"wrote {rewrite_report(Path(args.report_only))}")
        return 0
    if not args.experiment or not args.out:
        raise ValueError("iwae reproduce needs an experiment and --out DIR (or --report-only DIR)")
    for name in args.experiment:
        if name not in (*EXPERIMENTS, "all"):
            raise ValueError(f"unknown experiment {name!r}; choose from {', '.join((*EXPERIMENTS, 'all'))}")
    if args.estimate_only:
        return _reproduce(args)
    with locked(args.out, again="the same `iwae reproduce` command"):
        return _reproduce(args)


def _reproduce(args: argparse.Namespace) -> int:
    from iwae.experiments.runner import estimate_seconds, execute
    from iwae.runs.rundir import status

    if args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    datasets = tuple(args.datasets.split(",")) if args.datasets else ("mnist", "omniglot")
    for d in datasets:
        if d not in DATASETS or d == "binarized-mnist":
            raise ValueError(f"--datasets takes mnist and/or omniglot, got {d!r}")
    schedule = Schedule(**overrides_from_args(args, SHARED))
    out = Path(args.out)
    root = out / "runs"
    experiments = list(dict.fromkeys(e for a in args.experiment for e in (PAPER_EXPERIMENTS if a == "all" else (a,))))
    specs = list({s.name: s for e in experiments for s in plan(e, schedule, str(root), datasets)}.values())
    if args.seeds:
        specs = with_seeds(specs, args.seeds)
    print(f"{' '.join(experiments)}: {len(specs)} runs; {schedule.describe()}")
    todo = [s for s in specs if status(root / s.name) != "done"]
    est: dict[str, float] = {}
    if todo and (args.executor == "local" or args.estimate_only):
        print("measuring a short warm-up of each kind of run to estimate the time ...")
        est = estimate_seconds(todo, args.jobs)
        for s in todo:
            print(f"  {s.name:32s} {status(root / s.name):8s} ~{_duration(est[s.name])}")
        # A lower bound on the wall time: the work spread evenly over the jobs, or the longest run.
        wall = max(sum(est.values()) / args.jobs, max(est.values()))
        print(f"estimated time: about {_duration(wall)} with {args.jobs} job(s)")
    if args.estimate_only:
        return 0
    if args.executor == "slurm":
        result = _on_slurm(args, specs, out, lambda: _write_report(out, experiments, schedule, datasets))
        if result is None:
            return 0
    else:
        result = execute(specs, root, args.jobs, durations=est, packing=args.fleet, threads=args.threads)
    report = _write_report(out, experiments, schedule, datasets)
    failed = {n: r for n, r in result.items() if r != "done"}
    for name, reason in failed.items():
        print(f"  {name}: {reason}")
    print(f"wrote {report}")
    return 1 if failed else 0


def _on_slurm(args: argparse.Namespace, specs: list, out: Path, report: Callable[[], Path]) -> dict[str, str] | None:
    """Submit the runs to Slurm and write a first report (of the runs done so far); then, unless ``--no-wait``,
    wait for the jobs and return each run's result (None with ``--no-wait``)."""
    from iwae.experiments.slurm import options_from_args, submit, wait

    jobs = submit(specs, out / "runs", options_from_args(args, out / "slurm"))
    print(f"submitted {len(jobs)} Slurm job(s); wrote {report()}; `iwae status {out}` shows their progress")
    if args.no_wait:
        print(f"`iwae reproduce --report-only {out}` rewrites the report from the runs finished so far")
        return None
    return wait(jobs, out / "runs")


def _write_report(out: Path, experiments: list[str], schedule: Schedule, datasets: tuple[str, ...]) -> Path:
    """The posterior figure (if its three runs are done), then DIR/report.md and DIR/results.json."""
    from iwae.experiments.posteriors import plot_posteriors
    from iwae.experiments.report import write_report
    from iwae.experiments.runner import seed_dirs
    from iwae.runs.rundir import status

    root = out / "runs"
    if "posteriors" in experiments:  # of the first seed, with --seeds
        dirs = {label: ([*seed_dirs(root / f"mnist-2d-{name}"), root / f"mnist-2d-{name}"])[0] for label, name in
                (("VAE", "vae"), ("IWAE k=5", "iwae-k5"), ("IWAE k=50", "iwae-k50"))}  # fmt: skip
        if all(status(d) == "done" for d in dirs.values()):
            plot_posteriors(dirs, out, seed=schedule.seed)
    command = "iwae " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[0].endswith("iwae") else ""
    command = command or f"iwae reproduce {' '.join(experiments)} --out {out}"
    return write_report(out, experiments, schedule, command, datasets)
