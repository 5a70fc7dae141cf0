"""Running a plan's runs on a Slurm cluster through submitit (the optional extra ``pip install iwae[slurm]``).

Each run is an ordinary run folder on a file system that the cluster's nodes share; its job trains or resumes it
with :func:`iwae.experiments.runner.child_main`, exactly as a local child process of ``iwae reproduce`` does. The
runs go out as job arrays, one per wave of dependencies: the first array holds the runs that wait for no other run,
each later one waits (``afterok``) for the jobs of the runs it starts from (Table 2's continuations for their
Table 1 sources), and is cancelled by Slurm if one of them fails.

A job that Slurm preempts, or stops at its time limit, receives USR2 first; submitit then asks
:meth:`RunJob.checkpoint` for the job to requeue, which is the same run: the requeued job continues the run from
its last checkpoint, since runs resume by themselves. Each run folder records its job in ``slurm-job.json`` (job id
and log files) for ``iwae status``. Only this module imports submitit, and only when a job is submitted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iwae.experiments.plan import RunSpec
from iwae.runs.config import TrainConfig, positive_int

__all__ = [
    "JOB_NAME", "SlurmOptions", "RunJob", "add_executor_arguments", "options_from_args", "submit", "submit_run",
    "queue_states", "wait",
]  # fmt: skip

JOB_NAME = "slurm-job.json"  # in a run folder: the Slurm job that runs it
# Queue states of a job that has not ended yet (squeue --states; a requeued job passes through several).
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
          "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED", "PREEMPTED"}  # fmt: skip


@dataclass(frozen=True)
class SlurmOptions:
    """What each job asks Slurm for; ``folder`` receives submitit's scripts, pickles and logs."""

    folder: Path
    partition: str | None = None
    gpus_per_job: int = 0
    cpus_per_job: int = 1  # training a run uses one thread on the CPU (iwae.runs.train.default_threads)
    time_min: int = 24 * 60
    array_parallelism: int = 64


def add_executor_arguments(p: argparse.ArgumentParser) -> None:
    """``--executor`` and the Slurm options of ``iwae train`` and ``iwae reproduce``."""
    p.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local: here (default); slurm: one Slurm job per run, through submitit (pip install iwae[slurm])",
    )
    p.add_argument("--partition", help="Slurm partition (default: the cluster's default)")
    p.add_argument("--gpus-per-job", type=int, default=0, help="GPUs per Slurm job (default 0)")
    p.add_argument("--cpus-per-job", type=positive_int, default=1, help="CPUs per Slurm job (default 1)")
    p.add_argument(
        "--time-min",
        type=positive_int,
        default=24 * 60,
        help="time limit of a Slurm job in minutes; a run stopped by it is requeued and resumes (default 1440)",
    )
    p.add_argument(
        "--array-parallelism",
        type=positive_int,
        default=64,
        help="Slurm jobs of one array running at once (default 64)",
    )
    p.add_argument("--no-wait", action="store_true",
                   help="slurm: submit and return (see `iwae status DIR`) instead of waiting for the jobs")  # fmt: skip


def options_from_args(args: argparse.Namespace, folder: Path) -> SlurmOptions:
    """The :class:`SlurmOptions` of parsed :func:`add_executor_arguments`."""
    return SlurmOptions(folder, args.partition, args.gpus_per_job, args.cpus_per_job, args.time_min,
                        args.array_parallelism)  # fmt: skip


class RunJob:
    """The callable each job runs: train or resume one run folder; on preemption, the same call again."""

    def __call__(self, run_dir: str) -> str:
        from iwae.experiments.runner import child_main

        child_main(run_dir)
        return run_dir

    def checkpoint(self, run_dir: str) -> Any:
        """submitit's hook on USR2 (preemption, time limit): requeue the same run, which resumes where it stopped."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, run_dir)


def _executor(options: SlurmOptions) -> Any:
    from iwae.runs.rundir import RunError

    try:
        import submitit
    except ImportError as err:
        raise RunError("--executor slurm needs submitit: pip install 'iwae[slurm]'") from err
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]  # submitit calls both
    if missing:
        raise RunError(
            f"--executor slurm needs Slurm's {' and '.join(missing)} on PATH, and this machine has "
            "none: run the command on the cluster's login node, or train here without --executor slurm"
        )
    executor = submitit.AutoExecutor(folder=options.folder / "%j", cluster="slurm", slurm_max_num_timeout=1000)
    executor.update_parameters(
        timeout_min=options.time_min, cpus_per_task=options.cpus_per_job, gpus_per_node=options.gpus_per_job,
        slurm_array_parallelism=options.array_parallelism, name="iwae",
        **({"slurm_partition": options.partition} if options.partition else {}),
    )  # fmt: skip
    return executor


def _waves(specs: list[RunSpec], done: set[str]) -> list[list[RunSpec]]:
    """The runs in waves: each run comes after the runs it needs, unless those are done already."""
    placed, rest, waves = set(done), list(specs), []
    while rest:
        wave = [s for s in rest if all(d in placed for d in s.after)]
        if not wave:
            raise ValueError(f"runs wait for runs outside the plan: {', '.join(s.name for s in rest)}")
        waves.append(wave)
        placed |= {s.name for s in wave}
        rest = [s for s in rest if s.name not in placed]
    return waves


def submit(specs: list[RunSpec], root: Path, options: SlurmOptions, log: Callable[[str], None] = print) -> dict:
    """Submit every run of ``specs`` (folders ``root/<name>``) not yet done; returns name -> Slurm job id."""
    from iwae.experiments.runner import REQUESTED_NAME, check_compatible
    from iwae.runs.rundir import RunError, status
    from iwae.util import atomic

    done = {s.name for s in specs if status(root / s.name) == "done"}
    pending = [s for s in specs if s.name not in done]
    for spec in pending:
        check_compatible(spec, root / spec.name)
    executor, jobs = _executor(options), {}
    from submitit.core.utils import FailedJobError  # submitit is there: _executor says how to install it if not

    for wave in _waves(pending, done):
        after = sorted({jobs[d] for s in wave for d in s.after if d in jobs})
        extra = {"kill-on-invalid-dep": "yes", **({"dependency": "afterok:" + ":".join(after)} if after else {})}
        executor.update_parameters(slurm_additional_parameters=extra)
        requests = {root / s.name / REQUESTED_NAME: None for s in wave}  # each one's earlier text, if any
        for spec, path in zip(wave, requests):
            path.parent.mkdir(parents=True, exist_ok=True)
            requests[path] = path.read_text() if path.is_file() else None
            atomic.write_text(path, spec.config.to_json())
        try:
            submitted = executor.map_array(RunJob(), [str((root / s.name).resolve()) for s in wave])
        except (FailedJobError, FileNotFoundError) as err:  # sbatch refused the jobs, or there is no sbatch
            for path, earlier in requests.items():  # the requests as they were: none new, an earlier job's kept
                if earlier is None:
                    path.unlink()
                else:
                    atomic.write_text(path, earlier)
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise RunError(f"Slurm did not take the job(s) of {', '.join(s.name for s in wave)}: {reason}") from err
        for spec, job in zip(wave, submitted):
            jobs[spec.name] = job.job_id
            record = {"job_id": job.job_id, "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}
            atomic.write_text(root / spec.name / JOB_NAME, json.dumps(record, indent=1) + "\n")
            log(f"  {spec.name}: Slurm job {job.job_id}" + (f" (after {', '.join(spec.after)})" if after else ""))
    return jobs


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """Job id -> queue state (``squeue``) of those of ``job_ids`` that have not ended; {} if squeue is absent."""
    try:
        out = subprocess.run(["squeue", "--noheader", "--array", "--format=%i|%T"], capture_output=True, text=True,
                             check=True, timeout=60).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    wanted = set(job_ids)
    states = dict(line.strip().split("|", 1) for line in out.splitlines() if "|" in line)
    return {j: s for j, s in states.items() if j in wanted and s in ACTIVE}


def wait(jobs: dict[str, str], root: Path, poll_seconds: float = 2.0, log: Callable[[str], None] = print) -> dict:
    """Wait until every job has ended; returns name -> "done" or "failed (...)" from the run folders."""
    from iwae.runs.rundir import status

    left = dict(jobs)
    while left:
        time.sleep(poll_seconds)
        active = queue_states(list(left.values()))
        for name in [n for n, j in left.items() if j not in active]:
            log(f"  {name}: {status(root / name)} (Slurm job {left.pop(name)} ended)")
    result = {}
    for name, job in jobs.items():
        stderr = json.loads((root / name / JOB_NAME).read_text())["stderr"]
        result[name] = "done" if status(root / name) == "done" else f"failed (Slurm job {job}; see {stderr})"
    return result


def submit_run(args: argparse.Namespace, config: TrainConfig) -> dict[str, Any] | None:
    """``iwae train --executor slurm``: one job for the run folder ``args.out``; its ``metrics.json`` once the job
    has ended (None with ``--no-wait``).

    :raises RunError: the folder already holds a run, or the job ended without finishing the run.
    """
    from iwae.runs.rundir import METRICS_NAME, RunError, check_new

    out = Path(args.out).resolve()
    check_new(out)
    config.check_objective()  # (a bound or an estimator of one's own: checked here, not in the job's log)
    if config.model is not None:  # a model of one's own is checked here, not in the job's log
        from iwae.runs.own_model import build_own_model, check_sampler

        check_sampler(build_own_model(config), config.model)
    made = out if not out.exists() else out / "slurm" if not (out / "slurm").exists() else None
    try:
        jobs = submit([RunSpec(out.name, config)], out.parent, options_from_args(args, out / "slurm"))
    except RunError:  # nothing submitted: what this made goes, so that the same command can run again
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise
    if args.no_wait:
        print(f"`iwae status {args.out}` shows its progress")
        return None
    result = wait(jobs, out.parent)[out.name]
    if result != "done":
        raise RunError(f"{args.out}: {result}")
    return json.loads((out / METRICS_NAME).read_text())
