"""iwae.ais: annealed importance sampling of log p(x) against exact log p(x) by integration, and against L_k;
bidirectional Monte Carlo on data simulated from the model, and the simulation itself."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import binary_batch, tiny_model
from exact import _log_px_given_h1, exact_log_px

import iwae
import iwae.ais as ais
from iwae.ais import ANNEAL_FROM, _hmc, _log_w_and_grad, ais_log_likelihood, anneal_starts, bdmc, sigmoid_schedule
from iwae.models import _ops
from iwae.models.model import LogWeights, Simulated


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
    with pytest.raises(ValueError, match="steps, chains, leapfrog and block must be positive integers"):
        ais_log_likelihood(model, x, chains=0)
    with pytest.raises(ValueError, match="step_size must be positive and target_accept in"):
        ais_log_likelihood(model, x, step_size=0.0)
    with pytest.raises(ValueError, match="pilots must be a positive integer when the step size adapts"):
        ais_log_likelihood(model, x, pilots=0)
    with pytest.raises(RuntimeError, match="outside torch.inference_mode"), torch.inference_mode():
        ais_log_likelihood(model, x)
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
    assert main(["ais", str(tiny_run), "--steps", "3", "--chains", "2", "--n", "4", "--from", "prior", "--quiet"]) == 0
    prior = read_json(tiny_run / "ais-test-s3-c2-n4-prior.json")  # a file of its own, beside the one from q
    assert prior["anneal_from"] == "prior" and prior["ll"] != result["ll"] and len(prior["ll"]) == 4
    assert "(AIS from the prior, 3 steps x 2 chains, over 4 images" in capsys.readouterr().out
    assert main(["ais", str(tiny_run), "--steps", "3", "--chains", "2", "--n", "4", "--from", "both", "--quiet"]) == 0
    both = read_json(tiny_run / "ais-test-s3-c2-n4-both.json")
    assert both["anneal_from"] == "both" and len(both["ll"]) == 4 and both["ll"] not in (result["ll"], prior["ll"])
    assert "(AIS from q and the prior, 3 steps x 2 chains, over 4 images" in capsys.readouterr().out


def test_a_stopped_iwae_ais_goes_on_where_it_was_to_the_same_numbers(tiny_run, tmp_path, monkeypatch, capsys):
    """Blocks of 2 of 5 images, the progress saved after each: stopped after its first block, run again, it anneals
    only the rest, and writes the numbers of a run that never stopped; the progress file goes once they are written."""
    import shutil

    from conftest import read_json

    from iwae.analysis import ais_run as module
    from iwae.runs import eval_progress

    monkeypatch.setattr(module, "BLOCK", 2)
    monkeypatch.setattr(eval_progress, "SAVE_EVERY", 0.0)
    other = shutil.copytree(tiny_run, tmp_path / "never-stopped")
    expected = module.ais_run(other, steps=3, chains=2, n=5)
    scored, iterate = [], module.iter_ais_log_likelihood

    def stopping(*args, **kwargs):
        for first, ll in iterate(*args, **kwargs):
            if len(scored) == 1:
                raise KeyboardInterrupt
            scored.append(first)
            yield first, ll

    monkeypatch.setattr(module, "iter_ais_log_likelihood", stopping)
    with pytest.raises(KeyboardInterrupt):
        module.ais_run(tiny_run, steps=3, chains=2, n=5)
    progress = tiny_run / f"ais-test-s3-c2-n5{eval_progress.PROGRESS_SUFFIX}"
    assert progress.is_file() and not (tiny_run / "ais-test-s3-c2-n5.json").exists()
    monkeypatch.setattr(module, "iter_ais_log_likelihood", iterate)
    result = module.ais_run(tiny_run, steps=3, chains=2, n=5)
    assert "continuing from 2 of 5 images scored" in capsys.readouterr().err
    assert result["ll"] == expected["ll"] and read_json(tiny_run / "ais-test-s3-c2-n5.json")["ll"] == expected["ll"]
    assert not progress.exists()


class GaussianWeights:
    """A stub whose log-weight is -a |eps|^2 / 2 in d noise dimensions: the target N(eps) w(eps)^beta is
    N(0, 1 / (1 + a beta)) in each dimension, and p(x) = (1 + a)^(-d/2) exactly, whatever x is."""

    def __init__(self, a: float = 3.0, d: int = 4) -> None:
        self.a, self.d = a, d

    def draw_noise(self, k, batch, generator=None):
        return [torch.randn(k, batch, self.d, dtype=torch.float64, generator=generator)]

    def forward_samples(self, x, k, noise):
        return LogWeights(-0.5 * self.a * noise[0].square().sum(-1), [noise[0]], noise)

    def simulate(self, n, generator=None):
        """x (any: p(x) does not depend on it) with exact posterior draws, N(0, 1 / (1 + a)) in each dimension."""
        eps = torch.randn(1, n, self.d, dtype=torch.float64, generator=generator) / (1 + self.a) ** 0.5
        return Simulated(torch.zeros(n, 1, dtype=torch.float64), [eps[0]], [eps])


def test_one_hmc_transition_leaves_the_annealed_target_invariant():
    """Draws from N(0, 1 / (1 + a beta)) stay so distributed after a transition that accepts most proposals."""
    stub, beta, n = GaussianWeights(), 0.5, 40_000
    gen = torch.Generator().manual_seed(0)
    eps = [torch.randn(n, 1, stub.d, dtype=torch.float64, generator=gen) / (1 + stub.a * beta) ** 0.5]
    x = torch.zeros(1, 1, dtype=torch.float64)
    log_w, grad = _log_w_and_grad(stub, x, eps)
    delta = torch.full((1, 1, 1), 0.4, dtype=torch.float64)
    (moved,), _, _, accepted = _hmc(stub, x, eps, log_w, grad, beta, delta, 10, gen)
    assert 0.5 < accepted.double().mean() < 0.99  # the Metropolis test has work to do
    second_moment = moved.square().mean(0).squeeze()  # per dimension; target 1 / (1 + a beta) = 0.4
    torch.testing.assert_close(second_moment, torch.full((stub.d,), 0.4, dtype=torch.float64), atol=0.012, rtol=0)


@pytest.mark.parametrize("adapt", [False, True])
def test_each_chains_weight_is_unbiased_for_p_x(adapt):
    """E[W] = p(x) = (1 + a)^(-d/2) for one chain per replicate (the batch holds 40,000 replicates), with a fixed
    step size and with one adapted on pilot chains: a kernel steered by the chain's own past would miss."""
    stub = GaussianWeights()
    x = torch.zeros(40_000, 1, dtype=torch.float64)
    est = ais_log_likelihood(stub, x, steps=20, chains=1, leapfrog=5, step_size=0.5, adapt=adapt, pilots=1,
                             block=40_000, generator=torch.Generator().manual_seed(1))  # fmt: skip
    w = (est - math.log((1 + stub.a) ** (-stub.d / 2))).exp()  # W / p(x) per replicate
    assert abs(w.mean().item() - 1) < 4 * w.std().item() / len(w) ** 0.5 + 1e-3, (w.mean(), w.std())


@pytest.mark.parametrize("fused", [False, True])
def test_the_gradient_of_log_w_in_the_noise_is_autograds_against_finite_differences(monkeypatch, fused):
    """Two latent layers, with the fused kernels and in-place tanh taken (fused) or not, and one unit pruned."""
    monkeypatch.setattr(_ops, "FUSE_MIN", 1 if fused else 10**12)
    monkeypatch.setattr(_ops, "INPLACE_MIN", 1 if fused else 10**12)
    model, x = tiny_model(x_dim=4, latent_dims=(2, 2), seed=2), binary_batch(3, 4)
    means = [torch.tensor([0.0, 0.3], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)]
    model = model.pruned([torch.tensor([True, False]), torch.tensor([True, True])], means)
    eps = model.draw_noise(2, 3, torch.Generator().manual_seed(0))
    _, grad = _log_w_and_grad(model, x, eps)
    for layer in range(2):
        for unit in range(2):
            step = torch.zeros_like(eps[layer])
            step[..., unit] = 1e-6
            up = [e + step if i == layer else e for i, e in enumerate(eps)]
            down = [e - step if i == layer else e for i, e in enumerate(eps)]
            with torch.no_grad():
                log_w_up, log_w_down = (model.forward_samples(x, 2, noise=n).log_w for n in (up, down))
            fd = (log_w_up - log_w_down) / 2e-6
            torch.testing.assert_close(grad[layer][..., unit], fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("latent_dims", [(2,), (2, 3)])
def test_simulated_data_come_with_the_noise_that_reproduces_their_latents(latent_dims):
    """forward_samples(x, 1, noise) gives back the latents drawn from the prior, pruned units at their fill value;
    the data are binary draws from p(x | h^1), and sample() still draws what it drew (the same ancestral pass)."""
    model = tiny_model(x_dim=5, latent_dims=latent_dims, seed=3, scale=2.0)
    keep = [torch.tensor([True] * (d - 1) + [False]) for d in latent_dims]
    fill = [torch.full((d,), 0.7, dtype=torch.float64) for d in latent_dims]
    for m in (model, model.pruned(keep, fill)):
        sim = m.simulate(6, torch.Generator().manual_seed(0))
        assert set(sim.x.unique().tolist()) <= {0.0, 1.0} and sim.x.shape == (6, 5)
        again = m.forward_samples(sim.x, 1, noise=sim.noise).samples
        for h, h_again in zip(sim.samples, again):
            torch.testing.assert_close(h_again[0], h, rtol=1e-10, atol=1e-10)
    drawn = model.simulate(4, torch.Generator().manual_seed(1)).samples[0]
    assert torch.equal(model.sample(4, torch.Generator().manual_seed(1)), model.visible_means(drawn))
    assert (m.simulate(50, torch.Generator().manual_seed(2)).samples[0][:, -1] == 0.7).all()  # the pruned unit


def test_a_model_of_ones_own_simulates_as_the_paper_model_does():
    paper = iwae.IWAE(x_dim=6, latent_dims=[2], q_hidden=[[5]], p_hidden=[[5]])
    own = iwae.GaussianLatentModel(paper.encoder[0], paper.decoder[-1], latent_dim=2, x_dim=6)
    a, b = (m.simulate(4, torch.Generator().manual_seed(0)) for m in (paper, own))
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize("adapt", [False, True])
def test_each_reverse_chains_weight_is_unbiased_for_one_over_p_x(adapt):
    """E[W'] = 1 / p(x) = (1 + a)^(d/2) for one reverse chain per replicate from an exact posterior draw, with a
    fixed step size and with the forward pilots' (a kernel steered by pilots that shared the exact draw would not
    be); and the forward estimate of the same call stays unbiased for p(x)."""
    stub = GaussianWeights()
    out = bdmc(stub, 40_000, steps=20, chains=1, leapfrog=5, step_size=0.5, adapt=adapt, pilots=1, block=40_000,
               generator=torch.Generator().manual_seed(1))  # fmt: skip
    log_p = math.log((1 + stub.a) ** (-stub.d / 2))
    for w in ((log_p - out.upper).exp(), (out.lower - log_p).exp()):  # W' p(x), W / p(x)
        assert abs(w.mean().item() - 1) < 4 * w.std().item() / len(w) ** 0.5 + 1e-3, (w.mean(), w.std())


def test_bdmc_brackets_the_exact_log_likelihood_of_simulated_data_and_closes_with_more_steps():
    """On data simulated from a model whose q is far from its posterior, forward AIS is below log p(x) and reverse
    AIS above it on average, and 100 steps bring both within 0.05 nats, where 3 steps leave a gap of over a nat."""
    model = tiny_model(x_dim=6, latent_dims=(1,), seed=1, scale=2.0)
    gaps = {}
    for steps in (3, 100):
        out = bdmc(model, 200, steps=steps, chains=4, step_size=0.3, adapt=False,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
        exact = exact_log_px(model, out.x)
        below, above = exact - out.lower, out.upper - exact
        for d in (below, above):
            assert d.mean() > -3 * d.std() / 200**0.5, (steps, d.mean())  # on its side, up to noise
        gaps[steps] = (out.upper - out.lower).mean().item()
    assert gaps[100] < 0.05 and gaps[3] > 0.5, gaps


def test_bdmc_names_what_it_needs():
    model = tiny_model()
    with pytest.raises(TypeError, match="has no simulate"):
        bdmc(GaussianWeightsWithoutSimulate(), 3)
    with pytest.raises(ValueError, match=r"gave noise of shapes \[\(3, 4\)\]; each must be \(1, 3, d_l\)"):
        bdmc(GaussianWeightsWithFlatNoise(), 3)
    with pytest.raises(ValueError, match="n must be a positive number of simulated data"):
        bdmc(model, 0)
    with pytest.raises(ValueError, match="steps, chains, leapfrog and block must be positive integers"):
        bdmc(model, 2, chains=0)


class GaussianWeightsWithoutSimulate(GaussianWeights):
    simulate = None


class GaussianWeightsWithFlatNoise(GaussianWeights):
    def simulate(self, n, generator=None):
        x, samples, noise = super().simulate(n, generator)
        return Simulated(x, samples, [noise[0][0]])  # (n, d): the leading sample dimension left out


def test_iwae_ais_simulated_runs_bdmc_on_a_saved_run(tiny_run, capsys):
    from conftest import read_json

    from iwae.cli import main

    assert main(["ais", str(tiny_run), "--simulated", "--steps", "3", "--chains", "2", "--n", "4", "--quiet"]) == 0
    result = read_json(tiny_run / "bdmc-s3-c2-n4.json")
    assert (result["steps"], result["chains"], result["n"], len(result["lower_ll"]), len(result["upper_ll"])) == (
        3, 2, 4, 4, 4)  # fmt: skip
    assert result["gap"] == pytest.approx(result["upper"] - result["lower"])
    assert result["gap"] == pytest.approx(sum(u - lo for u, lo in zip(result["upper_ll"], result["lower_ll"])) / 4)
    assert f"AIS with 3 steps x 2 chains is within {result['gap']:.3f} +- {result['gap_sem']:.3f} nats" in (
        capsys.readouterr().out)  # fmt: skip
    args = ["ais", str(tiny_run), "--simulated", "--from", "prior", "--steps", "3", "--chains", "2", "--n", "4"]
    assert main([*args, "--quiet"]) == 0
    prior = read_json(tiny_run / "bdmc-s3-c2-n4-prior.json")
    assert prior["anneal_from"] == "prior" and prior["lower_ll"] != result["lower_ll"]
    assert "AIS from the prior with 3 steps x 2 chains is within" in capsys.readouterr().out


def test_reverse_transitions_run_at_the_forward_temperatures_reversed_with_the_forward_pilots_step_sizes(monkeypatch):
    """Any chain-independent step size keeps W' unbiased, so no statistical test sees a wrong mapping: record it."""
    calls, hmc = [], ais._hmc

    def recording(model, x, eps, log_w, grad, beta, delta, leapfrog, generator):
        calls.append((eps[0].shape[0], beta, delta.clone()))
        return hmc(model, x, eps, log_w, grad, beta, delta, leapfrog, generator)

    monkeypatch.setattr(ais, "_hmc", recording)
    steps, chains, pilots = 8, 3, 2
    model = tiny_model(x_dim=5, latent_dims=(2,), seed=2, scale=2.0)
    bdmc(model, 5, steps=steps, chains=chains, leapfrog=2, pilots=pilots, block=2,
         generator=torch.Generator().manual_seed(0))  # fmt: skip
    betas = sigmoid_schedule(steps).tolist()
    forward = [c for c in calls if c[0] == chains + pilots]
    reverse = [c for c in calls if c[0] == chains]
    assert len(forward) == len(reverse) == 3 * (steps - 1)  # blocks of 2, 2 and 1 examples
    for b in range(3):
        f, r = (cs[b * (steps - 1) : (b + 1) * (steps - 1)] for cs in (forward, reverse))
        assert [c[1] for c in f] == betas[1:-1] and [c[1] for c in r] == betas[::-1][1:-1]
        assert not all(torch.equal(f[0][2], c[2]) for c in f)  # the pilots adapted: the mapping is visible
        for fc, rc in zip(f[::-1], r):
            assert torch.equal(fc[2], rc[2]), (rc[1], fc[2], rc[2])


@pytest.mark.parametrize("adapt", [False, True])
def test_bdmcs_forward_pass_is_ais_log_likelihood_on_the_simulated_data(adapt):
    model = tiny_model(x_dim=5, latent_dims=(2, 3), seed=2, scale=2.0)
    settings = dict(steps=5, chains=3, leapfrog=2, adapt=adapt, pilots=2, block=3)
    out = bdmc(model, 7, generator=torch.Generator().manual_seed(11), **settings)
    g = torch.Generator().manual_seed(11)
    sim = model.simulate(7, g)
    assert torch.equal(out.x, sim.x)
    assert torch.equal(out.lower, ais_log_likelihood(model, sim.x, generator=g, **settings))


@torch.no_grad()
def _posterior_cdf(model, x, h, half_width=9.0, n=1201):
    """F(h | x) of a latent_dims (1,) model by the trapezoid rule on tests/exact.py's grid, interpolated at h."""
    grid = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    log_joint = _log_px_given_h1(model, grid[:, None], x) + torch.distributions.Normal(0.0, 1.0).log_prob(grid)[:, None]
    dens = (log_joint - log_joint.max(0).values).exp()  # (G, B)
    cum = torch.cat([dens.new_zeros(1, x.shape[0]), torch.cumsum(0.5 * (dens[1:] + dens[:-1]), 0)])
    cum = cum / cum[-1]
    i, cols = torch.searchsorted(grid, h.contiguous()).clamp(1, n - 1), torch.arange(x.shape[0])
    return cum[i - 1, cols] + (cum[i, cols] - cum[i - 1, cols]) * (h - grid[i - 1]) / (grid[i] - grid[i - 1])


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_each_simulated_latent_is_an_exact_posterior_draw_of_its_datum(likelihood):
    """Simulation-based calibration: the exact posterior CDF F(h | x) at the latent that made x is uniform (a
    Kolmogorov-Smirnov distance under the 0.1% critical value), for both visible layers."""
    model = tiny_model(x_dim=6, latent_dims=(1,), likelihood=likelihood, seed=1, scale=2.0)
    sim = model.simulate(2000, torch.Generator().manual_seed(0))
    u = _posterior_cdf(model, sim.x, sim.samples[0][:, 0]).sort().values
    ks = (u - torch.arange(1, 2001, dtype=torch.float64) / 2000).abs().max().item()
    assert ks < 1.95 / 2000**0.5, ks
    again = model.forward_samples(sim.x, 1, noise=sim.noise).samples[0][0]
    torch.testing.assert_close(again, sim.samples[0], rtol=1e-10, atol=1e-10)


def test_a_pruned_units_simulated_noise_is_standard_normal():
    """No log-weight reads it, so its posterior is its prior."""
    keep = [torch.tensor([True, False]), torch.tensor([True, True, False])]
    model = tiny_model(x_dim=5, latent_dims=(2, 3), seed=3).pruned(keep)
    noise = model.simulate(2000, torch.Generator().manual_seed(0)).noise
    for e in (noise[0][0, :, 1], noise[1][0, :, 2]):
        assert abs(e.mean()) < 0.1 and abs(e.std() - 1) < 0.1


# ---------------------------------------------------------------- annealing from the prior


@pytest.mark.parametrize("latent_dims", [(1,), (1, 1)])
def test_the_likelihood_at_the_priors_noise_averages_to_p_x(latent_dims):
    """E_eps[p(x | h^1(eps))] = p(x): prior_samples turns N(0, I) noise into draws from p(h), layer by layer."""
    model, x = tiny_model(x_dim=6, latent_dims=latent_dims, seed=1, scale=2.0), binary_batch(4, 6, seed=2)
    n = 200_000
    with torch.no_grad():
        log_px_h = model.log_px_at_prior_noise(x, model.draw_noise(n, 4, torch.Generator().manual_seed(0)))
    est = torch.logsumexp(log_px_h, 0) - math.log(n)
    w = (log_px_h - log_px_h.max(0).values).exp()
    sem = w.std(0) / w.mean(0) / n**0.5  # the delta method's standard error of the log of the mean
    assert ((est - exact_log_px(model, x)).abs() < 5 * sem + 1e-4).all(), (est - exact_log_px(model, x), sem)


def test_one_step_from_the_prior_is_prior_importance_sampling_on_the_same_noise():
    model, x = tiny_model(x_dim=4, latent_dims=(2, 1)), binary_batch(5, 4)
    got = ais_log_likelihood(
        model, x, steps=1, chains=7, generator=torch.Generator().manual_seed(3), anneal_from="prior"
    )
    with torch.no_grad():
        log_px_h = model.log_px_at_prior_noise(x, model.draw_noise(7, 5, torch.Generator().manual_seed(3)))
    torch.testing.assert_close(got, torch.logsumexp(log_px_h, 0) - math.log(7), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("latent_dims", [(1,), pytest.param((1, 1), marks=pytest.mark.slow)])
def test_annealing_from_the_prior_reaches_the_exact_log_likelihood(latent_dims):
    """As from q (above): 100 steps of 1,000 chains within 0.15 nats of log p(x) on every example."""
    model, x = tiny_model(x_dim=6, latent_dims=latent_dims, seed=1, scale=2.0), binary_batch(6, 6, seed=2)
    gen = torch.Generator().manual_seed(0)
    ais = ais_log_likelihood(model, x, steps=100, chains=1000, step_size=0.3, generator=gen, anneal_from="prior")
    assert (ais - exact_log_px(model, x)).abs().max() < 0.15, ais - exact_log_px(model, x)


class _Fixed(torch.nn.Module):
    """q(h | x) = N(2, 0.3^2) whatever x is: all of q's mass on the positive of two symmetric modes."""

    def __init__(self) -> None:
        super().__init__()
        self.mean = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        ones = x.new_ones(x.shape[0], 1)
        return self.mean * ones, math.log(0.3) * ones


class _Symmetric(torch.nn.Module):
    """Logits a (tanh(3 (h - 1.5)) - tanh(3 (h + 1.5)) + 1) on every pixel: even in h, high for |h| > 1.5."""

    def forward(self, h):
        return 3 * (torch.tanh(3 * (h - 1.5)) - torch.tanh(3 * (h + 1.5)) + 1).expand(*h.shape[:-1], 8)


def test_annealing_from_the_prior_finds_the_mode_that_q_misses():
    """A posterior of two mirror-image modes, q on one: L_k and AIS from q see half the mass, log 2 short; AIS from
    the prior finds both."""
    model = iwae.GaussianLatentModel(_Fixed(), _Symmetric(), latent_dim=1, x_dim=8).double()
    x = torch.ones(3, 8, dtype=torch.float64)
    grid = torch.linspace(-9, 9, 4001, dtype=torch.float64)[:, None]
    log_joint = (
        model.log_px_at_prior_noise(x, [grid[:, None].expand(-1, 3, -1)])
        - 0.5 * grid.square()
        - 0.5 * math.log(2 * math.pi)
    )
    exact = torch.logsumexp(log_joint, 0) + math.log(grid[1, 0] - grid[0, 0])
    kw = {"steps": 200, "chains": 200, "generator": torch.Generator().manual_seed(0)}
    from_q = ais_log_likelihood(model, x, **kw)
    from_prior = ais_log_likelihood(model, x, **kw, anneal_from="prior")
    torch.testing.assert_close(exact - from_q, torch.full_like(exact, math.log(2)), atol=0.05, rtol=0)
    assert (from_prior - exact).abs().max() < 0.1, from_prior - exact


def test_a_model_of_ones_own_is_annealed_from_the_prior_as_the_paper_model_is():
    paper = iwae.IWAE(x_dim=6, latent_dims=[2], q_hidden=[[5]], p_hidden=[[5]])
    own = iwae.GaussianLatentModel(paper.encoder[0], paper.decoder[-1], latent_dim=2, x_dim=6)
    x = binary_batch(3, 6).float()
    runs = [ais_log_likelihood(m, x, steps=5, chains=4, generator=torch.Generator().manual_seed(0),
                               anneal_from="prior") for m in (paper, own)]  # fmt: skip
    torch.testing.assert_close(*runs)


def test_annealing_from_an_unknown_start_or_without_the_priors_likelihood_is_refused():
    model, x = tiny_model(), binary_batch(2, 3)
    with pytest.raises(ValueError, match="anneal_from must be 'q' .*, 'prior' or 'both' .*, got 'posterior'"):
        ais_log_likelihood(model, x, anneal_from="posterior")
    with pytest.raises(ValueError, match="bdmc anneals from 'q' or from 'prior': run it for each"):
        bdmc(model, 3, anneal_from="both")
    with pytest.raises(TypeError, match="GaussianWeights has no log_px_at_prior_noise.*anneal from q instead"):
        ais_log_likelihood(GaussianWeights(), torch.zeros(2, 1, dtype=torch.float64), anneal_from="prior")
    with pytest.raises(TypeError, match="GaussianWeights has no log_px_at_prior_noise"):  # half of "both" is "prior"
        ais_log_likelihood(GaussianWeights(), torch.zeros(2, 1, dtype=torch.float64), anneal_from="both")
    assert [anneal_starts(a) for a in ANNEAL_FROM] == [("q",), ("prior",), ("q", "prior")]


@pytest.mark.parametrize("latent_dims", [(2,), (2, 3), (2, 3, 4)])
def test_the_priors_noise_of_latents_gives_them_back(latent_dims):
    model = tiny_model(x_dim=5, latent_dims=latent_dims)
    simulated = model.simulate(6, generator=torch.Generator().manual_seed(0))
    noise = model.prior_noise(simulated.samples)
    for again, h in zip(model.prior_samples(noise), simulated.samples):
        torch.testing.assert_close(again, h, rtol=1e-12, atol=1e-12)
    pruned = model.pruned([torch.arange(d) != 0 for d in latent_dims])  # unit 0 of each layer held at its fill
    samples = pruned.simulate(4000, generator=torch.Generator().manual_seed(1)).samples
    noise = pruned.prior_noise(samples, generator=torch.Generator().manual_seed(2))
    for again, h in zip(pruned.prior_samples(noise), samples):
        torch.testing.assert_close(again, h, rtol=1e-12, atol=1e-12)
    for e, full in zip(noise, model.prior_noise(samples)):  # the kept units' noise: the unpruned inversion's
        torch.testing.assert_close(e[:, 1:], full[:, 1:], rtol=0, atol=0)
        assert abs(e[:, 0].mean()) < 0.07 and abs(e[:, 0].std() - 1) < 0.05  # a held unit's: N(0, 1)


def test_a_model_of_ones_own_is_checked_from_the_prior_as_the_paper_model_is():
    paper = iwae.IWAE(x_dim=6, latent_dims=[2], q_hidden=[[5]], p_hidden=[[5]])
    own = iwae.GaussianLatentModel(paper.encoder[0], paper.decoder[-1], latent_dim=2, x_dim=6)
    a, b = (bdmc(m, 4, steps=5, chains=3, anneal_from="prior", generator=torch.Generator().manual_seed(0))
            for m in (paper, own))  # fmt: skip
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)


def test_bdmc_from_the_prior_brackets_the_exact_log_likelihood_and_closes_with_more_steps():
    """As from q (above), with the chains in the prior's noise, the reverse ones from the latents' prior noise (12
    pixels, so that the posterior is narrow beside the prior: 3 steps leave a gap of 0.34 nats where this was
    written, 100 steps 0.03)."""
    model = tiny_model(x_dim=12, latent_dims=(1,), seed=1, scale=2.0)
    gaps = {}
    for steps in (3, 100):
        out = bdmc(model, 200, steps=steps, chains=4, step_size=0.3, adapt=False, anneal_from="prior",
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
        exact = exact_log_px(model, out.x)
        for d in (exact - out.lower, out.upper - exact):
            assert d.mean() > -3 * d.std() / 200**0.5, (steps, d.mean())  # on its side, up to noise
        gaps[steps] = (out.upper - out.lower).mean().item()
    assert gaps[100] < 0.05 and gaps[3] > 0.2, gaps


def test_bdmc_from_the_prior_names_what_it_needs():
    with pytest.raises(TypeError, match="has no log_px_at_prior_noise"):
        bdmc(GaussianWeights(), 3, anneal_from="prior")

    class WithoutPriorNoise(GaussianWeights):
        def log_px_at_prior_noise(self, x, noise):
            return self.forward_samples(x, noise[0].shape[0], noise).log_w

    with pytest.raises(TypeError, match="has no prior_noise"):
        bdmc(WithoutPriorNoise(), 3, anneal_from="prior")


def test_both_starts_pool_the_chains_of_each_block_from_q_then_from_the_prior():
    """Every chain's weight is unbiased for p(x) whichever its start: "both" is the log of the mean weight of C chains
    from q and C from the prior, each block annealed from q and then from the prior on one generator."""
    model, x = tiny_model(x_dim=4, latent_dims=(2, 1)), binary_batch(5, 4)
    kw = {"steps": 4, "chains": 3, "block": 3}
    both = ais_log_likelihood(model, x, anneal_from="both", generator=torch.Generator().manual_seed(7), **kw)
    gen, parts = torch.Generator().manual_seed(7), []
    for rows in (slice(0, 3), slice(3, 5)):  # block by block, as "both" draws: from q, then from the prior
        q, prior = (ais_log_likelihood(model, x[rows], anneal_from=a, generator=gen, **kw) for a in ("q", "prior"))
        parts.append(torch.logaddexp(q, prior) - math.log(2))
    torch.testing.assert_close(both, torch.cat(parts), rtol=1e-12, atol=1e-12)
