"""Bit-for-bit regression check: tiny fixed-seed training runs at a git revision against the working tree.

    python -m benchmarks.regress --ref 543f8c9 [--data-dir DIR] [--tree-args "--streams 1 --no-flush-denormal"]

For each configuration below, ``iwae train`` runs once with the revision's package (exported with ``git archive``)
and once with the working tree's, each in a fresh process with one thread. The script compares every
``metrics.jsonl`` line and every ``metrics.json`` value (timings aside) and every tensor of the final checkpoint,
and prints a table; it exits non-zero when anything differs. A refactoring that claims "behaviour unchanged" must
pass it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--stages", "2", "--pass-scale", "0.005", "--eval-k", "20", "--eval-n", "40", "--quiet", "--device", "cpu"]
CONFIGS = {  # `--objective`, the former name of `--bound`, which a revision before 0.2.0 knows only (the tree: --bound)
    "iwae-k5-l1": ["--layers", "1", "--objective", "iwae", "--k", "5"],
    "vae-k3-l2": ["--layers", "2", "--objective", "vae", "--k", "3"],
    "stl-miwae-l2": ["--layers", "2", "--objective", "miwae", "--k", "3", "--m", "2", "--estimator", "stl"],
    "dreg-k4-l2": ["--layers", "2", "--objective", "iwae", "--k", "4", "--estimator", "dreg"],
    "dreg-miwae-l2": ["--layers", "2", "--objective", "miwae", "--k", "2", "--m", "2", "--estimator", "dreg"],
    "dreg-ciwae-l1": ["--layers", "1", "--objective", "ciwae", "--k", "3", "--beta", "0.3", "--estimator", "dreg"],
    "dreg-vr-l1": ["--layers", "1", "--objective", "vr", "--k", "3", "--alpha", "0.3", "--estimator", "dreg"],
    "sample-one-k5": ["--layers", "1", "--objective", "iwae", "--k", "5", "--estimator", "sample-one"],
    "piwae-l1": ["--layers", "1", "--objective", "piwae", "--k", "2", "--m", "2"],
    "ciwae-omniglot": ["--dataset", "omniglot", "--objective", "ciwae", "--k", "3", "--beta", "0.3"],
}
TIMING = {"seconds", "examples_per_s", "train_seconds", "train_machines", "curve_seconds", "eval_seconds"}
# which code evaluated the run (an exported revision has no git commit), and on which machine: not results
_PROVENANCE = {"code", "eval_machine"}


def _export(rev: str, folder: Path) -> Path:
    archive = folder / "ref.tar"
    subprocess.run(["git", "archive", "-o", str(archive), rev, "src"], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "ref", filter="data")
    return folder / "ref" / "src"


def _train(src: Path, args: list[str], out: Path, data_dir: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", IWAE_DATA_DIR=data_dir)
    cmd = [sys.executable, "-c", "import sys; from iwae.cli import main; sys.exit(main(sys.argv[1:]))"]
    subprocess.run([*cmd, "train", *args, *TINY, "--out", str(out)], env=env, check=True, cwd=out.parent)


def _metrics(run: Path) -> tuple[list[dict], dict]:
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if s.strip()]
    strip = lambda d: {k: v for k, v in d.items() if k not in TIMING | _PROVENANCE}  # noqa: E731
    return [strip(d) for d in lines], strip(json.loads((run / "metrics.json").read_text()))


def _tensors(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoint.safetensors"))


def compare(a: Path, b: Path) -> list[str]:
    """Differences between two run folders (empty when they agree bit for bit)."""
    diffs = []
    (log_a, met_a), (log_b, met_b) = _metrics(a), _metrics(b)
    if log_a != log_b:
        diffs.append("metrics.jsonl differs")
    for key in sorted(set(met_a) | set(met_b)):
        if key in met_a and key in met_b and met_a[key] != met_b[key]:
            diffs.append(f"metrics.json {key}: {met_a[key]} != {met_b[key]}")
    ta, tb = _tensors(a), _tensors(b)
    for key in sorted(set(ta) & set(tb)):
        if not (ta[key].shape == tb[key].shape and bool((ta[key] == tb[key]).all())):
            diffs.append(f"checkpoint tensor {key} differs")
    return diffs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="git revision to compare against")
    parser.add_argument("--data-dir", default=os.environ.get("IWAE_DATA_DIR"), help="data directory")
    parser.add_argument("--only", help="comma-separated subset of the configurations")
    parser.add_argument("--tree-args", default="", help="extra `iwae train` flags for the working tree's runs")
    args = parser.parse_args()
    if not args.data_dir:
        parser.error("give --data-dir or set IWAE_DATA_DIR")
    args.data_dir = str(Path(args.data_dir).resolve())
    names = args.only.split(",") if args.only else list(CONFIGS)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref_src = _export(args.ref, tmp)
        tree = f"working tree {args.tree_args}".strip()
        print(f"| run | {args.ref} vs {tree} |\n| --- | --- |")
        for name in names:
            (tmp / "a").mkdir(exist_ok=True)
            (tmp / "b").mkdir(exist_ok=True)
            _train(ref_src, CONFIGS[name], tmp / "a" / name, args.data_dir)
            tree_args = ["--bound" if a == "--objective" else a for a in CONFIGS[name]] + shlex.split(args.tree_args)
            _train(ROOT / "src", tree_args, tmp / "b" / name, args.data_dir)
            diffs = compare(tmp / "a" / name, tmp / "b" / name)
            failed += bool(diffs)
            print(f"| {name} | {'identical' if not diffs else '; '.join(diffs[:4])} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
