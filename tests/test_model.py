"""The model: the paper's architectures, initialisation, shapes, sampling, pruning, devices."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model

import iwae


def _dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _gauss(n_in: int, hidden: list[int], n_out: int) -> int:
    sizes = [n_in, *hidden]
    return sum(_dense(a, b) for a, b in zip(sizes[:-1], sizes[1:])) + 2 * _dense(sizes[-1], n_out)


def test_paper_parameter_counts():
    """Appendix C: 784-200-200-50 (and 50-200-200-784); 784-200-200-100-100-100-50 (and back)."""
    one = _gauss(784, [200, 200], 50) + _gauss(50, [200, 200], 0) + _dense(200, 784)
    assert sum(p.numel() for p in iwae.IWAE.paper(layers=1).parameters()) == one == 425_284
    two = (
        _gauss(784, [200, 200], 100)
        + _gauss(100, [100, 100], 50)  # q(h1|x), q(h2|h1)
        + _gauss(50, [100, 100], 100)  # p(h1|h2)
        + _gauss(100, [200, 200], 0)
        + _dense(200, 784)  # p(x|h1)
    )
    assert sum(p.numel() for p in iwae.IWAE.paper(layers=2).parameters()) == two
    with pytest.raises(ValueError, match="1 or 2 stochastic layers"):
        iwae.IWAE.paper(layers=3)


def test_glorot_uniform_init_zero_biases_and_output_bias():
    torch.manual_seed(0)
    mean = torch.rand(784) * 0.5
    mean[:3] = torch.tensor([0.0, 1.0, 0.5])
    model = iwae.IWAE.paper(layers=2, output_bias=mean)
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            bound = math.sqrt(6.0 / (p.shape[0] + p.shape[1]))
            assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound, name
            # uniform on [-b, b] has variance b^2 / 3
            assert p.var().item() == pytest.approx(bound**2 / 3, rel=0.15), name
        elif name != "decoder.1.logits.bias":
            assert (p == 0).all(), name
    bias = model.decoder[-1].logits.bias
    torch.testing.assert_close(torch.sigmoid(bias), mean.clamp(0.001, 0.999))


def test_shapes_and_general_constructor():
    model = iwae.IWAE(x_dim=10, latent_dims=[4, 3, 2], q_hidden=[[8], [6, 6], []], p_hidden=[[5], [5], [7]])
    x = torch.bernoulli(torch.full((6, 10), 0.3))
    out = model.forward_samples(x, 5)
    assert out.log_w.shape == (5, 6)
    assert [s.shape for s in out.samples] == [(5, 6, 4), (5, 6, 3), (5, 6, 2)]
    assert model.sample(11).shape == (11, 10)
    assert ((model.sample(11) >= 0) & (model.sample(11) <= 1)).all()
    assert iwae.log_likelihood(model, x, k=17).shape == (6,)
    assert [a.shape for a in iwae.active_units(model, x)] == [(4,), (3,), (2,)]


def test_recognition_trunk_runs_once_per_example_not_per_sample():
    """The deterministic part of q(h^1 | x) sees (batch, x_dim), not k copies of x."""
    model = iwae.IWAE.paper(layers=1)
    seen = []
    model.encoder[0].trunk.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    model.log_weights(torch.zeros(20, 784), 50)
    assert seen == [(20, 784)]


def test_bad_inputs_give_clear_errors():
    model = iwae.IWAE.paper(layers=1)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 784\)"):
        model.log_weights(torch.zeros(3, 100), 5)
    with pytest.raises(ValueError, match="k must be a positive"):
        model.log_weights(torch.zeros(3, 784), 0)
    with pytest.raises(ValueError, match="one list of hidden sizes per stochastic layer"):
        iwae.IWAE(784, [10, 5], [[5]], [[5], [5]])
    with pytest.raises(ValueError, match="likelihood must be"):
        iwae.IWAE(784, [10], [[5]], [[5]], likelihood="poisson")
    with pytest.raises(ValueError, match="output_bias must be 784 finite values"):
        iwae.IWAE.paper(output_bias=torch.full((784,), float("nan")))


def test_sampling_is_seedable_and_follows_the_generative_model():
    model = tiny_model(x_dim=3, latent_dims=(1,), seed=5)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    torch.testing.assert_close(model.sample(5, generator=g1), model.sample(5, generator=g2))
    # The mean of the Bernoulli means over many samples equals E_p[x] = sum_x x p(x).
    from conftest import all_binary
    from exact import exact_log_px

    xs = all_binary(3)
    expected = (exact_log_px(model, xs).exp()[:, None] * xs).sum(0)
    got = model.sample(200_000, generator=g1).mean(0)
    torch.testing.assert_close(got, expected, atol=5e-3, rtol=0)


def test_pruned_model_drops_units_whose_q_is_the_prior_and_p_ignores():
    """Removing units with q(u|x) = p(u) that p(x|h) ignores leaves every log-weight unchanged (Section 5.2)."""
    model = iwae.IWAE(6, [4], [[5]], [[5]]).double()
    with torch.no_grad():
        for name in ("mean", "log_std"):
            getattr(model.encoder[0], name).weight[2:] = 0
            getattr(model.encoder[0], name).bias[2:] = 0
        model.decoder[0].trunk[0].weight[:, 2:] = 0
    pruned = model.pruned([torch.tensor([True, True, False, False])])
    x = torch.bernoulli(torch.full((4, 6), 0.5, dtype=torch.float64))
    noise = model.forward_samples(x, 8).noise
    torch.testing.assert_close(
        pruned.forward_samples(x, 8, noise=noise).log_w, model.forward_samples(x, 8, noise=noise).log_w
    )
    # and a unit that matters changes them
    other = model.pruned([torch.tensor([False, True, True, True])])
    assert not torch.allclose(
        other.forward_samples(x, 8, noise=noise).log_w, model.forward_samples(x, 8, noise=noise).log_w
    )


def test_device_and_dtype_follow_parameters():
    model = iwae.IWAE.paper(layers=2).double()
    assert model.log_weights(torch.zeros(2, 784, dtype=torch.float64), 3).dtype == torch.float64
    assert model.sample(2).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda():
    model = iwae.IWAE.paper(layers=2).cuda()
    x = torch.bernoulli(torch.full((4, 784), 0.2, device="cuda"))
    assert model.log_weights(x, 5).device.type == "cuda"
    assert iwae.log_likelihood(model, x, k=100).device.type == "cuda"
    iwae.objective(model, x, k=5).backward()


def test_from_latent_dims_declares_the_paper_hidden_sizes():
    """Appendix C's hidden sizes for any latent sizes: 200, 200 next to x, 100, 100 between latent layers."""
    for layers, latent_dims in ((1, [50]), (2, [100, 50])):
        a = iwae.IWAE.paper(layers, generator=torch.Generator().manual_seed(3))
        b = iwae.IWAE.from_latent_dims(latent_dims, generator=torch.Generator().manual_seed(3))
        assert a.config == b.config
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(p, q)
    three = iwae.IWAE.from_latent_dims([20, 10, 5], x_dim=30)
    assert three.config["q_hidden"] == [[200, 200], [100, 100], [100, 100]]
    assert three.config["p_hidden"] == [[100, 100], [100, 100], [200, 200]]
    assert iwae.IWAE.from_latent_dims([4], x_dim=6, q_hidden=[[3]]).config["q_hidden"] == [[3]]


def test_is_pruned_is_set_by_pruned_and_by_load_state_dict():
    model = tiny_model(x_dim=4, latent_dims=(3,))
    x = torch.bernoulli(torch.full((5, 4), 0.5, dtype=torch.float64))
    noise = model.draw_noise(6, 5)
    before = model.forward_samples(x, 6, noise=noise).log_w
    assert not model.is_pruned and not model.pruned([torch.ones(3, dtype=torch.bool)]).is_pruned
    pruned = model.pruned([torch.tensor([True, False, True])], [torch.tensor([0.0, 0.4, 0.0])])
    assert pruned.is_pruned and not model.is_pruned
    model.load_state_dict(pruned.state_dict())
    assert model.is_pruned
    after = model.forward_samples(x, 6, noise=noise).log_w
    torch.testing.assert_close(after, pruned.forward_samples(x, 6, noise=noise).log_w)
    assert not torch.allclose(after, before)
    model.load_state_dict({**model.state_dict(), "unit_mask_0": torch.ones(3, dtype=torch.bool)})
    assert not model.is_pruned
    torch.testing.assert_close(model.forward_samples(x, 6, noise=noise).log_w, before)


def test_sampling_holds_pruned_units_at_their_fill():
    model = tiny_model(x_dim=4, latent_dims=(3, 2))
    want = model.sample(7, generator=torch.Generator().manual_seed(1))
    for keep in ([torch.tensor([False, True, True]), torch.ones(2, dtype=torch.bool)],  # h^1 only
                 [torch.ones(3, dtype=torch.bool), torch.tensor([True, False])]):  # h^2 only  # fmt: skip
        got = model.pruned(keep, [torch.full((3,), 0.7), torch.full((2,), -0.5)]).sample(
            7, generator=torch.Generator().manual_seed(1)
        )
        assert not torch.allclose(got, want)
    # every unit of a one-layer model pruned: each sample is the visible mean at the fill value
    one = tiny_model(x_dim=4, latent_dims=(2,))
    fill = torch.tensor([0.3, -1.2], dtype=torch.float64)
    got = one.pruned([torch.zeros(2, dtype=torch.bool)], [fill]).sample(5)
    torch.testing.assert_close(got, one.visible_means(fill).expand(5, -1))


@pytest.mark.parametrize("latent_dims", [(2,), (2, 2)])
def test_sample_hook_applies_where_log_q_reads_the_samples(latent_dims):
    """Without stop_q_grad too: a hook that detaches every sample leaves the recognition network only the score
    function of log q, -d/dphi log q(h | x) at the drawn h, computed here with torch.distributions."""
    model = tiny_model(x_dim=4, latent_dims=latent_dims)
    x = torch.bernoulli(torch.full((3, 4), 0.5, dtype=torch.float64))
    out = model.forward_samples(x, 5, sample_hook=torch.Tensor.detach)
    params = list(model.encoder.parameters())
    got = torch.autograd.grad(out.log_w.sum(), params)
    log_q, cond = 0.0, x
    for layer, h in zip(model.encoder, out.samples):
        mean, log_std = layer(cond)
        log_q = log_q + torch.distributions.Normal(mean, log_std.exp()).log_prob(h).sum()
        cond = h
    want = torch.autograd.grad(-log_q, params)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
