"""L_5000 of a trained MNIST model sharded over 1 and 2 gloo processes (:mod:`iwae.analysis.distributed`): wall time,
speed-up and the agreement of the results; writes benchmarks/results/sharded_eval.{json,md}.

    python -m benchmarks.sharded_eval [--run RUN] [--n 1000] [--k 5000]

Without ``--run`` it first trains a short 1-layer MNIST IWAE (k = 5, 0.1 passes, under a minute) into a
temporary folder. ``--n`` test images spread through the test set (1,000 by default: the whole 10,000-image set
takes ten times as long).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import report
from iwae.analysis.distributed import evaluate_sharded
from iwae.runs.config import TrainConfig
from iwae.runs.train import train_and_evaluate
from iwae.util.atomic import write_json, write_text

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="run folder (default: train a short one)")
    p.add_argument("--n", type=int, default=1000, help="test images (default 1000)")
    p.add_argument("--k", type=int, default=5000, help="importance samples (default 5000)")
    args = p.parse_args()
    run, model = args.run, f"the run folder {args.run}"
    if run is None:
        run = str(Path(tempfile.mkdtemp()) / "run")
        config = TrainConfig(k=5, stages=1, pass_scale=0.1, evaluate=False, curve_k=0)
        train_and_evaluate(run, config, progress=False)
        model = (
            f"a 1-layer MNIST IWAE (k = 5) trained here for 0.1 passes, random streams of scheme "
            f"{config.streams}: a short schedule, the timing and the agreement between process counts being the "
            "point, not its NLL"
        )
    rows = []
    for nproc in (1, 2):
        start = time.perf_counter()
        r = evaluate_sharded(run, args.k, "test", args.n, nproc=nproc)
        rows.append({"processes": nproc, "seconds": time.perf_counter() - start, "nll": r["nll"], "n": r["n"]})
    base, meta = rows[0], report.machine(torch.device("cpu"))
    command = "python -m benchmarks.sharded_eval " + " ".join(sys.argv[1:])
    lines = [
        f"# L_{args.k} on {base['n']} MNIST test images, sharded over gloo processes", "",
        f"- command: `{command}`",
        f"- model: {model}",
        f"- date: {meta['date']}; {meta['cpu']}, {meta['cores']} cores; torch {meta['torch']}; load average before "
        f"{meta['load_before']} (other work on the machine shares its cores)", "",
        "| processes | seconds | speed-up | test NLL | difference from 1 process |", "| --- | --- | --- | --- | --- |",
        *(f"| {r['processes']} | {r['seconds']:.1f} | {base['seconds'] / r['seconds']:.2f}x | {r['nll']:.6f} | "
          f"{r['nll'] - base['nll']:.2e} |" for r in rows),
    ]  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "sharded_eval.json", {"command": command, "machine": meta, "k": args.k, "rows": rows})
    write_text(RESULTS / "sharded_eval.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
