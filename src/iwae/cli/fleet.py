"""``iwae train --seeds`` and ``iwae resume FLEET``: a run per seed, trained as one fleet
(:mod:`iwae.fleets.fleet_train`)."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from iwae.cli.options import overrides_from_args
from iwae.cli.runs import report_run
from iwae.runs.config import RESUMABLE, TrainConfig

__all__ = ["train_fleet", "resume_fleet"]


def train_fleet(args: argparse.Namespace, config: TrainConfig) -> None:
    """``iwae train --seeds``: one run per seed in OUT/seed-N, trained as one fleet (OUT/fleet.json)."""
    from iwae.fleets.fleet_train import MANIFEST_NAME, train_fleet_and_evaluate

    if args.executor != "local":
        seed = args.seeds[0]
        raise ValueError(
            "--seeds trains one fleet in this process: use --executor local, or one Slurm job per seed: "
            f"`iwae train ... --seed {seed} --executor slurm --out {Path(args.out) / f'seed-{seed}'}` for each seed "
            "(or `iwae reproduce ... --seeds ... --executor slurm` for the paper's runs)"
        )
    out = Path(args.out)
    dirs = [out / f"seed-{seed}" for seed in args.seeds]
    configs = [config.replace(seed=seed) for seed in args.seeds]
    if args.fleet == "off":  # as `iwae reproduce --fleet off`: no fleet, the runs one after another
        from iwae.runs.rundir import status
        from iwae.runs.train import train_and_evaluate

        metrics = {}  # the same command again skips the finished runs and continues a stopped one
        for d, c in zip(dirs, configs):
            if status(d) != "done":
                new = status(d) == "new"
                metrics[str(d)] = train_and_evaluate(d, c if new else None, progress=not args.quiet,
                                                     threads=args.threads)  # fmt: skip
        _report_fleet({"metrics": {d: m for d, m in metrics.items() if m}, "dropped": {}}, out)
        return
    result = train_fleet_and_evaluate(dirs, out / MANIFEST_NAME, configs, mode=args.fleet, progress=not args.quiet,
                                      threads=args.threads)  # fmt: skip
    _report_fleet(result, out)


def _report_fleet(result: dict[str, Any], out: Path) -> None:
    """Each run's line, the mean and spread of the test NLL over the runs, and the runs dropped on the way."""
    for run, metrics in result["metrics"].items():
        report_run(metrics, Path(run))
    nll = [m["test_nll"] for m in result["metrics"].values()]
    if len(nll) > 1:
        print(f"{out}: test NLL {statistics.mean(nll):.2f} ± {statistics.stdev(nll):.2f} nats (mean ± sd over "
              f"{len(nll)} runs)")  # fmt: skip
    for run, why in result["dropped"].items():
        print(f"{out / run}: dropped: {why}; its last good checkpoint is kept")
    if result["dropped"]:
        from iwae.runs.train import TrainingDiverged

        raise TrainingDiverged(f"{len(result['dropped'])} run(s) of the fleet diverged (listed above)")


def resume_fleet(args: argparse.Namespace) -> None:
    """``iwae resume FLEET``: continue every run of the fleet from the fleet's last checkpoint, then evaluate."""
    from iwae.fleets.fleet_train import MANIFEST_NAME, read_manifest, train_fleet_and_evaluate
    from iwae.runs.rundir import RunError, status

    manifest = Path(args.run_dir) / MANIFEST_NAME
    dirs = [manifest.parent / name for name in read_manifest(manifest)["runs"]]
    if args.re_evaluate:
        raise RunError(f"{args.run_dir} is a fleet: evaluate its runs again one by one, e.g. "
                       f"`iwae resume {dirs[0]} --re-evaluate`")  # fmt: skip
    if all(status(d) == "done" for d in dirs):
        print(f"{args.run_dir} is already finished (each of its {len(dirs)} runs trained and evaluated); nothing to "
              "do. `iwae evaluate RUN` scores one of them again.")  # fmt: skip
        return
    changes = overrides_from_args(args, RESUMABLE)
    result = train_fleet_and_evaluate(dirs, manifest, progress=not args.quiet, threads=args.threads, changes=changes)
    _report_fleet(result, manifest.parent)
