"""Reweighted wake-sleep (``--estimator rws``): the generative network gets L_k's gradient, the recognition network
the wake-phi update sum_i w~_i grad_phi log q(h_i | x) at the samples held fixed, both against per-sample autograd."""

from __future__ import annotations

import pytest
import torch
from conftest import binary_batch, tiny_model
from test_estimators import B, K, _assert_grads_close, _grads, _mean_and_se, _objective_grads, _per_sample_weighted

import iwae
from iwae import bounds


@pytest.mark.parametrize("latent_dims", [(2,), (2, 2)])
def test_generative_gradient_is_eq14_and_recognition_gradient_is_wake_phi(latent_dims):
    model, x = tiny_model(x_dim=4, latent_dims=latent_dims), binary_batch(B, 4)
    got = _objective_grads(model, x, 4, k=K, bound="iwae", estimator="rws")
    decoder = [f"decoder.{n}" for n, _ in model.decoder.named_parameters()]
    encoder = [f"encoder.{n}" for n, _ in model.encoder.named_parameters()]
    # the generative network: Eq. 14, sum_i w~_i grad_theta log w_i (the samples do not depend on theta)
    eq14 = _per_sample_weighted(model, x, 4, lambda lw: torch.softmax(lw, 0))
    _assert_grads_close(got, eq14, decoder)
    # the recognition network: sum_i w~_i grad_phi log q(h_i | x) with h_i fixed = minus the weighted gradient of
    # log w at held samples, one autograd call per sample
    out = model.forward_samples(x, K, generator=torch.Generator().manual_seed(4), sample_hook=lambda h: h.detach())
    w = torch.softmax(out.log_w.detach(), 0)
    want = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(K):
        for b in range(B):
            for n, g in _grads(model, out.log_w[i, b], retain_graph=True).items():
                want[n] -= w[i, b] * g / B
    _assert_grads_close(got, want, encoder)
    assert any(want[n].abs().max() > 1e-6 for n in encoder)  # a real update, not zeros on both sides


def test_its_value_is_minus_l_k_and_it_trains(tmp_path):
    model, x = tiny_model(x_dim=4, latent_dims=(2,)), binary_batch(B, 4)
    loss = iwae.objective(model, x, k=K, estimator="rws", generator=torch.Generator().manual_seed(1))
    lw = model.forward_samples(x, K, generator=torch.Generator().manual_seed(1)).log_w
    torch.testing.assert_close(loss, -bounds.iwae(lw).mean())
    with pytest.raises(ValueError, match="estimator 'rws' is defined for bound='iwae' only"):
        iwae.Objective("vae", 5, "rws")
    assert not iwae.Objective("iwae", 5, "rws").compilable
    step = iwae.make_train_step(model.float(), iwae.make_optimizer(model), k=K, estimator="rws",
                                generator=torch.Generator().manual_seed(0))  # fmt: skip
    xs = binary_batch(40, 4).float()
    first = [float(step(xs)) for _ in range(3)]
    for _ in range(200):
        last = float(step(xs))
    assert last < min(first)  # minus L_k falls


@pytest.mark.parametrize("latent_dims", [(2,), (2, 2)])
def test_rws_dreg_generative_gradient_is_rws_and_recognition_gradient_the_reweighted_path_derivative(latent_dims):
    """RWS-DReG on the same noise: the decoder's gradient is RWS's (Eq. 14), the encoder's sum_i (w~_i - w~_i^2)
    d log w_i / dphi through the samples, log q's parameters held, one autograd call per sample."""
    model, x = tiny_model(x_dim=4, latent_dims=latent_dims), binary_batch(B, 4)
    got = _objective_grads(model, x, 4, k=K, bound="iwae", estimator="rws-dreg")
    decoder = [f"decoder.{n}" for n, _ in model.decoder.named_parameters()]
    encoder = [f"encoder.{n}" for n, _ in model.encoder.named_parameters()]
    _assert_grads_close(got, _objective_grads(model, x, 4, k=K, bound="iwae", estimator="rws"), decoder)
    want = _per_sample_weighted(model, x, 4, lambda lw: torch.softmax(lw, 0) - torch.softmax(lw, 0) ** 2,
                                stop_q_grad=True)  # fmt: skip
    _assert_grads_close(got, want, encoder)
    assert any(want[n].abs().max() > 1e-6 for n in encoder)
    # k = 1: w~ = 1, so no recognition gradient (RWS's wake-phi update has expectation zero there as well)
    one = _objective_grads(model, x, 4, k=1, bound="iwae", estimator="rws-dreg")
    assert all(one[n].abs().max() == 0 for n in encoder) and any(one[n].abs().max() > 0 for n in decoder)


@pytest.mark.slow  # 4,500 gradient draws (the default run checks the formula against per-sample autograd)
@pytest.mark.parametrize("latent_dims", [(1,), (1, 1)])
def test_rws_dreg_has_the_expectation_of_rws_and_less_variance(latent_dims):
    """Averaged over many draws, RWS-DReG's gradient equals RWS's, every parameter (the wake-phi update's
    expectation through the reparameterised form), with a smaller spread on the recognition network; the test has
    power: IWAE's DReG (the gradient of L_k, another expectation for the encoder) fails it."""
    model, x = tiny_model(x_dim=3, latent_dims=latent_dims, seed=3), binary_batch(B, 3)
    m1, se1 = _mean_and_se(model, x, "rws-dreg", 1500, 10_000)
    m2, se2 = _mean_and_se(model, x, "rws", 1500, 20_000)
    z = (m1 - m2) / torch.sqrt(se1**2 + se2**2 + 1e-12)
    assert z.abs().max() < 4.5, z
    encoder = _encoder_mask(model)
    assert (se1[encoder] ** 2).sum() < (se2[encoder] ** 2).sum()  # lower total variance of the encoder's gradient
    m3, se3 = _mean_and_se(model, x, "dreg", 1500, 30_000)
    assert ((m3 - m2).abs() / torch.sqrt(se3**2 + se2**2 + 1e-12)).max() > 4.5


def _encoder_mask(model) -> torch.Tensor:
    """Which entries of the flattened gradient (the order of ``named_parameters``) belong to the encoder."""
    return torch.cat([torch.full((p.numel(),), n.startswith("encoder.")) for n, p in model.named_parameters()])
