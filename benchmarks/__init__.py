"""Benchmarks for iwae: ``python -m benchmarks.bench`` (see benchmarks/bench.py)."""
