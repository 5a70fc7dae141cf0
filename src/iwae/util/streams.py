"""Every random stream of the library, derived from a seed and a purpose path, in the spirit of JAX's ``fold_in``.

A run's generators are all :func:`generator` ``(seed, *purpose)``: the initial weights, the shuffling, the training
noise, each evaluation split's binarization and importance samples, each block of a sharded evaluation, the
sampled figure. Scheme 2 (:data:`SCHEME`, every new run) hashes the seed and the purpose path together (BLAKE2b),
so no two purposes, seeds, blocks or runs share a stream (``tests/test_streams.py`` enumerates every purpose for
seeds 0-999 and finds no collision). Scheme 1 is the seed formulas of runs made before it, kept so that their
folders (``config.json`` without ``streams``) resume and evaluate to exactly their old numbers: with it, seed 0's
training noise (seed + 1) was the train split's binarization (10,000 x seed + 1), and the test split's
binarization was the stream that initialised the weights.

Purposes (:data:`PURPOSES`; ``split`` is train, validation or test):

- ``("init",)`` the initial weights; ``("shuffle",)`` the permutation of each pass; ``("noise",)`` the training
  minibatches' binarization and the reparameterisation noise, on the model's device;
- ``("eval", split, "binarize" | "nll" | "active" | "ais")``, ``("eval", "test", "curve")``: the evaluation
  streams of :mod:`iwae.runs.evaluate_run` (``ais``: the chains of ``iwae ais``); ``(..., "block", b)`` the block
  ``b`` of one of them in a sharded evaluation;
- ``("samples",)`` the figure of samples; ``("snr", "data" | "base")`` the gradient-SNR measurement's
  minibatch and the base seed of its noise, ``("snr", "k", k)`` the noise at k under that base seed;
  ``("posteriors",)`` the posterior figure's examples and samples.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a generator is made: the command line parses without it
    import torch

__all__ = ["SCHEME", "SCHEMES", "PURPOSES", "seed_of", "generator", "seeded_global"]

SCHEME = 2  # the scheme of every new run
SCHEMES = (1, 2)

# The purposes of the library, without their block numbers: what the collision test enumerates.
PURPOSES: tuple[tuple[str, ...], ...] = (
    ("init",), ("shuffle",), ("noise",), ("samples",), ("snr", "data"), ("snr", "base"), ("posteriors",),
    *(("eval", split, p) for split in ("test", "train", "validation") for p in ("binarize", "nll", "active", "ais")),
    ("eval", "test", "curve"), ("probe",), ("global",),
)  # fmt: skip

# Scheme 1: the salts of the evaluation streams (seed 10,000 x seed + salt) of runs made before scheme 2.
_SALTS_V1 = {
    ("test", "binarize"): 0, ("train", "binarize"): 1, ("validation", "binarize"): 2,
    ("test", "nll"): 99, ("train", "nll"): 98, ("validation", "nll"): 97,
    ("test", "active"): 7, ("train", "active"): 7, ("validation", "active"): 7, ("test", "curve"): 96,
    # annealed importance sampling came after scheme 2: salts clear of the others, for old runs scored with it
    ("test", "ais"): 95, ("train", "ais"): 94, ("validation", "ais"): 93,
}  # fmt: skip


def seed_of(seed: int, *purpose: str | int, scheme: int = SCHEME) -> int:
    """The seed (0 <= s < 2^63) of the stream of ``purpose`` under ``seed`` (see the module docstring)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"a seed must be an integer, got {seed!r}")
    if scheme == 1:
        return _seed_v1(seed, purpose)
    if scheme != 2:
        raise ValueError(f"unknown random-stream scheme {scheme!r}; choose one of {', '.join(map(str, SCHEMES))}")
    key = json.dumps(["iwae", seed, *purpose]).encode()  # a list, so ("a", "b") and ("a b",) never meet
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def generator(
    seed: int, *purpose: str | int, device: torch.device | str = "cpu", scheme: int = SCHEME
) -> torch.Generator:
    """A fresh generator on ``device`` for the stream of ``purpose`` under ``seed``."""
    import torch

    return torch.Generator(device=device).manual_seed(seed_of(seed, *purpose, scheme=scheme))


@contextmanager
def seeded_global(seed: int, *purpose: str | int, scheme: int = SCHEME) -> Iterator[None]:
    """torch's global generators (the CPU's, and every CUDA device's once CUDA has started) seeded with the stream of
    ``purpose`` inside the block, and put back as they were after it: for code of one's own that draws from the
    global generator (a model's initial weights, :mod:`iwae.runs.own_model`)."""
    import torch

    value = seed_of(seed, *purpose, scheme=scheme)
    cuda = torch.cuda.is_initialized()  # (CUDA is not started for this: a CPU-built model never touches it)
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if cuda else []):
        torch.random.default_generator.manual_seed(value)
        if cuda:
            torch.cuda.manual_seed_all(value)
        yield


def _seed_v1(seed: int, purpose: tuple[str | int, ...]) -> int:
    """Scheme 1: the formulas that runs made before scheme 2 were trained and evaluated with."""
    head, rest = purpose[:1], purpose[1:]
    if head == ("noise",) and not rest:
        return seed + 1
    if head in {("init",), ("shuffle",), ("samples",), ("posteriors",)} and not rest:
        return seed
    if head == ("snr",) and rest in {("data",), ("base",)}:
        return seed
    if head == ("snr",) and len(rest) == 2 and rest[0] == "k":
        return seed + int(rest[1])
    if head == ("eval",) and tuple(rest[:2]) in _SALTS_V1:
        base = 10_000 * seed + _SALTS_V1[tuple(rest[:2])]
        if len(rest) == 2:
            return base
        if len(rest) == 4 and rest[2] == "block":
            return base * 2**20 + int(rest[3])
    raise ValueError(f"no stream {purpose!r} in random-stream scheme 1")
