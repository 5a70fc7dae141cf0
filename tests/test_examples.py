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


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_without_its_data_says_where_to_get_it_in_one_line(script, tmp_path):
    env = {**os.environ, "IWAE_DATA_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(script), "--smoke"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "iwae download" in done.stderr
    assert done.stderr.startswith(f"{script.name}: data set 'mnist' not found in {tmp_path}")
