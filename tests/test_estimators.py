"""iwae.objectives' estimators against per-sample autograd (Eq. 7, Eq. 14, DReG, STL, PIWAE) and unbiasedness."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import binary_batch, tiny_model

import iwae
from iwae import bounds
from iwae.objectives.names import BOUND_PARAMS
from iwae.objectives.registry import BOUNDS, ESTIMATORS_BY_NAME

K, B = 6, 3


def _grads(model, loss, retain_graph=False) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    gs = torch.autograd.grad(loss, list(params.values()), allow_unused=True, retain_graph=retain_graph)
    return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params.items(), gs)}


def _objective_grads(model, x, seed, **kw):
    """Gradient of the bound (minus the objective's loss) on the noise drawn from ``seed``."""
    return _grads(model, -iwae.objective(model, x, generator=torch.Generator().manual_seed(seed), **kw))


def _per_sample_weighted(model, x, seed, weight_fn, stop_q_grad=False):
    """sum_{b,i} c_{ib} grad log w_{ib} / B, one autograd call per (i, b), with coefficients from weight_fn."""
    out = model.forward_samples(x, K, generator=torch.Generator().manual_seed(seed), stop_q_grad=stop_q_grad)
    c = weight_fn(out.log_w.detach())
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(K):
        for b in range(B):
            for n, g in _grads(model, out.log_w[i, b], retain_graph=True).items():
                total[n] += c[i, b] * g / B
    return total


def _assert_grads_close(a, b, names=None, **kw):
    for n in names or a:
        torch.testing.assert_close(a[n], b[n], msg=lambda m, n=n: f"{n}: {m}", **kw)


@pytest.mark.parametrize("latent_dims", [(2,), (2, 2)])
def test_eq14_matches_autograd(latent_dims):
    """The IWAE objective's gradient is the normalised-weight average of the log-weight gradients (Eq. 14)."""
    model, x = tiny_model(x_dim=4, latent_dims=latent_dims), binary_batch(B, 4)
    got = _objective_grads(model, x, 1, k=K, bound="iwae")
    want = _per_sample_weighted(model, x, 1, lambda lw: torch.softmax(lw, 0))
    _assert_grads_close(got, want)
    # Minus the mean L_k is the loss value.
    loss = iwae.objective(model, x, k=K, bound="iwae", generator=torch.Generator().manual_seed(1))
    lw = model.forward_samples(x, K, generator=torch.Generator().manual_seed(1)).log_w
    torch.testing.assert_close(loss, -bounds.iwae(lw).mean())


def test_eq7_matches_autograd():
    model, x = tiny_model(x_dim=4, latent_dims=(2,)), binary_batch(B, 4)
    got = _objective_grads(model, x, 2, k=K, bound="vae")
    want = _per_sample_weighted(model, x, 2, lambda lw: torch.full_like(lw, 1.0 / K))
    _assert_grads_close(got, want)


def test_iwae_equals_vae_at_k1():
    model, x = tiny_model(x_dim=4, latent_dims=(2, 2)), binary_batch(B, 4)
    iwae_grads, vae_grads = (_objective_grads(model, x, 3, k=1, bound=bound) for bound in ("iwae", "vae"))
    _assert_grads_close(iwae_grads, vae_grads)


def _decoder_names(model):
    return [n for n, _ in model.named_parameters() if n.startswith("decoder")]


def _encoder_names(model):
    return [n for n, _ in model.named_parameters() if n.startswith("encoder")]


@pytest.mark.parametrize("estimator", ["stl", "dreg"])
def test_decoder_gradients_equal_reparam_on_the_same_noise(estimator):
    model, x = tiny_model(x_dim=4, latent_dims=(2, 2)), binary_batch(B, 4)
    got = _objective_grads(model, x, 4, k=K, bound="iwae", estimator=estimator)
    want = _objective_grads(model, x, 4, k=K, bound="iwae")
    _assert_grads_close(got, want, _decoder_names(model))


@pytest.mark.parametrize("latent_dims", [(2,), (2, 2)])
def test_dreg_encoder_gradient_is_squared_weight_path_derivative(latent_dims):
    """DReG's encoder gradient: sum_i w~_i^2 d log w_i / dphi through the samples, log q's parameters fixed."""
    model, x = tiny_model(x_dim=4, latent_dims=latent_dims), binary_batch(B, 4)
    got = _objective_grads(model, x, 5, k=K, bound="iwae", estimator="dreg")
    want = _per_sample_weighted(model, x, 5, lambda lw: torch.softmax(lw, 0) ** 2, stop_q_grad=True)
    _assert_grads_close(got, want, _encoder_names(model))


def test_stl_encoder_gradient_is_weighted_path_derivative():
    model, x = tiny_model(x_dim=4, latent_dims=(2, 2)), binary_batch(B, 4)
    got = _objective_grads(model, x, 6, k=K, bound="iwae", estimator="stl")
    want = _per_sample_weighted(model, x, 6, lambda lw: torch.softmax(lw, 0), stop_q_grad=True)
    _assert_grads_close(got, want)
    # and it differs from the full reparameterisation gradient (the score term is really dropped)
    full = _objective_grads(model, x, 6, k=K, bound="iwae")
    assert not torch.allclose(got["encoder.0.log_std.bias"], full["encoder.0.log_std.bias"])


@pytest.mark.parametrize("latent_dims", [(2,), (2, 2)])
def test_stl_is_eq14_without_the_score_term_of_log_q(latent_dims):
    """Roeder et al. (2017), against a reference that shares no code with the model's gradient stopping: STL's
    encoder gradient is Eq. 14's plus sum_i w~_i d/dphi log q_phi(h_i | x) at the drawn samples held fixed (the
    score term that the full gradient holds with a minus sign), log q computed here with torch.distributions."""
    model, x = tiny_model(x_dim=4, latent_dims=latent_dims), binary_batch(B, 4)
    got = _objective_grads(model, x, 9, k=K, bound="iwae", estimator="stl")
    full = _objective_grads(model, x, 9, k=K, bound="iwae")
    out = model.forward_samples(x, K, generator=torch.Generator().manual_seed(9))
    w_tilde = torch.softmax(out.log_w.detach(), 0)  # (K, B)
    log_q, cond = 0.0, x
    for layer, h in zip(model.encoder, out.samples):
        h = h.detach()
        mean, log_std = layer(cond)
        log_q = log_q + torch.distributions.Normal(mean, log_std.exp()).log_prob(h).sum(-1)  # (K, B)
        cond = h
    score = _grads(model, (w_tilde * log_q).sum(0).mean())
    names = _encoder_names(model)
    _assert_grads_close(got, {n: full[n] + score[n] for n in names}, names)
    assert max(score[n].abs().max().item() for n in names) > 0.1  # the term is there to be dropped


def test_piwae_routes_miwae_to_encoder_and_iwae_to_decoder():
    """Rainforth et al. (2018): the generative network on the tighter IWAE bound of all m*k samples, the recognition
    network on MIWAE(m, k), whose gradient has the higher signal-to-noise ratio; the value is the IWAE bound."""
    model, x = tiny_model(x_dim=4, latent_dims=(2,)), binary_batch(B, 4)
    got = _objective_grads(model, x, 7, k=3, m=2, bound="piwae")
    enc = _objective_grads(model, x, 7, k=3, m=2, bound="miwae")
    dec = _objective_grads(model, x, 7, k=6, bound="iwae")
    _assert_grads_close(got, enc, _encoder_names(model))
    _assert_grads_close(got, dec, _decoder_names(model))
    assert not torch.allclose(enc["encoder.0.mean.weight"], dec["encoder.0.mean.weight"])  # the routing matters
    value = iwae.objective(model, x, k=3, m=2, bound="piwae", generator=torch.Generator().manual_seed(7))
    want = iwae.objective(model, x, k=6, generator=torch.Generator().manual_seed(7)).item()
    assert value.item() == pytest.approx(want, rel=1e-12)  # (the surrogate's value, replaced: last bits differ)


@pytest.mark.parametrize("latent_dims", [(2,), (2, 2)])
def test_piwae_with_dreg_gives_the_encoder_miwaes_dreg_gradient_and_the_decoder_iwaes(latent_dims):
    """PIWAE's routing with DReG: the generative network's gradient as with reparam (IWAE of all m*k samples), the
    recognition network's MIWAE(m, k)'s DReG gradient on the same noise; the value unchanged."""
    model, x = tiny_model(x_dim=4, latent_dims=latent_dims), binary_batch(B, 4)
    got = _objective_grads(model, x, 7, k=3, m=2, bound="piwae", estimator="dreg")
    _assert_grads_close(got, _objective_grads(model, x, 7, k=3, m=2, bound="piwae"), _decoder_names(model))
    enc = _objective_grads(model, x, 7, k=3, m=2, bound="miwae", estimator="dreg")
    _assert_grads_close(got, enc, _encoder_names(model))
    reparam = _objective_grads(model, x, 7, k=3, m=2, bound="miwae")
    assert not torch.allclose(enc["encoder.0.mean.weight"], reparam["encoder.0.mean.weight"])  # DReG's differs
    value = iwae.objective(
        model, x, k=3, m=2, bound="piwae", estimator="dreg", generator=torch.Generator().manual_seed(7)
    )
    want = iwae.objective(model, x, k=6, generator=torch.Generator().manual_seed(7)).item()
    assert value.item() == pytest.approx(want, rel=1e-12)


def test_miwae_and_ciwae_objectives_match_their_bounds():
    model, x = tiny_model(x_dim=4, latent_dims=(2,)), binary_batch(B, 4)
    _assert_grads_close(_objective_grads(model, x, 8, k=6, m=1, bound="miwae"), _objective_grads(model, x, 8, k=6))
    _assert_grads_close(_objective_grads(model, x, 8, k=6, bound="ciwae", beta=0.0), _objective_grads(model, x, 8, k=6))
    _assert_grads_close(
        _objective_grads(model, x, 8, k=6, bound="ciwae", beta=1.0), _objective_grads(model, x, 8, k=6, bound="vae")
    )


def _mean_and_se(model, x, estimator, n, seed, copies=15, **kw):
    """The mean gradient over n draws and its standard error; the IWAE bound unless ``kw`` names another (with its
    parameters). Each of the n / copies calls (seeds seed, seed + 1, ...) takes ``copies`` independent draws at once,
    on as many copies of the batch x; its gradient, their mean, is one replicate."""
    kw = {"k": K, "bound": "iwae", **kw}
    xs = x.repeat(copies, 1)
    gs = [_objective_grads(model, xs, seed + r, estimator=estimator, **kw) for r in range(n // copies)]
    flat = torch.stack([torch.cat([g.flatten() for g in d.values()]) for d in gs])
    return flat.mean(0), flat.std(0) / len(flat) ** 0.5


@functools.cache
def _eq14_reference(latent_dims: tuple[int, ...]):
    """The model, batch, Eq. 14's mean gradient with its standard error, and the plain ELBO's mean gradient that
    the tests below compare against; computed once for every estimator (each is 1,500 draws)."""
    model, x = tiny_model(x_dim=3, latent_dims=latent_dims, seed=3), binary_batch(B, 3)
    m2, se2 = _mean_and_se(model, x, "reparam", 1500, 20_000)
    vae, _ = _mean_and_se(model, x, "reparam", 1500, 30_000, bound="vae")
    return model, x, m2, se2, vae


@pytest.mark.parametrize("latent_dims", [(1,), pytest.param((1, 1), marks=pytest.mark.slow)])
@pytest.mark.parametrize("estimator", ["sample-one", "dreg"])
def test_estimator_is_unbiased_for_eq14(estimator, latent_dims):
    """Averaged over many draws, the estimator's gradient equals the averaged Eq. 14 gradient, every parameter
    (two stochastic layers too: DReG's extra weight on every path into the recognition network)."""
    model, x, m2, se2, vae = _eq14_reference(latent_dims)
    m1, se1 = _mean_and_se(model, x, estimator, 1500, 10_000)
    z = (m1 - m2) / torch.sqrt(se1**2 + se2**2 + 1e-12)
    assert z.abs().max() < 4.5, z  # ~40 parameters: |z| < 4.5 for all of them unless biased
    # the test has power: the plain ELBO gradient (a different expectation) fails it
    assert ((m1 - vae).abs() / (se1 + 1e-12)).max() > 4.5


def _miwae_grads(model, x, seed, estimator, m=2):
    return _objective_grads(model, x, seed, k=K, bound="miwae", m=m, estimator=estimator)


@pytest.mark.parametrize("latent_dims", [(2,), (2, 2)])
def test_dreg_on_miwae_is_dreg_within_each_group_averaged_over_the_groups(latent_dims):
    """MIWAE(m, k) with DReG: the decoder as reparam's on the same noise; the encoder sum over groups g and samples
    i of w~_gi^2 d log w_gi / dphi through the samples, / m, with w~ normalised within each group of k."""
    m, n = 2, 2 * K
    model, x = tiny_model(x_dim=4, latent_dims=latent_dims), binary_batch(B, 4)
    got = _miwae_grads(model, x, 7, "dreg", m)
    _assert_grads_close(got, _miwae_grads(model, x, 7, "reparam", m), _decoder_names(model))
    out = model.forward_samples(x, n, generator=torch.Generator().manual_seed(7), stop_q_grad=True)
    c = torch.softmax(out.log_w.detach().reshape(m, K, B), 1).reshape(n, B) ** 2 / m
    want = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for i in range(n):
        for b in range(B):
            for name, g in _grads(model, out.log_w[i, b], retain_graph=True).items():
                want[name] += c[i, b] * g / B
    _assert_grads_close(got, want, _encoder_names(model))
    value = iwae.objective(
        model, x, k=K, bound="miwae", m=m, estimator="dreg", generator=torch.Generator().manual_seed(7)
    )
    torch.testing.assert_close(value, -bounds.miwae(out.log_w.detach(), K).mean())


@pytest.mark.slow  # two sets of 1,500 gradient draws
def test_dreg_on_miwae_is_unbiased_for_the_miwae_gradient():
    model, x = tiny_model(x_dim=3, latent_dims=(1,), seed=3), binary_batch(B, 3)

    def mean_and_se(estimator, seed):
        return _mean_and_se(model, x, estimator, 1500, seed, bound="miwae", m=2)

    (m1, se1), (m2, se2) = mean_and_se("dreg", 40_000), mean_and_se("reparam", 50_000)
    assert ((m1 - m2) / torch.sqrt(se1**2 + se2**2 + 1e-12)).abs().max() < 4.5
    # power: STL, biased for a bound of more than one sample per group, fails it
    m3, se3 = mean_and_se("stl", 60_000)
    assert ((m3 - m2).abs() / torch.sqrt(se3**2 + se2**2 + 1e-12)).max() > 4.5


# DReG for the other bounds of log-weights: the encoder's path weight c_i - dc_i/d log w_i in closed form
_PATH_WEIGHT = {
    "vr": (dict(alpha=0.2), lambda lw: (c := torch.softmax(0.8 * lw, 0)) * (0.2 + 0.8 * c)),  # alpha != 1 - alpha
    "ciwae": (dict(beta=0.3), lambda lw: 0.3 / K + 0.7 * torch.softmax(lw, 0) ** 2),
}


@pytest.mark.parametrize("bound", list(_PATH_WEIGHT))
def test_dreg_on_the_renyi_and_ciwae_bounds_is_the_path_derivative_with_their_weights(bound):
    params, weight = _PATH_WEIGHT[bound]
    model, x = tiny_model(x_dim=4, latent_dims=(2, 2)), binary_batch(B, 4)
    got = _objective_grads(model, x, 8, k=K, bound=bound, estimator="dreg", **params)
    _assert_grads_close(got, _objective_grads(model, x, 8, k=K, bound=bound, **params), _decoder_names(model))
    want = _per_sample_weighted(model, x, 8, weight, stop_q_grad=True)
    _assert_grads_close(got, want, _encoder_names(model))


@pytest.mark.slow  # 1,500 gradient draws of two estimators
def test_piwae_with_dreg_is_unbiased_for_piwaes_gradient():
    model, x = tiny_model(x_dim=3, latent_dims=(1,), seed=3), binary_batch(B, 3)
    m1, se1 = _mean_and_se(model, x, "dreg", 1500, 40_000, k=2, bound="piwae", m=2)
    m2, se2 = _mean_and_se(model, x, "reparam", 1500, 50_000, k=2, bound="piwae", m=2)
    assert ((m1 - m2) / torch.sqrt(se1**2 + se2**2 + 1e-12)).abs().max() < 4.5
    # power: IWAE-DReG over all four samples has the same decoder gradient but another encoder target
    m3, se3 = _mean_and_se(model, x, "dreg", 1500, 60_000, k=4, bound="iwae")
    assert ((m3 - m2).abs() / torch.sqrt(se3**2 + se2**2 + 1e-12)).max() > 4.5


@pytest.mark.slow  # 1,500 gradient draws of three estimators for each bound
@pytest.mark.parametrize("bound", list(_PATH_WEIGHT))
def test_dreg_on_the_renyi_and_ciwae_bounds_is_unbiased(bound):
    params = _PATH_WEIGHT[bound][0]
    model, x = tiny_model(x_dim=3, latent_dims=(1,), seed=3), binary_batch(B, 3)

    def mean_and_se(estimator, seed):
        return _mean_and_se(model, x, estimator, 1500, seed, bound=bound, **params)

    (m1, se1), (m2, se2) = mean_and_se("dreg", 70_000), mean_and_se("reparam", 80_000)
    assert ((m1 - m2) / torch.sqrt(se1**2 + se2**2 + 1e-12)).abs().max() < 4.5
    m3, se3 = mean_and_se("stl", 90_000)  # power: STL drops a score term whose mean is not zero for these bounds
    assert ((m3 - m2).abs() / torch.sqrt(se3**2 + se2**2 + 1e-12)).max() > 4.5


# Every bound that declares path weights (iwae.objectives.registry), a new one too: c_i and c_i f_i against autograd
# of the bound's value, c_i = dL/d log w_i and c_i f_i = c_i - dc_i/d log w_i (iwae.objectives.dreg's docstring).
_DECLARED = [name for name, spec in BOUNDS.items() if spec.path_weights is not None]
_OFF_DEFAULT = {"m": 3, "beta": 0.3, "alpha": 0.2}  # parameters away from their special values (beta 0, alpha 0.5)


def test_dreg_is_defined_for_exactly_the_bounds_that_declare_path_weights_and_piwae():
    assert _DECLARED == ["iwae", "miwae", "ciwae", "vr"]
    dreg = ESTIMATORS_BY_NAME["dreg"]
    assert [name for name, spec in BOUNDS.items() if dreg.defined_for(name, spec)] == _DECLARED

    class IWAEOnly(type(dreg)):  # a variant that names its bounds is restricted to those
        bounds = ("iwae",)

    assert [name for name, spec in BOUNDS.items() if IWAEOnly().defined_for(name, spec)] == ["iwae"]
    # PIWAE's own routing lists dreg (its encoder's MIWAE gradient; tested below)
    pattern = "estimator 'dreg' is defined for bound='iwae', 'miwae', 'ciwae', 'piwae' or 'vr' only, got bound='vae'"
    with pytest.raises(ValueError, match=pattern):
        iwae.Objective("vae", 2, "dreg")


@pytest.mark.parametrize("bound", _DECLARED)
def test_each_declared_path_weight_is_c_minus_its_own_derivative(bound):
    params = {name: _OFF_DEFAULT[name] for name in BOUND_PARAMS[bound]}
    objective = iwae.Objective(bound, 4, "dreg", **params)
    n = objective.samples_per_example
    log_w = (3 * torch.randn(n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))).requires_grad_()
    (c_auto,) = torch.autograd.grad(objective.per_example(log_w).sum(), log_w, create_graph=True)
    # examples are independent, so row i of the gradient of sum_b c_ib is dc_ib/d log w_ib
    own = torch.stack([torch.autograd.grad(c_auto[i].sum(), log_w, retain_graph=True)[0][i] for i in range(n)])
    c, f = objective.path_weights(log_w.detach())
    torch.testing.assert_close(c, c_auto.detach())
    torch.testing.assert_close(c * f, (c_auto - own).detach())


class _TruncatedPrior(iwae.GaussianLatentModel):
    """A model whose p(x, h) vanishes for h_0 > 1 (log w = -inf there), or, with ``far``, is e^-10000 times smaller
    (a weight that underflows to the same zero but is finite)."""

    far = False

    def forward_samples(self, x, k, **kw):
        out = super().forward_samples(x, k, **kw)
        outside = out.samples[0][..., 0].detach() > 1
        log_w = torch.where(outside, out.log_w - 1e4 if self.far else float("-inf"), out.log_w)
        return type(out)(log_w, out.samples, out.noise)


class _MeanAndLogStd(torch.nn.Module):
    def __init__(self, x_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(x_dim, 2 * latent_dim)

    def forward(self, x):
        return tuple(self.linear(x).chunk(2, -1))


def _admitted(bound: str, estimator: str) -> bool:
    spec = BOUNDS[bound]
    if spec.estimators is not None:
        return estimator in spec.estimators
    return ESTIMATORS_BY_NAME[estimator].defined_for(bound, spec)


# Bounds that stay finite while a sample of each example (each group) keeps a nonzero weight; the ELBO and CIWAE
# (beta > 0) average log w itself, so a zero weight makes them -inf.
_FINITE_AT_ZERO_WEIGHT = [
    (bound, estimator)
    for bound in BOUNDS
    if bound not in ("vae", "ciwae")
    for estimator in ESTIMATORS_BY_NAME
    if _admitted(bound, estimator)
]


@pytest.mark.parametrize(("bound", "estimator"), _FINITE_AT_ZERO_WEIGHT)
def test_a_sample_of_weight_zero_adds_nothing_to_value_or_gradient(bound, estimator):
    """log w_i = -inf (p(x, h_i) = 0) gives the loss and the gradient of a weight that underflows to zero, not NaN."""
    torch.manual_seed(0)
    model = _TruncatedPrior(_MeanAndLogStd(5, 2), torch.nn.Linear(2, 5), latent_dim=2, x_dim=5).double()
    x = binary_batch(B, 5, seed=1)
    params = {name: _OFF_DEFAULT[name] for name in BOUND_PARAMS[bound] if name != "m"}
    grouped = BOUNDS[bound].grouped
    objective = iwae.Objective(bound, 3 if grouped else 6, estimator, m=2 if grouped else 1, **params)
    n = objective.samples_per_example  # 6
    noise = model.draw_noise(n, B, torch.Generator().manual_seed(4))
    outside = model.forward_samples(x, n, noise=noise).samples[0][..., 0] > 1
    groups = outside.reshape(-1, objective.k, B)
    assert outside.any() and not groups.all(1).any()  # some weights are zero, none of a whole group
    results = []
    for far in (False, True):
        model.far = far
        loss = objective.loss(model, x, generator=torch.Generator().manual_seed(5), noise=noise)
        results.append((loss.detach(), _grads(model, loss)))
    (loss_inf, grads_inf), (loss_far, grads_far) = results
    assert torch.isfinite(loss_inf)
    torch.testing.assert_close(loss_inf, loss_far, rtol=0, atol=0)
    _assert_grads_close(grads_inf, grads_far, rtol=0, atol=0)
    assert all(torch.isfinite(g).all() for g in grads_inf.values())


def test_weighted_sum_gives_a_zero_weight_no_value_and_no_gradient_either_way():
    from iwae.objectives.base import weighted_sum

    weights = torch.tensor([[0.0], [2.0]], dtype=torch.float64, requires_grad=True)
    terms = torch.tensor([[float("-inf")], [3.0]], dtype=torch.float64, requires_grad=True)
    value = weighted_sum(weights, terms)
    value.sum().backward()
    assert value.tolist() == [6.0]
    assert weights.grad.tolist() == [[0.0], [3.0]] and terms.grad.tolist() == [[0.0], [2.0]]
