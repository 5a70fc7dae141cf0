"""The fast paths of the model (fused tanh and Bernoulli kernels, in-place evaluation, log q from the noise) compute
the same values and gradients as the plain formulas, checked against an independent reference. The size thresholds
are patched so that small tensors take each path."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import iwae
from iwae.models import _ops


@pytest.fixture(params=["fused", "plain"])
def path(request, monkeypatch):
    """Run the test once with every fast path taken, once with none."""
    big = 10**12
    monkeypatch.setattr(_ops, "FUSE_MIN", 1 if request.param == "fused" else big)
    monkeypatch.setattr(_ops, "INPLACE_MIN", 1 if request.param == "fused" else big)
    return request.param


def _reference_log_w(model: iwae.IWAE, x: torch.Tensor, noise: list[torch.Tensor]) -> torch.Tensor:
    """log p(x, h) - log q(h | x) from the parameters with torch.tanh and torch.distributions, no model code."""
    N = torch.distributions.Normal

    def gauss(layer, inp):
        t = inp
        for m in layer.trunk:
            if isinstance(m, torch.nn.Linear):
                t = torch.tanh(F.linear(t, m.weight, m.bias))
        return F.linear(t, layer.mean.weight, layer.mean.bias), F.linear(t, layer.log_std.weight, layer.log_std.bias)

    inp, log_q, hs = x, 0.0, []
    for layer, eps in zip(model.encoder, noise):
        mean, log_std = gauss(layer, inp)
        h = mean + log_std.exp() * eps
        log_q = log_q + N(mean, log_std.exp()).log_prob(h).sum(-1)
        hs.append(h)
        inp = h
    log_p = N(0.0, 1.0).log_prob(hs[-1]).sum(-1)
    for j, layer in enumerate(model.decoder[:-1]):
        l = model.n_layers - 1 - j
        mean, log_std = gauss(layer, hs[l])
        log_p = log_p + N(mean, log_std.exp()).log_prob(hs[l - 1]).sum(-1)
    head = model.decoder[-1]
    t = hs[0]
    for m in head.trunk:
        if isinstance(m, torch.nn.Linear):
            t = torch.tanh(F.linear(t, m.weight, m.bias))
    logits = F.linear(t, head.logits.weight, head.logits.bias)
    return log_p + torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1) - log_q


def _big_model(layers: int) -> tuple[iwae.IWAE, torch.Tensor]:
    torch.manual_seed(layers)
    model = iwae.IWAE.paper(layers).double()
    x = torch.bernoulli(torch.full((4, 784), 0.2, dtype=torch.float64))
    return model, x


def test_sigmoid_tanh_matches_tanh(path):
    x = torch.linspace(-30, 30, 100_001)
    torch.testing.assert_close(_ops.tanh(x.clone()), torch.tanh(x), atol=4e-7, rtol=0)  # in place, no graph
    x64 = (torch.randn(1000, dtype=torch.float64) * 3).requires_grad_()
    torch.testing.assert_close(_ops.tanh(x64), torch.tanh(x64), atol=1e-15, rtol=0)
    g = torch.randn_like(x64)
    (got,) = torch.autograd.grad(_ops.tanh(x64), x64, g)
    (want,) = torch.autograd.grad(torch.tanh(x64), x64, g)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("grad", [True, False])
def test_fused_bernoulli_log_prob_matches_formula(grad, path):
    logits = (torch.randn(6, 5, 784, dtype=torch.float64) * 8).requires_grad_(grad)
    x = torch.bernoulli(torch.full((5, 784), 0.3, dtype=torch.float64))
    want = (x * logits).sum(-1) - F.softplus(logits).sum(-1)
    got = _ops.bernoulli_log_prob(logits, x)
    torch.testing.assert_close(got, want)
    if grad:
        # finite differences over a 20-pixel slice: the fused kernel is elementwise, and 7,840 inputs cost seconds
        part = logits[:2, :, :20].detach().requires_grad_()
        assert torch.autograd.gradcheck(lambda l: _ops.bernoulli_log_prob(l, x[:, :20]), (part,))


@pytest.mark.parametrize("layers", [1, 2])
def test_log_weights_and_gradients_match_reference_on_fast_paths(layers, path):
    model, x = _big_model(layers)
    out = model.forward_samples(x, 12, generator=torch.Generator().manual_seed(0))
    ref = _reference_log_w(model, x, out.noise)
    torch.testing.assert_close(out.log_w, ref)
    # Eq. 14's gradient through the fused kernels equals autograd through the reference
    params = list(model.parameters())
    got = torch.autograd.grad(iwae.bounds.iwae(out.log_w).sum(), params)
    want = torch.autograd.grad(iwae.bounds.iwae(ref).sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    # without a graph (in-place evaluation) the values are the same
    with torch.no_grad():
        torch.testing.assert_close(model.forward_samples(x, 12, noise=out.noise).log_w, out.log_w)


def test_float32_fast_paths_stay_close_to_float64(path):
    model, x = _big_model(1)
    noise = model.forward_samples(x, 50).noise
    want = model.forward_samples(x, 50, noise=noise).log_w
    got = model.float().forward_samples(x.float(), 50, noise=[e.float() for e in noise]).log_w
    torch.testing.assert_close(got.double(), want, atol=2e-3, rtol=1e-5)


@pytest.mark.parametrize("pruned", [False, True])
def test_log_q_from_the_noise_equals_log_q_from_the_samples(pruned):
    """log q read from eps (the default) and from h (stop_q_grad, or a hook) agree, with and without pruned units."""
    model, x = _big_model(2)
    if pruned:
        model = model.pruned(
            [torch.arange(100) % 3 > 0, torch.arange(50) % 4 > 0], [torch.full((100,), 0.3), torch.zeros(50)]
        )
    noise = model.forward_samples(x, 7).noise
    want = model.forward_samples(x, 7, noise=noise).log_w
    for kw in ({"stop_q_grad": True}, {"sample_hook": lambda h: h}):
        torch.testing.assert_close(model.forward_samples(x, 7, noise=noise, **kw).log_w, want)
