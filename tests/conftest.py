"""Shared fixtures: tiny models whose log p(x) can be integrated exactly."""

from __future__ import annotations

import pytest
import torch

import iwae


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
        for layer in model.modules():
            if isinstance(layer, iwae.model.GaussianLayer):
                layer.log_std.weight.mul_(0.2)
                layer.log_std.bias.fill_(-0.3)
    return model


@pytest.fixture
def tiny():
    return tiny_model


def all_binary(x_dim: int) -> torch.Tensor:
    """All 2^x_dim binary vectors, (2^x_dim, x_dim) float64."""
    idx = torch.arange(2**x_dim)
    return ((idx[:, None] >> torch.arange(x_dim)) & 1).double()
