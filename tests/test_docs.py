"""The documentation runs as written: README's Python blocks and the package docstring's example."""

from __future__ import annotations

import doctest
import os
import re
from pathlib import Path

import pytest

import iwae

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = os.environ.get("IWAE_DATA_DIR")


def python_blocks(path: Path) -> list[str]:
    """Every ```python fenced block of a markdown file, in order."""
    return re.findall(r"^```python\n(.*?)^```$", path.read_text(), flags=re.M | re.S)


def test_readme_has_python_blocks():
    assert python_blocks(ROOT / "README.md")


@pytest.mark.skipif(
    not DATA_DIR, reason="IWAE_DATA_DIR is not set: README's examples load MNIST from the data directory"
)
@pytest.mark.parametrize("index", range(len(python_blocks(ROOT / "README.md"))))
def test_readme_python_block_runs_as_written(index: int):
    code = python_blocks(ROOT / "README.md")[index]
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme"})


def test_package_docstring_example_runs():
    result = doctest.testmod(iwae, raise_on_error=False, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
