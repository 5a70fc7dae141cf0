"""Write results/estimators/results.json from the estimator runs' folders: every number in it comes from here.

    python results/estimators/make_results.py RUN_DIR [RUN_DIR ...] [--k 5000] [--n 1000] [--out FILE]

For each run (keyed by its gradient estimator): the test NLL (mean -L_k over n test images) and its standard
error, the active units (on n training images, as in ``metrics.json``), the training bound of the last logged pass
and the training time. For each pair of runs, in the order given, the paired difference NLL(later) - NLL(earlier)
on the same images with the same noise (:func:`iwae.analysis.compare.log_likelihoods`), so each NLL equals
``iwae evaluate RUN --k K --n N`` and each difference ``iwae compare LATER EARLIER --k K --n N``. The runs must
differ in their estimator only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from itertools import combinations
from pathlib import Path
from typing import Any

from iwae.analysis.compare import log_likelihoods, paired_difference
from iwae.evaluate import count_active
from iwae.runs.evaluate_run import activity, summarize
from iwae.runs.rundir import load_run
from iwae.util.atomic import write_json

# Settings that may differ between the runs without changing what was trained.
_INCIDENTAL = {"data_dir", "device", "checkpoint_minutes", "tensorboard", "compile"}


def _run_facts(run_dir: Path, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's settings (but the incidental ones) and its active units, last-pass bound and training time."""
    config, model, state = load_run(run_dir)
    counts = count_active(activity(config, model.eval(), n)[0], config.active_threshold)
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    settings = {key: v for key, v in dataclasses.asdict(config).items() if key not in _INCIDENTAL}
    facts = {
        "active_units": counts, "last_pass": log[-1]["pass"],
        "last_pass_train_bound": log[-1]["train_bound"], "train_seconds": state["train_seconds"],
    }  # fmt: skip
    return settings, facts


def make_results(run_dirs: list[Path], k: int, n: int, source: str) -> dict[str, Any]:
    """The content of results.json for these runs (see the module docstring); ``source``: the command."""
    facts = [_run_facts(run_dir, n) for run_dir in run_dirs]
    names = [settings.pop("estimator") for settings, _ in facts]
    if len(set(names)) != len(names):
        raise ValueError(f"each run must have its own estimator, got {', '.join(names)}")
    for (settings, _), run_dir in zip(facts, run_dirs):
        if settings != facts[0][0]:
            diff = sorted(key for key in settings if settings[key] != facts[0][0][key])
            raise ValueError(f"{run_dir} differs from {run_dirs[0]} in more than the estimator: {', '.join(diff)}")
    evaluation, lls = log_likelihoods(run_dirs, split="test", k=k, n=n, progress=False)
    runs = {
        name: {"run": str(run_dir), "test_nll": s["nll"], "test_nll_sem": s["nll_sem"], **f}
        for name, (_, f), s, run_dir in zip(names, facts, map(summarize, lls), run_dirs)
    }
    pairs = {
        f"{names[j]} - {names[i]}": paired_difference(lls[j], lls[i]) for i, j in combinations(range(len(names)), 2)
    }
    return {
        "source": source,
        "training": facts[0][0], "evaluation": evaluation, "runs": runs, "paired_test_nll_differences": pairs,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run folders made by `iwae train`")
    parser.add_argument("--k", type=int, default=5000, help="importance samples (default 5000)")
    parser.add_argument("--n", type=int, default=1000, help="test images spread evenly through the split (1000)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results.json", help="file to write")
    args = parser.parse_args()
    command = "python " + shlex.join(["results/estimators/make_results.py", *sys.argv[1:]])
    write_json(args.out, make_results(args.run_dirs, args.k, args.n, command))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
