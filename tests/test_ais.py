"""iwae.ais: annealed importance sampling of log p(x) against exact log p(x) by integration, and against L_k."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import binary_batch, tiny_model
from exact import exact_log_px

import iwae
from iwae.ais import ais_log_likelihood, sigmoid_schedule


def test_the_schedule_runs_from_zero_to_one_and_rises():
    betas = sigmoid_schedule(50)
    assert betas[0] == 0 and betas[-1] == 1 and len(betas) == 51 and bool((betas.diff() > 0).all())
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        sigmoid_schedule(0)


def test_one_step_is_l_k_on_the_same_noise():
    """T = 1: the weight is w(eps_0) itself, so the estimate is L_C on the chains' first noise."""
    model, x = tiny_model(x_dim=4, latent_dims=(2,)), binary_batch(5, 4)
    got = ais_log_likelihood(model, x, steps=1, chains=7, generator=torch.Generator().manual_seed(3))
    log_w = model.forward_samples(x, 7, generator=torch.Generator().manual_seed(3)).log_w
    torch.testing.assert_close(got, torch.logsumexp(log_w, 0) - math.log(7), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("latent_dims", "adapt"),
    [((1,), True), pytest.param((1, 1), True, marks=pytest.mark.slow),
     pytest.param((1,), False, marks=pytest.mark.slow), pytest.param((1, 1), False, marks=pytest.mark.slow)],
)  # fmt: skip
def test_annealing_reaches_the_exact_log_likelihood_where_l_k_falls_short(latent_dims, adapt):
    """On models whose q is far from the posterior (one and two latent layers), 100 annealing steps of 1,000
    chains come within 0.15 nats of log p(x) on every example (with the step size adapted: within 0.03 to 0.08
    nats where this was written), while L_1000 on the chains' starting noise is 0.7 to 2 nats short on average."""
    model, x = tiny_model(x_dim=6, latent_dims=latent_dims, seed=1, scale=2.0), binary_batch(6, 6, seed=2)
    exact = exact_log_px(model, x)
    chains, gen = 1000, torch.Generator().manual_seed(0)
    ais = ais_log_likelihood(model, x, steps=100, chains=chains, adapt=adapt, step_size=0.3, generator=gen)
    l_k = ais_log_likelihood(model, x, steps=1, chains=chains, generator=torch.Generator().manual_seed(0))
    assert (ais - exact).abs().max() < 0.15, ais - exact
    assert (exact - l_k).mean() > 5 * (exact - ais).abs().mean()  # the test has power: L_k is well below


def test_a_model_of_ones_own_is_annealed_through_its_noise():
    """GaussianLatentModel over the same networks as the paper model: the same estimate on the same draws."""
    paper = iwae.IWAE(x_dim=6, latent_dims=[2], q_hidden=[[5]], p_hidden=[[5]])
    own = iwae.GaussianLatentModel(paper.encoder[0], paper.decoder[-1], latent_dim=2, x_dim=6)
    x = binary_batch(3, 6).float()
    a = ais_log_likelihood(paper, x, steps=5, chains=4, generator=torch.Generator().manual_seed(0))
    b = ais_log_likelihood(own, x, steps=5, chains=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)


def test_bad_settings_are_named():
    model, x = tiny_model(), binary_batch(2, 3)
    with pytest.raises(ValueError, match="steps, chains and leapfrog must be positive integers"):
        ais_log_likelihood(model, x, chains=0)
    with pytest.raises(ValueError, match="step_size must be positive"):
        ais_log_likelihood(model, x, step_size=0.0)
    with pytest.raises(ValueError, match="x holds values from 0 to 255"):
        ais_log_likelihood(model, x * 255)


def test_iwae_ais_scores_a_saved_run_and_says_so(tiny_run, capsys):
    from conftest import read_json

    from iwae.cli import main

    assert main(["ais", str(tiny_run), "--steps", "3", "--chains", "2", "--n", "4", "--quiet"]) == 0
    result = read_json(tiny_run / "ais-test-s3-c2-n4.json")
    assert (result["steps"], result["chains"], result["n"], len(result["ll"])) == (3, 2, 4, 4)
    assert result["nll"] == pytest.approx(-sum(result["ll"]) / 4)
    assert f"test NLL {result['nll']:.2f} +- {result['nll_sem']:.2f} nats (AIS, 3 steps x 2 chains, over 4 images" in (
        capsys.readouterr().out)  # fmt: skip
    assert main(["ais", str(tiny_run), "--steps", "3", "--chains", "2", "--n", "4", "--quiet"]) == 0
    assert read_json(tiny_run / "ais-test-s3-c2-n4.json")["ll"] == result["ll"]  # its own stream: the same again
