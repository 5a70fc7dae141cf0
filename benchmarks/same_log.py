"""How far two training logs agree bit for bit: the passes, from the first, whose ``metrics.jsonl`` records are
equal, their timings aside.

    python -m benchmarks.same_log FIRST/metrics.jsonl SECOND/metrics.jsonl

A run started again from its config repeats its first try's log exactly where the arithmetic is deterministic (the
same torch build, one thread, the same kind of CPU); the script names the first pass that differs, if any, and
exits non-zero then (and when a log is empty), with the largest difference of each number over all the records
both hold: how far two logs that parted have drifted apart. Only the passes both logs hold are compared.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.regress import TIMING


def records(path: Path) -> list[dict]:
    """The log's records without their timings."""
    lines = [json.loads(s) for s in path.read_text().splitlines() if s.strip()]
    return [{k: v for k, v in d.items() if k not in TIMING} for d in lines]


def agreement(a: list[dict], b: list[dict]) -> tuple[int, dict | None, dict | None]:
    """The number of leading records ``a`` and ``b`` share, and the first pair that differs (None, None if none)."""
    for i, (ra, rb) in enumerate(zip(a, b)):
        if ra != rb:
            return i, ra, rb
    return min(len(a), len(b)), None, None


def largest_differences(a: list[dict], b: list[dict]) -> dict[str, tuple[float, float]]:
    """For each number the records of ``a`` and ``b`` share, the largest absolute difference over the records both
    hold, and the pass where it lies."""
    largest: dict[str, tuple[float, float]] = {}
    for ra, rb in zip(a, b):
        for k in ra.keys() & rb.keys():
            if isinstance(ra[k], (int, float)) and isinstance(rb[k], (int, float)) and k != "pass":
                d = abs(ra[k] - rb[k])
                if d > largest.get(k, (-1.0, 0.0))[0]:
                    largest[k] = (d, ra["pass"])
    return largest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path, help="a metrics.jsonl")
    parser.add_argument("second", type=Path, help="the metrics.jsonl of the same config trained again")
    args = parser.parse_args(argv)
    a, b = records(args.first), records(args.second)
    same, ra, rb = agreement(a, b)
    print(f"{args.first}: {len(a):,} records (passes); {args.second}: {len(b):,}")
    through = f"the first {same:,} records, to pass {a[same - 1]['pass']:,.6g}" if same else "no record"
    if ra is None and not same:
        print("nothing to compare: a log holds no record")
        return 1
    if ra is None:
        curve = sum("test_nll_curve" in r for r in a[:same])
        print(f"identical in {through} (all but their timings; {curve} learning-curve points among them)")
        return 0
    keys = sorted(k for k in ra.keys() | rb.keys() if ra.get(k) != rb.get(k))
    print(f"identical in {through}; record {same + 1:,} differs in {', '.join(keys)}:")
    for k in keys:
        print(f"  {k}: {ra.get(k)} against {rb.get(k)}")
    shared = min(len(a), len(b))
    drift = ", ".join(f"{k} {d:.3g} (pass {p:,.6g})" for k, (d, p) in sorted(largest_differences(a, b).items()) if d)
    print(f"largest differences over the {shared:,} records both hold: {drift}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
