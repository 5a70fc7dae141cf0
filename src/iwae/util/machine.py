"""The machine a number was measured on, in the words results state it: CPU model, cores, GPU, versions."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import cache
from pathlib import Path

import torch

__all__ = ["cpu_model", "describe"]


@cache  # one lscpu a process: the CPU does not change under it
def cpu_model() -> str:
    """The CPU's model name (``lscpu``, else Linux's /proc/cpuinfo), else the platform's processor string."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
        lines = out.splitlines()
    except (OSError, subprocess.SubprocessError):
        try:
            lines = Path("/proc/cpuinfo").read_text().splitlines()
        except OSError:
            lines = []
    for line in lines:
        if line.startswith(("Model name:", "model name")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe(device: torch.device | str | None = None) -> str:
    """One line: the CPU model and cores, the instruction set of torch's CPU kernels (ATen's capability: AVX2 and
    AVX512 kernels round differently), the GPU on a CUDA ``device``, and torch's and Python's versions, e.g.
    ``AMD EPYC 7B13, 2 cores, ATen AVX2; torch 2.13.0+cpu, Python 3.11.7``."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    gpu = f", {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})" if device.type == "cuda" else ""
    kernels = torch.backends.cpu.get_cpu_capability()
    return (f"{cpu_model()}, {os.cpu_count()} cores, ATen {kernels}{gpu}; torch {torch.__version__}, "
            f"Python {platform.python_version()}")  # fmt: skip
