"""Bounds against exact log p(x) on tiny float64 models (numerical integration over a 1-D or 2-D latent)."""

from __future__ import annotations

import pytest
import torch
from conftest import all_binary, tiny_model
from exact import exact_log_px

import iwae


@pytest.mark.parametrize("latent_dims", [(1,), (1, 1)])
@pytest.mark.parametrize("seed", [0, 1])
def test_exact_probabilities_sum_to_one(latent_dims, seed):
    model = tiny_model(latent_dims=latent_dims, seed=seed)
    x = all_binary(3)
    total = exact_log_px(model, x).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-6)


# (q is a poor proposal for many tiny random models: these seeds give an effective sample size of
# hundreds or more at k = 1e5, so L_k visibly reaches log p(x) in a test-sized k.)
@pytest.mark.parametrize(("latent_dims", "seed", "scale"), [((1,), 1, 1.5), ((1, 1), 2, 0.8)])
def test_bound_below_exact_log_px_and_converges(latent_dims, seed, scale):
    model = tiny_model(latent_dims=latent_dims, seed=seed, scale=scale)
    x = all_binary(3)
    log_px = exact_log_px(model, x)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k in (1, 5, 50):
            # mean over 400 independent estimates of L_k: below log p(x) beyond Monte Carlo error
            lk = torch.stack([iwae.bounds.iwae(model.forward_samples(x, k, generator=gen).log_w) for _ in range(400)])
            se = lk.std(0) / 20
            assert (lk.mean(0) <= log_px + 3 * se + 1e-9).all()
        # L_k -> log p(x): at k = 200,000 the gap is tiny for every x
        ll = iwae.log_likelihood(model, x, k=200_000, generator=gen)
        assert torch.allclose(ll, log_px, atol=0.04)
        # and the gap at k = 1 (the ELBO) is positive everywhere and large somewhere: q is not the posterior
        elbo = iwae.bounds.elbo(model.forward_samples(x, 20_000, generator=gen).log_w)
        assert (log_px - elbo).min() > 0.01 and (log_px - elbo).max() > 0.3


def test_bound_rises_with_k_theorem1():
    """Theorem 1: E[L_k] is non-decreasing in k, and strictly below log p(x) for a q that is not the posterior."""
    model = tiny_model(latent_dims=(1,), seed=2)
    x = all_binary(3)
    log_px = exact_log_px(model, x)
    gen = torch.Generator().manual_seed(1)
    means = []
    with torch.no_grad():
        for k in (1, 2, 5, 20, 100):
            lk = torch.stack([iwae.bounds.iwae(model.forward_samples(x, k, generator=gen).log_w) for _ in range(2000)])
            means.append(lk.mean(0))
    means = torch.stack(means)  # (n_k, 8)
    assert (means[1:] - means[:-1] > -0.01).all()
    assert (means[-1] - means[0] > 0.02).all()  # a real rise, not noise
    assert (means[-1] < log_px).all()


def test_gaussian_visible_bound_converges_to_exact():
    model = tiny_model(x_dim=2, latent_dims=(1,), likelihood="gaussian", seed=3, scale=1.0)
    x = torch.tensor([[0.3, -0.5], [1.2, 0.4], [-2.0, 0.0]], dtype=torch.float64)
    log_px = exact_log_px(model, x)
    gen = torch.Generator().manual_seed(2)
    ll = iwae.log_likelihood(model, x, k=200_000, generator=gen)
    assert torch.allclose(ll, log_px, atol=0.01)


def test_log_weights_match_torch_distributions():
    """log w from the model equals log p(x, h) - log q(h | x) computed independently with torch.distributions."""
    model = tiny_model(x_dim=4, latent_dims=(2, 3), seed=4)
    x = all_binary(4)[:5]
    gen = torch.Generator().manual_seed(3)
    out = model.forward_samples(x, 7, generator=gen)
    h1, h2 = out.samples
    N = torch.distributions.Normal
    m1, s1 = model.encoder[0](x)
    m2, s2 = model.encoder[1](h1)
    log_q = N(m1, s1.exp()).log_prob(h1).sum(-1) + N(m2, s2.exp()).log_prob(h2).sum(-1)
    pm, ps = model.decoder[0](h2)
    log_p = (
        N(0.0, 1.0).log_prob(h2).sum(-1)
        + N(pm, ps.exp()).log_prob(h1).sum(-1)
        + torch.distributions.Bernoulli(logits=model.decoder[1](h1)).log_prob(x).sum(-1)
    )
    torch.testing.assert_close(out.log_w, log_p - log_q)
    # stop_q_grad changes gradients, not values
    same = model.forward_samples(x, 7, noise=out.noise, stop_q_grad=True).log_w
    torch.testing.assert_close(same, out.log_w)
