"""Before and after: the project's training step and L_5000 at a git revision against the working tree, interleaved
in one process on the same data.

    python -m benchmarks.compare --ref f9d0cf9 --threads 1 --out benchmarks/results/compare.md

The revision's ``src/iwae`` is exported with ``git show`` into a temporary folder as the package ``iwae_ref`` (its
``iwae`` imports rewritten), so both versions run side by side.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from benchmarks/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

import iwae
from benchmarks import measure, report

ROOT = Path(__file__).resolve().parents[1]


def load_ref(rev: str, folder: Path):
    """Export src/iwae at ``rev`` (with its sub-packages) into ``folder/iwae_ref`` and import it."""
    archive = folder / "ref.tar"
    subprocess.run(["git", "archive", "-o", str(archive), rev, "src/iwae"], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    pkg = folder / "iwae_ref"
    (folder / "src" / "iwae").rename(pkg)
    for path in pkg.rglob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"\biwae\b(?=[.\s])", "iwae_ref", text.replace("from iwae ", "from iwae_ref ")))
    sys.path.insert(0, str(folder))
    return importlib.import_module("iwae_ref")


def compare(ref, steps: dict, repeats: int) -> list[dict]:
    cpu, x, rows = torch.device("cpu"), measure.synthetic_binary(20), []
    for layers in (1, 2):
        for k in (1, 5, 50):
            fns = {}
            for name, lib in (("before", ref), ("after", iwae)):
                for estimator in ("reparam", "sample-one") if k == 50 else ("reparam",):
                    torch.manual_seed(0)
                    model = lib.IWAE.paper(layers)
                    step = lib.make_train_step(model, lib.make_optimizer(model), k=k, estimator=estimator)
                    fns[(name, estimator)] = lambda step=step: step(x)
            seconds = measure.time_interleaved(fns, steps[k], repeats, 5, cpu)
            for estimator in ("reparam", "sample-one") if k == 50 else ("reparam",):
                before, after = seconds[("before", estimator)], seconds[("after", estimator)]
                rows.append({"what": f"step {layers}L k={k} IWAE {estimator}", "before": before, "after": after})
    xe = measure.synthetic_binary(40)
    for layers in (1, 2):
        fns = {}
        for name, lib in (("before", ref), ("after", iwae)):
            model = lib.IWAE.paper(layers).eval()
            fns[name] = lambda lib=lib, model=model: lib.log_likelihood(model, xe, k=5000)
        seconds = measure.time_interleaved(fns, 1, max(2, repeats // 2), 1, cpu)
        rows.append({"what": f"L_5000 {layers}L, 40 images", **seconds})
    return rows


def markdown(rows: list[dict], rev: str, command: str) -> str:
    meta = report.machine(torch.device("cpu"))
    lines = [
        f"# Before ({rev}) and after (working tree: {report.code_text(meta)})",
        "",
        f"- command: `{command}`",
        f"- date: {meta['date']}; {meta['cpu']}, {meta['cores']} cores, torch threads {meta['torch_threads']}; "
        f"torch {meta['torch']}; load average {meta['load_before']}",
        "",
        "| measurement | before (ms) | after (ms) | speed-up |",
        "|---|---|---|---|",
    ]
    for r in rows:
        before, after = r["before"] * 1e3, r["after"] * 1e3
        lines.append(f"| {r['what']} | {before:.2f} | {after:.2f} | {before / after:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default="HEAD", help="git revision to compare against (default HEAD)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps, repeats = ({1: 20, 5: 10, 50: 3}, 3) if args.quick else ({1: 40, 5: 20, 50: 5}, 9)
    with tempfile.TemporaryDirectory() as tmp:
        rows = compare(load_ref(args.ref, Path(tmp)), steps, repeats)
    command = "python -m benchmarks.compare " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = markdown(rows, args.ref, command)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
