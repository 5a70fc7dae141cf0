"""Subnormal floats flushed to zero for the library's CPU work, set for the work and restored after.

IWAE's normalised weights and a saturating decoder's gradients underflow into subnormal floats (below 1.2e-38 in
float32), and x86 cores compute with those many times slower: an IWAE k=50 step on a trained 2-layer model is
about 5x slower with them (``benchmarks/results/cpu.md``). Flushing them to zero changes results by nothing
measurable (``tests/test_cpu.py``). torch keeps the flag per thread (the x86 MXCSR register): it applies to the
thread that sets it and to threads started afterwards, such as torch's CPU worker threads when they start, and
restoring it restores the calling thread only. With one thread, the library's default for training on the CPU
(:func:`iwae.runs.train.default_threads`) and what ``metrics.json`` records for most runs, all the work is flushed or
not exactly as asked; with several, workers keep the flag they started with, which can differ (a run made before
flushing existed, evaluated on several threads after flushed work in the same process, may differ in its last
digits from its ``metrics.json``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy
import torch

__all__ = ["subnormals_flushed", "flush_subnormals"]


def subnormals_flushed() -> bool:
    """Whether this thread flushes subnormal floats to zero now (torch has no getter: a float32 subnormal is made
    by the CPU's own conversion and read back, a fraction of a microsecond, as every training step asks)."""
    return float(numpy.float32(1e-39)) == 0.0


@contextmanager
def flush_subnormals(enabled: bool = True) -> Iterator[None]:
    """Flush subnormal floats to zero in the block (``enabled=False``: keep them), then restore the setting found.

    Where the CPU cannot flush (``torch.set_flush_denormal`` returns False), the block runs unchanged.
    """
    before = subnormals_flushed()
    changed = enabled != before and torch.set_flush_denormal(enabled)
    try:
        yield
    finally:
        if changed:
            torch.set_flush_denormal(before)
