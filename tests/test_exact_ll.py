"""benchmarks.exact_ll: log p(x) of a 2-D latent MNIST-sized model by integration, against L_k (Theorem 1)."""

from __future__ import annotations

import pytest
import torch

import iwae
from benchmarks.exact_ll import exact_log_px, grid_check


@pytest.fixture(scope="module")
def model_and_images() -> tuple[iwae.IWAE, torch.Tensor]:
    """An untrained model with the paper's hidden sizes and a 2-D latent layer, and 5 random binary images."""
    model = iwae.IWAE.from_latent_dims([2], 784, torch.full((784,), 0.13), generator=torch.Generator().manual_seed(0))
    x = torch.bernoulli(torch.full((5, 784), 0.13), generator=torch.Generator().manual_seed(1))
    return model, x


def test_grid_integral_has_converged(model_and_images):
    model, x = model_and_images
    log_px, check = grid_check(model, x, half_width=6.0, n=101)
    assert check["max_change_finer"] < 1e-6 and check["max_change_wider"] < 1e-6
    torch.testing.assert_close(log_px, exact_log_px(model, x, 6.0, 201), atol=0, rtol=0)


def test_bounds_rise_to_the_exact_log_likelihood(model_and_images):
    """L_5000 within 0.1 nats of log p(x) on every image; L_1 <= L_50 <= log p(x) on average (Theorem 1)."""
    model, x = model_and_images
    exact = exact_log_px(model, x, 6.0, 101).float()
    gen = torch.Generator().manual_seed(2)
    l1, l50, l5000 = (iwae.log_likelihood(model, x, k, generator=gen) for k in (1, 50, 5000))
    assert (l5000 - exact).abs().max() < 0.1
    assert l1.mean() <= l50.mean() <= exact.mean() + 0.01


def test_only_two_dimensional_bernoulli_models_are_integrated():
    with pytest.raises(ValueError, match="2 latent units"):
        exact_log_px(iwae.IWAE.paper(), torch.zeros(1, 784), 6.0, 11)
