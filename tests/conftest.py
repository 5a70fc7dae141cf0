"""Shared fixtures: tiny models whose log p(x) can be integrated exactly, the data directory, tiny training runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import iwae

DATA_DIR = os.environ.get("IWAE_DATA_DIR")
NO_DATA = "IWAE_DATA_DIR is not set: point it at a data directory holding mnist/ (CI: ../shared/data)"

# A two-stage run of the smallest model on a sliver of MNIST: seconds to train, yet every part of a run folder.
TINY = dict(
    dataset="mnist", layers=1, k=3, stages=2, pass_scale=0.02, eval_k=20, eval_n=50, curve_k=20, curve_n=30,
    checkpoint_minutes=0.0,
)  # fmt: skip


def tiny_model(
    x_dim: int = 3, latent_dims=(1,), likelihood: str = "bernoulli", seed: int = 0, scale: float = 1.5
) -> iwae.IWAE:
    """A small float64 model with weights large enough that q differs from the true posterior."""
    torch.manual_seed(seed)
    n = len(latent_dims)
    model = iwae.IWAE(x_dim, list(latent_dims), [[4]] * n, [[4]] * n, likelihood).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn_like(p) / max(1, p.shape[-1]) ** 0.5)
        # standard deviations near 0.5-1: importance sampling from q converges in reachable k, and the
        # latent mass stays inside the integration grid of tests/exact.py
        for name, p in model.named_parameters():
            if ".log_std.weight" in name:
                p.mul_(0.2)
            elif ".log_std.bias" in name:
                p.fill_(-0.3)
    return model


@pytest.fixture
def tiny():
    return tiny_model


def all_binary(x_dim: int) -> torch.Tensor:
    """All 2^x_dim binary vectors, (2^x_dim, x_dim) float64."""
    idx = torch.arange(2**x_dim)
    return ((idx[:, None] >> torch.arange(x_dim)) & 1).double()


def binary_batch(batch: int, x_dim: int, seed: int = 0) -> torch.Tensor:
    """(batch, x_dim) float64 fair coin flips, the same for a given seed."""
    half = torch.full((batch, x_dim), 0.5, dtype=torch.float64)
    return torch.bernoulli(half, generator=torch.Generator().manual_seed(seed))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="session")
def data_dir() -> str:
    """``$IWAE_DATA_DIR``; a test that asks for it is skipped, with the reason, where it is unset."""
    if not DATA_DIR:
        pytest.skip(NO_DATA)
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny_config(data_dir):
    """The TINY run's TrainConfig on the data directory."""
    from iwae.runs.config import TrainConfig

    return TrainConfig(data_dir=data_dir, **TINY)


@pytest.fixture(scope="session")
def _trained_tiny_run(tiny_config, tmp_path_factory) -> Path:
    """The TINY run, trained once per session and evaluated (``iwae train``'s result); never handed out itself."""
    from iwae.runs.train import train_and_evaluate

    run = tmp_path_factory.mktemp("tiny") / "run"
    train_and_evaluate(run, tiny_config, progress=False)
    return run


@pytest.fixture
def tiny_run(_trained_tiny_run, tmp_path) -> Path:
    """A copy of the trained and evaluated TINY run in this test's tmp_path, the test's own to change."""
    return Path(shutil.copytree(_trained_tiny_run, tmp_path / "tiny-run"))


@pytest.fixture
def registry_as_found():
    """What a test registers (by naming a bound or an estimator MODULE:NAME, or by hand) is taken out after it:
    other tests list the package's bounds and estimators."""
    from iwae.objectives import names, registry

    kept = dict(registry._BOUNDS), dict(registry._ESTIMATORS), dict(names.BOUND_PARAMS)
    yield
    for table, before in zip((registry._BOUNDS, registry._ESTIMATORS, names.BOUND_PARAMS), kept):
        table.clear()
        table.update(before)
