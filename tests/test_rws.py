"""Reweighted wake-sleep (``--estimator rws``): the generative network gets L_k's gradient, the recognition network
the wake-phi update sum_i w~_i grad_phi log q(h_i | x) at the samples held fixed, both against per-sample autograd."""

from __future__ import annotations

import pytest
import torch
from conftest import binary_batch, tiny_model
from test_estimators import B, K, _assert_grads_close, _grads, _objective_grads, _per_sample_weighted

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
