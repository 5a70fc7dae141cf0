"""benchmarks/fleet.py runs end to end in its quick mode and writes well-formed results (no timing checks)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, where benchmarks/ lives

from benchmarks import fleet  # noqa: E402


@pytest.mark.slow  # seconds: the default run stays under 3 minutes
def test_quick_fleet_benchmark_writes_rows_with_positive_rates(tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "fleet.json"
    try:
        fleet.main(["--quick", "--repeats", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    loaded = json.loads(out.read_text())
    assert {r["config"] for r in loaded["rows"]} == {c[0] for c in fleet.CONFIGS}
    assert loaded["command"] == f"python -m benchmarks.fleet --quick --repeats 1 --out {out}"
    assert loaded["meta"]["load_before"] is None or len(loaded["meta"]["load_before"]) == 3
    for row in loaded["rows"]:
        assert row["layers"] == 1 and row["runs"] == 2
        assert set(row["examples_per_s_per_core"]) == set(fleet.MODES)
        assert all(rate > 0 for rate in row["examples_per_s_per_core"].values())
        assert row["stacked_over_loop"] > 0
        assert row["auto_picked"] == "loop"  # on a CPU
    text = out.with_suffix(".md").read_text()
    assert "| layers | config | M | stacked ex/s |" in text and "Load average" in text
