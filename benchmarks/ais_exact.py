"""Annealed importance sampling against the exact log p(x) of real test images: the published 2-D latent model.

    python -m benchmarks.ais_exact [--model mnist-2d-iwae-k5] [--n 500] [--steps 100,500] [--chains 8]
        [--prior-steps 100,500] [--out benchmarks/results/ais_exact.json]

A model with two latent units is integrated exactly (``benchmarks.exact_ll``: the trapezoid rule on a grid over
[-6, 6]^2 of spacing 0.015, exact to well under 0.01 nats on these images, ``results/fidelity/exact.md``). On the
same test images (the first ``n`` of the model's evaluation, as there), AIS (:func:`iwae.ais_log_likelihood`, the
chains from the model's ``ais`` stream) is compared with it image by image, beside L_5000: the check of AIS that
bidirectional Monte Carlo gives on simulated data (``benchmarks.ais_gap``), here on real images with the answer
known. AIS from the prior (``anneal_from="prior"``) runs beside AIS from the recognition model: its chains start
wherever the prior puts mass, so it can find the posterior modes that q misses.
"""

from __future__ import annotations

import argparse
import math
import shlex
import time
from datetime import date
from pathlib import Path

import torch

import iwae
from benchmarks import report
from benchmarks.exact_ll import exact_log_px, published_images
from iwae.ais import ais_log_likelihood
from iwae.runs.evaluate_run import stream
from iwae.util.machine import describe

RESULTS = Path(__file__).parent / "results"


def gap(log_px: torch.Tensor, ll: torch.Tensor) -> dict:
    """log p(x) - estimate per image: its mean with the paired standard error, its median, the images where the
    estimate is above log p(x), and those where it is more than a nat below (a posterior mode the proposal missed)."""
    d = (log_px - ll.double()).double()
    n = d.shape[0]
    return {"mean": ll.double().mean().item(), "gap": d.mean().item(), "gap_sem": d.std().item() / n**0.5,
            "median_gap": d.median().item(), "above_log_px": int((d < 0).sum()),
            "missed_by_1": int((d > 1).sum())}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mnist-2d-iwae-k5", help="a published model with 2 latent units")
    p.add_argument("--n", type=int, default=500, help="test images (default 500, as results/fidelity/exact.json)")
    p.add_argument("--steps", default="100,500", help="annealing steps, comma-separated (default 100,500)")
    p.add_argument("--chains", type=int, default=8, help="AIS chains per image (default 8)")
    p.add_argument(
        "--prior-steps",
        default="100,500",
        help="annealing steps of AIS from the prior, comma-separated; '' for none (default 100,500)",
    )
    p.add_argument("--points", type=int, default=801, help="grid points per axis over [-6, 6] (default 801)")
    p.add_argument("--out", type=Path, default=RESULTS / "ais_exact.json", help=report.OUT_HELP)
    args = p.parse_args(argv)
    report.check_out(p, args.out)
    model, config, x = published_images(args.model, args.n)
    start = time.perf_counter()
    log_px = exact_log_px(model, x, 6.0, args.points)
    rows = {"exact": {"mean": log_px.mean().item(), "seconds": time.perf_counter() - start, "ll": log_px.tolist()}}
    start = time.perf_counter()
    l5000 = iwae.log_likelihood(model, x, 5000, generator=stream(config, torch.device("cpu"), "test", "nll"))
    rows["L_5000"] = {**gap(log_px, l5000), "seconds": time.perf_counter() - start, "ll": l5000.tolist()}
    estimates: dict[tuple[str, int], tuple[torch.Tensor, float]] = {}
    for anneal_from, steps in report.ais_runs(args.steps, args.prior_steps):
        start = time.perf_counter()
        gen = stream(config, torch.device("cpu"), "test", "ais")
        ais = ais_log_likelihood(model, x, steps=steps, chains=args.chains, generator=gen, anneal_from=anneal_from)
        estimates[anneal_from, steps] = ais.double(), time.perf_counter() - start
        rows[report.ais_row("AIS", anneal_from, steps, args.chains)] = {**gap(log_px, ais), "seconds": estimates[
            anneal_from, steps][1], "ll": ais.tolist()}  # fmt: skip
    crossings = []
    for steps in sorted({s for kind, s in estimates if kind == "q"} & {s for kind, s in estimates if kind == "prior"}):
        (from_q, q_seconds), (from_prior, prior_seconds) = estimates["q", steps], estimates["prior", steps]
        # every chain's weight is unbiased for p(x), whichever its start: the mean over both sets of chains is too
        both = torch.logaddexp(from_q, from_prior) - math.log(2)
        name = f"AIS from q and the prior, {steps} steps x {args.chains} + {args.chains} chains"
        rows[name] = {**gap(log_px, both), "seconds": q_seconds + prior_seconds, "ll": both.tolist()}
        missed_q, missed_prior = log_px - from_q > 1, log_px - from_prior > 1
        crossings.append({"steps": steps, "missed_from_q": int(missed_q.sum()),
                          "of_those_found_from_the_prior": int((missed_q & ~missed_prior).sum()),
                          "missed_from_the_prior": int(missed_prior.sum()),
                          "of_those_found_from_q": int((missed_prior & ~missed_q).sum())})  # fmt: skip
    command = "python -m benchmarks.ais_exact " + shlex.join(argv if argv is not None else [])
    result = {"command": command.strip(), "model": args.model, "n": x.shape[0], "points": args.points,
              "machine": describe(), "date": date.today().isoformat(), "rows": rows,
              "crossings": crossings}  # fmt: skip
    report.publish(result, markdown(result), args.out)
    return 0


def markdown(result: dict) -> str:
    lines = [
        f"# AIS against the exact log p(x): {result['model']}, {result['n']} test images",
        "",
        f"log p(x) by integration over [-6, 6]^2 ({result['points']} points per axis); each estimate's gap is log p(x) "
        "minus the estimate, paired over images with its standard error; 'above': images where the estimate exceeds "
        "log p(x) (a stochastic lower bound is below it only in expectation); 'missed': images where it is more than a "
        "nat below (from q: a posterior mode far from the recognition model's proposal, which neither importance "
        "sampling nor annealing with local moves from that proposal finds; from the prior: chains that have not "
        "reached the posterior's mass in the steps given). AIS starts from the recognition model's proposal, or, "
        "where it says so, from the prior.",
        "",
        "| estimate | mean log p(x) estimate | gap to log p(x) | median gap | above | missed | seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| exact | {result['rows']['exact']['mean']:.3f} | - | - | - | - | {result['rows']['exact']['seconds']:.0f} |",
    ]
    for name, r in result["rows"].items():
        if name != "exact":
            lines.append(f"| {name} | {r['mean']:.3f} | {r['gap']:.4f} ± {r['gap_sem']:.4f} | {r['median_gap']:.4f} | "
                         f"{r['above_log_px']} | {r['missed_by_1']} | {r['seconds']:.0f} |")  # fmt: skip
    for c in result.get("crossings", []):
        lines += ["", f"At {c['steps']} steps: of the {c['missed_from_q']} images AIS from q misses by more than a "
                  f"nat, AIS from the prior finds {c['of_those_found_from_the_prior']} (within a nat); of the "
                  f"{c['missed_from_the_prior']} it misses from the prior, AIS from q finds "
                  f"{c['of_those_found_from_q']}. Every chain's weight is unbiased for p(x) whichever its start, so "
                  "the mean over both sets of chains is a stochastic lower bound too (the row 'from q and the prior', "
                  "at the two runs' cost)."]  # fmt: skip
    return "\n".join([*lines, "", *report.provenance(result)])


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
