"""Every script in examples/ runs in its smoke mode (a few steps, a small evaluation) and prints its score."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.py"))


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"conv_mnist.py", "score_any_model.py"}


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_in_smoke_mode(script, data_dir):
    env = {**os.environ, "IWAE_DATA_DIR": data_dir, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), "--smoke"], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    nll = re.search(r"^test NLL [^:]*: ([0-9.]+)", done.stdout, re.MULTILINE)
    assert nll and 50 < float(nll.group(1)) < 800, done.stdout  # nats per image: untrained is ~550
