"""How loose L_5000 is: annealed importance sampling (:mod:`iwae.ais`) against L_5000 on the same test images of a
published model, and how close that AIS comes to log p(x) by bidirectional Monte Carlo (:func:`iwae.bdmc`);
writes benchmarks/results/ais_gap.{json,md}.

    python -m benchmarks.ais_gap [--model mnist-l1-k1] [--n 100] [--steps 100,500] [--chains 8]
        [--prior-steps 500,2000]

The images are the first ``n`` of the model's own evaluation (spread through the test set, binarized by its
evaluation stream); L_5000 is drawn from that stream too. Each AIS estimate is a stochastic lower bound on log p(x),
as L_5000 is: the larger one is the tighter. The gap is paired over images, with its standard error. BDMC runs the
same AIS forward and in reverse on ``n`` data simulated from the model (the test split's ``ais`` stream), where the
exact latent is known: log p(x) lies between the two on average, so their gap bounds AIS's own error there. AIS
from the prior (``anneal_from="prior"``) and its BDMC are run the same way, for its cost in steps beside AIS from q.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path

import torch

import iwae
from benchmarks.report import ais_row, ais_runs
from iwae.ais import ais_log_likelihood, bdmc
from iwae.analysis.compare import paired_difference
from iwae.runs.evaluate_run import eval_images, stream
from iwae.util.atomic import write_json, write_text
from iwae.util.machine import describe

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mnist-l1-k1", help="a published model (iwae.pretrained.available())")
    p.add_argument("--n", type=int, default=100, help="test images (default 100)")
    p.add_argument("--steps", default="100,500", help="annealing steps, comma-separated (default 100,500)")
    p.add_argument("--chains", type=int, default=8, help="AIS chains per image (default 8)")
    p.add_argument(
        "--prior-steps",
        default="500,2000",
        help="annealing steps of AIS from the prior, comma-separated; '' for none (default 500,2000)",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "ais_gap", help="path without suffix for .json and .md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, config, _ = iwae.pretrained.load(args.model)
    device = next(model.parameters()).device
    x = eval_images(config, "test", args.n, device, config.seed)
    start = time.perf_counter()
    l5000 = iwae.log_likelihood(model, x, 5000, generator=stream(config, device, "test", "nll", config.seed))
    rows = [{"estimate": "L_5000", "mean": l5000.mean().item(), "seconds": time.perf_counter() - start}]
    runs = ais_runs(args.steps, args.prior_steps)
    for anneal_from, steps in runs:
        start = time.perf_counter()
        gen = stream(config, device, "test", "ais", config.seed)
        ais = ais_log_likelihood(model, x, steps=steps, chains=args.chains, generator=gen, anneal_from=anneal_from)
        gap = paired_difference(l5000, ais)  # -L_5000 - (-AIS): how much higher AIS is
        rows.append({"estimate": ais_row("AIS", anneal_from, steps, args.chains), "mean": ais.mean().item(),
                     "gap": gap, "above": (ais > l5000).float().mean().item(),
                     "seconds": time.perf_counter() - start})  # fmt: skip
    for anneal_from, steps in runs:
        start = time.perf_counter()
        out = bdmc(model, args.n, steps=steps, chains=args.chains, generator=stream(config, device, "test", "ais"),
                   anneal_from=anneal_from)  # fmt: skip
        gap = paired_difference(-out.upper, -out.lower)  # upper - lower, paired over the simulated data
        rows.append({"estimate": ais_row("BDMC", anneal_from, steps, args.chains), "lower": out.lower.mean().item(),
                     "upper": out.upper.mean().item(), "bdmc_gap": gap,
                     "seconds": time.perf_counter() - start})  # fmt: skip
    command = "python -m benchmarks.ais_gap " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = {"command": command.strip(), "model": args.model, "n": x.shape[0], "machine": describe(device),
              "date": datetime.date.today().isoformat(), "rows": rows}  # fmt: skip
    write_json(args.out.with_suffix(".json"), result)
    write_text(args.out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    lines = [
        f"# L_5000 against annealed importance sampling: {result['model']}, {result['n']} test images",
        "",
        f"`{result['command']}` on {result['machine']}, {result['date']}. Mean log p(x) estimate per image (nats); "
        "the gap is AIS minus L_5000 on the same images, with its paired standard error; 'above': the share of "
        "images where AIS is the higher (tighter) bound. AIS starts from the recognition model's proposal, or, "
        "where it says so, from the prior.",
        "",
        "| estimate | mean log p(x) | AIS - L_5000 | above | seconds |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in (r for r in result["rows"] if "bdmc_gap" not in r):
        gap = f"{r['gap']['mean']:.3f} ± {r['gap']['sem']:.3f}" if "gap" in r else "-"
        above = f"{r['above']:.0%}" if "above" in r else "-"
        lines.append(f"| {r['estimate']} | {r['mean']:.3f} | {gap} | {above} | {r['seconds']:.0f} |")
    bdmc_rows = [r for r in result["rows"] if "bdmc_gap" in r]
    if bdmc_rows:
        lines += [
            "",
            f"Bidirectional Monte Carlo on {result['n']} data simulated from the model: forward AIS (a stochastic "
            "lower bound on log p(x)) and reverse AIS from the latent that generated each datum (a stochastic upper "
            "bound); their gap, paired over the data, bounds the error of AIS with the same settings on such data.",
            "",
            "| estimate | AIS (lower) | reverse AIS (upper) | gap | seconds |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for r in bdmc_rows:
            gap = f"{r['bdmc_gap']['mean']:.3f} ± {r['bdmc_gap']['sem']:.3f}"
            lines.append(f"| {r['estimate']} | {r['lower']:.3f} | {r['upper']:.3f} | {gap} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
