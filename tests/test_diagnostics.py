"""The importance weights' diagnostics: the Pareto k-hat of their tail (against known shapes, a maximum-likelihood
fit, and importance sampling whose tail is known in closed form), the effective sample size, and the L_k they come
with (the same draws as log_likelihood's)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import binary_batch, tiny_model
from scipy import stats
from test_evaluate import BankModel

import iwae
from iwae.analysis.diagnostics import _gpd_shape, khat_threshold, pareto_khat, tail_size, weight_diagnostics


@pytest.mark.parametrize("shape", [-0.4, 0.3, 1.2])
def test_the_generalized_pareto_fit_finds_the_shape_and_agrees_with_maximum_likelihood(shape):
    rng = np.random.default_rng(1)
    x = np.sort(stats.genpareto(c=shape).rvs(size=(2000, 6), random_state=rng), axis=0)
    fit = _gpd_shape(torch.from_numpy(x))
    mle = torch.tensor([stats.genpareto.fit(x[:, j], floc=0)[0] for j in range(x.shape[1])], dtype=torch.float64)
    # the prior's 10 pseudo-observations at 0.5 move 2,000 observations' estimate by (0.5 - shape) / 201
    torch.testing.assert_close(fit, mle + (0.5 - mle) * 10 / 2010, atol=0.012, rtol=0)
    assert abs(fit.mean().item() - shape) < 3 * 0.04  # (the estimate's spread at n = 2,000 is about 0.03-0.04)


# k-hat of fixed log-weights (quantiles, no random draws) by an independent implementation: ArviZ 0.23.4's
# ``psislw(log_w, reff=1.0)`` (Vehtari et al.'s PSIS, with Zhang & Stephens's fit and the same prior), small k where
# the prior and the grid matter.
ARVIZ_KHAT = {
    ("pareto0.3", 50): 0.38455542923976893, ("pareto0.9", 50): 0.6184941127964734,
    ("lognormal2", 50): 0.5852048641602117, ("uniform", 50): -0.14362888725869521,
    ("pareto0.3", 200): 0.34903697147398577, ("pareto0.9", 200): 0.7876963633073639,
    ("lognormal2", 200): 0.7067509867945617, ("uniform", 200): -0.6360133060563604,
    ("pareto0.3", 1000): 0.3235606438260616, ("pareto0.9", 1000): 0.8442664334030596,
    ("lognormal2", 1000): 0.6664972902740932, ("uniform", 1000): -0.8192112494404742,
}  # fmt: skip


@pytest.mark.parametrize(("name", "k"), list(ARVIZ_KHAT))
def test_khat_of_fixed_weights_is_an_independent_implementations(name, k):
    u = (np.arange(1, k + 1) - 0.5) / k  # the quantiles of the weights' distribution
    log_w = {"pareto0.3": 0.3 * -np.log(u), "pareto0.9": 0.9 * -np.log(u), "lognormal2": 2.0 * stats.norm.ppf(u),
             "uniform": np.log(u)}[name]  # fmt: skip
    assert pareto_khat(torch.from_numpy(log_w)[:, None]).item() == pytest.approx(ARVIZ_KHAT[name, k], abs=1e-12)


def test_khat_of_pareto_weights_is_their_tail_shape_whatever_their_scale_and_order():
    """Weights w = U^(-xi) have a Pareto tail of shape xi exactly."""
    u = torch.rand(20_000, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for xi in (0.3, 0.8):
        log_w = -xi * torch.log(u)
        khat = pareto_khat(log_w)
        assert abs(khat.mean().item() - xi) < 0.03 and khat.std().item() < 0.1
        torch.testing.assert_close(pareto_khat(log_w - 1234.5), khat, atol=1e-9, rtol=0)
        torch.testing.assert_close(pareto_khat(log_w.flip(0)), khat, atol=0, rtol=0)


@pytest.mark.parametrize(("variance", "shape"), [(0.4, 0.6), (0.8, 0.2)])
def test_khat_of_gaussian_importance_sampling_with_a_narrow_proposal_is_one_minus_its_variance(variance, shape):
    """Target N(0, 1), proposal N(0, s^2), s < 1: w = exp(h^2 (1/s^2 - 1) / 2) up to a constant, whose tail
    P(w > t) falls as t^(-1/(1 - s^2)): shape 1 - s^2 (a finite variance exactly where s^2 > 1/2). A wider proposal
    bounds the weights: a negative shape."""
    gen = torch.Generator().manual_seed(2)

    class Gaussian:  # the log-weights protocol: one "image" per column, drawn afresh at each call
        def __init__(self, s2: float) -> None:
            self.s2 = s2

        def log_weights(self, x: torch.Tensor, k: int) -> torch.Tensor:
            h = torch.randn(k, x.shape[0], dtype=torch.float64, generator=gen) * math.sqrt(self.s2)
            return -0.5 * h**2 + 0.5 * h**2 / self.s2 + 0.5 * math.log(self.s2)

    x = torch.zeros(200, 1, dtype=torch.float64)
    d = weight_diagnostics(Gaussian(variance), x, k=20_000, chunk_size=200_000)
    assert abs(d.khat.mean().item() - shape) < 0.06
    assert (weight_diagnostics(Gaussian(2.0), x, k=5000).khat < 0).all()
    # L_k estimates log p(x) = log of the normalising constant 1 of N(0, 1)'s density ratio: 0
    assert abs(d.ll.mean().item()) < 0.05


@pytest.mark.parametrize("chunk", [7, 300, 10_000])
def test_the_diagnostics_of_a_bank_of_weights_are_those_of_the_whole_bank_whatever_the_chunks(chunk):
    bank = torch.randn(3000, 3, dtype=torch.float64) * torch.tensor([0.1, 2.0, 6.0])
    d = weight_diagnostics(BankModel(bank), torch.zeros(3, 2, dtype=torch.float64), k=3000, chunk_size=chunk)
    torch.testing.assert_close(d.khat, pareto_khat(bank), atol=0, rtol=0)  # the same tail, kept as it streamed
    w = torch.exp(bank - bank.max(0).values)
    torch.testing.assert_close(d.ess, w.sum(0) ** 2 / (w**2).sum(0), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(d.ll, iwae.bounds.iwae(bank))
    assert d.ess[0] > 2900 and d.ess[2] < 30 and d.khat[0] < d.khat[1] < d.khat[2]


def test_its_estimates_are_log_likelihoods_on_the_same_draws():
    model = tiny_model(x_dim=6, latent_dims=(2,))
    x = binary_batch(9, 6)
    d = weight_diagnostics(model, x, k=400, chunk_size=500, generator=torch.Generator().manual_seed(3))
    ll, se = iwae.log_likelihood(model, x, k=400, chunk_size=500, generator=torch.Generator().manual_seed(3),
                                 return_stderr=True)  # fmt: skip
    assert torch.equal(d.ll, ll) and torch.equal(d.stderr, se)
    torch.testing.assert_close(d.ess, 400 / (1 + 400 * se.double() ** 2))


def test_one_weight_beyond_float64s_range_of_the_others_is_an_infinitely_heavy_tail_not_a_light_one():
    """Where the other weights vanish beside the largest (more than ~708 nats below it), too few remain to fit:
    k-hat is +inf, whether subnormal floats are flushed (as weight_diagnostics does) or not."""
    for d in (700.0, 720.0, 745.0, 800.0, 5000.0):
        log_w = torch.randn(5000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        log_w[0] = d
        khat = pareto_khat(log_w).item()
        assert khat > 3, (d, khat)
        diagnosed = weight_diagnostics(BankModel(log_w), torch.zeros(1, 2, dtype=torch.float64), k=5000).khat.item()
        assert diagnosed == khat, (d, diagnosed, khat)
    assert pareto_khat(log_w).item() == math.inf


def test_tied_weights_give_a_finite_khat_where_the_grid_meets_theta_zero():
    """k = 1,200: a tail of 104 (a grid of 40 points, whose third is theta = 0 when the lower quartile is the
    largest exceedance): 104 equal weights above the rest."""
    log_w = torch.zeros(1200, 1, dtype=torch.float64)
    log_w[:104] = 1.0
    assert torch.isfinite(pareto_khat(log_w)).all()


def test_a_flat_tail_and_bad_input():
    assert pareto_khat(torch.zeros(100, 2)).eq(-math.inf).all()  # equal weights: perfect importance sampling
    with pytest.raises(ValueError, match=r"log_w holds NaN or \+inf"):
        pareto_khat(torch.tensor([[math.nan]] * 20))
    with pytest.raises(ValueError, match="a column of log_w is all -inf"):
        pareto_khat(torch.full((20, 1), -math.inf))
    empty = weight_diagnostics(BankModel(torch.zeros(50, 0)), torch.zeros(0, 2), k=50)
    assert all(t.shape == (0,) for t in empty)
    with pytest.raises(ValueError, match=r"log_w must have shape \(k, batch\), got \(100,\)"):
        pareto_khat(torch.zeros(100))
    with pytest.raises(ValueError, match="a tail needs at least 10 weights to fit, got k = 9"):
        pareto_khat(torch.zeros(9, 1))
    with pytest.raises(ValueError, match="the weights' tail needs k >= 10 importance samples, got k = 5"):
        weight_diagnostics(BankModel(torch.zeros(5, 1)), torch.zeros(1, 2), k=5)
    assert (tail_size(5000), tail_size(101), tail_size(100), tail_size(10)) == (213, 21, 20, 5)
    assert khat_threshold(5000) == 0.7 and khat_threshold(100) == pytest.approx(0.5)


def test_iwae_diagnose_scores_a_run_as_its_evaluation_did_and_writes_its_tail_diagnostics(tiny_run, capsys):
    from iwae.cli import main

    config = iwae.load_run(tiny_run).config
    assert main(["diagnose", str(tiny_run), "--n", str(config.eval_n), "--quiet"]) == 0
    out = capsys.readouterr().out
    name = f"diagnostics-test-k{config.eval_k}-n{config.eval_n}"
    assert "test NLL" in out and "Pareto k-hat of the weights: median" in out and f"{name}.json" in out
    # the run's own evaluation: the same images and samples, so its recorded per-image L_k exactly
    assert "the same L_k as the run's test_ll.json" in out
    result = json.loads((tiny_run / f"{name}.json").read_text())
    assert result["recorded"] == 0.0 and len(result["khat"]) == len(result["ess"]) == config.eval_n
    assert result["passes"] == pytest.approx(json.loads((tiny_run / "metrics.json").read_text())["passes"])
    assert result["code"]["version"] == iwae.__version__
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert result["nll"] == pytest.approx(metrics["test_nll"], abs=1e-6)
    assert (tiny_run / f"{name}.png").stat().st_size > 0
    assert main(["diagnose", str(tiny_run), "--n", "7", "--k", "30", "--quiet"]) == 0
    assert "recorded" not in capsys.readouterr().out  # other images, other samples: nothing to check against
    assert main(["diagnose", str(tiny_run), "--k", "9", "--quiet"]) == 1
    assert "needs k >= 10 importance samples, got k = 9\n" in capsys.readouterr().err
    from iwae.runs.rundir import clear_results

    clear_results(tiny_run)  # a run that starts over loses its diagnoses with its evaluation
    assert not list(tiny_run.glob("diagnostics-*"))
