"""Exact log p(x) of small models by numerical integration over a 1-D or 2-D latent space (float64)."""

from __future__ import annotations

import torch

import iwae
from iwae.models._ops import gaussian_terms


def _log_px_given_h1(model: iwae.IWAE, h1: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | h1) for a grid of h1 (G, d1) and data x (B, D) -> (G, B), using torch.distributions."""
    head = model.decoder[-1]
    if model.likelihood == "bernoulli":
        dist = torch.distributions.Bernoulli(logits=head(h1)[:, None, :])
    else:
        mean, log_std = head(h1)
        dist = torch.distributions.Normal(mean[:, None, :], log_std.exp()[:, None, :])
    return dist.log_prob(x[None]).sum(-1)


@torch.no_grad()
def exact_log_px(model: iwae.IWAE, x: torch.Tensor, half_width: float = 9.0, n: int = 1201) -> torch.Tensor:
    """log p(x) = log int p(x | h) p(h) dh on a uniform grid (trapezoid rule), for latent_dims (1,) or (1, 1)."""
    grid = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    dh = grid[1] - grid[0]
    trap = torch.ones(n, dtype=torch.float64)
    trap[0] = trap[-1] = 0.5
    log_trap = trap.log() + dh.log()
    std_normal = torch.distributions.Normal(0.0, 1.0)
    if model.latent_dims == [1]:
        log_joint = _log_px_given_h1(model, grid[:, None], x) + std_normal.log_prob(grid)[:, None]
        return torch.logsumexp(log_joint + log_trap[:, None], 0)
    if model.latent_dims == [1, 1]:
        # p(x) = int int p(x | h1) p(h1 | h2) p(h2) dh1 dh2
        mean, log_std = model.decoder[0](grid[:, None])  # p(h1 | h2) for each h2 on the grid: (G2, 1)
        log_p_h1_h2 = gaussian_terms(grid[None, :, None], mean[:, None, :], log_std[:, None, :]).sum(-1)
        inner = log_p_h1_h2 + std_normal.log_prob(grid)[:, None] + log_trap[:, None] + log_trap[None, :]
        log_p_h1 = torch.logsumexp(inner, 0)  # marginal of h1 on its grid, (G1,)
        log_joint = _log_px_given_h1(model, grid[:, None], x) + log_p_h1[:, None]
        return torch.logsumexp(log_joint, 0)
    raise ValueError(f"exact integration supports latent_dims (1,) or (1, 1), got {model.latent_dims}")
