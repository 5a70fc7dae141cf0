"""Your own model: GaussianLatentModel fulfils the protocol the objectives, the train step and log_likelihood read."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

import iwae
from iwae.models.latent_model import GaussianLatentModel, SampledModel
from iwae.objectives import Objective

OBJECTIVES = [("vae", "reparam"), ("iwae", "reparam"), ("iwae", "stl"), ("iwae", "dreg"), ("iwae", "sample-one"),
              ("iwae", "rws"), ("iwae", "rws-dreg"), ("vr", "reparam"), ("miwae", "reparam"),
              ("piwae", "reparam"), ("piwae", "dreg")]  # fmt: skip

# Every bound is given the parameters of the others on purpose (tests/test_objectives.py checks that this warns).
pytestmark = pytest.mark.filterwarnings("ignore:.*has no effect on bound")


def _pair(seed: int = 0) -> tuple[iwae.IWAE, GaussianLatentModel]:
    """A small 1-layer IWAE and the same networks (its own layer objects) as a GaussianLatentModel."""
    paper = iwae.IWAE(
        x_dim=12, latent_dims=[3], q_hidden=[[8]], p_hidden=[[8]], generator=torch.Generator().manual_seed(seed)
    )
    return paper, GaussianLatentModel(paper.encoder[0], paper.decoder[-1], latent_dim=3, x_dim=12)


def test_both_models_fulfil_the_protocol():
    paper, own = _pair()
    assert isinstance(paper, SampledModel) and isinstance(own, SampledModel)
    assert not isinstance(nn.Linear(2, 2), SampledModel)


@pytest.mark.parametrize("kind,estimator", OBJECTIVES)
def test_every_objective_gives_the_iwae_models_loss_and_gradient_for_the_same_networks(kind, estimator):
    """Same networks, same noise: the loss and every parameter's gradient agree with the paper model's (whose
    estimators are checked against per-sample autograd and closed forms elsewhere)."""
    paper, own = _pair()
    x = torch.bernoulli(torch.full((6, 12), 0.4), generator=torch.Generator().manual_seed(1))
    objective = Objective(kind, 4, estimator, m=2)
    grads = []
    for model in (paper, own):
        model.zero_grad()
        loss = objective.loss(model, x, torch.Generator().manual_seed(2))
        loss.backward()
        grads.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_a, grad_a), (loss_b, grad_b) = grads
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    names = {n.replace("encoder.0.", "encoder.").replace("decoder.0.", "decoder."): g for n, g in grad_a.items()}
    assert set(grad_b) == set(names)
    for n, g in grad_b.items():
        torch.testing.assert_close(g, names[n], rtol=1e-4, atol=1e-5)


def test_log_likelihood_scores_it_with_a_generator_as_it_scores_the_paper_model():
    paper, own = _pair()
    x = torch.bernoulli(torch.full((5, 12), 0.4), generator=torch.Generator().manual_seed(1))
    a, b = (
        iwae.log_likelihood(m, x, 300, generator=torch.Generator().manual_seed(3), progress=False) for m in (paper, own)
    )
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert [t.shape for t in iwae.active_units(own, x)] == [torch.Size([3])]


def test_l_k_of_a_1d_latent_model_approaches_its_exact_log_likelihood():
    """log p(x) = log of the integral over h of N(h; 0, 1) prod_j Bernoulli(x_j; sigmoid(a_j h + b_j)), on a grid."""
    torch.manual_seed(0)
    decoder = nn.Linear(1, 4).double()

    class Encoder(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # q wider than the prior: the weights are bounded, so L_k's error is a few standard errors at most
            return torch.zeros_like(x[:, :1]), torch.full((x.shape[0], 1), math.log(1.5), dtype=x.dtype)

    model = GaussianLatentModel(Encoder(), decoder, latent_dim=1, x_dim=4).double()
    x = torch.tensor([[1.0, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]], dtype=torch.float64)
    h = torch.linspace(-12, 12, 200_001, dtype=torch.float64).unsqueeze(-1)
    logits = decoder(h)  # (grid, 4)
    with torch.no_grad():
        log_joint = (
            (x.unsqueeze(1) * logits - nn.functional.softplus(logits)).sum(-1)
            - 0.5 * h.T.square()
            - 0.5 * math.log(2 * math.pi)
        )
        exact = torch.logsumexp(log_joint, 1) + math.log(h[1, 0] - h[0, 0])
    torch.manual_seed(1)
    estimate, stderr = iwae.log_likelihood(model, x, 20_000, progress=False, return_stderr=True)
    assert (stderr < 0.01).all() and ((estimate - exact).abs() < 4 * stderr).all()
    elbo = iwae.bounds.elbo(model.log_weights(x, 20_000).detach())
    assert (elbo < exact - 1e-3).all()  # Theorem 1: L_1 <= L_k <= log p(x)


def test_a_wrongly_shaped_encoder_or_decoder_is_named():
    class Bad(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :3]

    model = GaussianLatentModel(Bad(), nn.Linear(3, 12), latent_dim=3, x_dim=12)
    with pytest.raises(TypeError, match=r"encoder must return \(mean, log_std\)"):
        model.log_weights(torch.zeros(2, 12), 4)
    _, own = _pair()
    own.decoder = nn.Linear(3, 11)
    with pytest.raises(ValueError, match=r"decoder returned \(4, 2, 11\)"):
        own.log_weights(torch.zeros(2, 12), 4)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 12\)"):
        own.log_weights(torch.zeros(2, 10), 4)


def test_the_train_step_trains_it():
    torch.manual_seed(0)
    _, own = _pair()
    x = torch.bernoulli(torch.full((40, 12), 0.2), generator=torch.Generator().manual_seed(1))
    step = iwae.make_train_step(own, iwae.make_optimizer(own, lr=1e-2), k=5, estimator="dreg")
    first = [step(x).item() for _ in range(5)]
    last = [step(x).item() for _ in range(100)][-5:]
    assert sum(last) / 5 < sum(first) / 5 - 0.5
    assert own.sample(7).shape == (7, 12)


def test_sampling_calls_the_decoder_on_samples_shaped_as_in_training():
    """A decoder written for (k, batch, latent_dim) samples, as the docstring describes them, samples too."""

    class Unpacking(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 5)

        def forward(self, h):
            k, batch, d = h.shape  # the shape training gives it
            return self.linear(h.reshape(k * batch, d)).reshape(k, batch, 5)

    model = GaussianLatentModel(nn.Linear(5, 4), Unpacking(), latent_dim=2, x_dim=5)  # (sampling reads no encoder)
    means = model.sample(7, generator=torch.Generator().manual_seed(0))
    assert means.shape == (7, 5) and ((means > 0) & (means < 1)).all()


@pytest.mark.parametrize("bound,estimator", [("iwae", "rws"), ("piwae", "reparam")])
def test_routing_estimators_refuse_a_parameter_outside_encoder_and_decoder(bound, estimator):
    """RWS and PIWAE give model.encoder and model.decoder each its own gradient: a parameter of neither (a learnable
    prior on the model itself) would get a wrong one, silently; it is named instead."""
    _, own = _pair()
    own.prior_log_std = nn.Parameter(torch.zeros(3))
    x = torch.bernoulli(torch.full((4, 12), 0.5))
    with pytest.raises(ValueError, match="prior_log_std belong to neither; move them into one"):
        iwae.objective(own, x, k=2, m=2, bound=bound, estimator=estimator)


def test_routing_estimators_refuse_networks_that_share_parameters():
    _, own = _pair()
    own.decoder.shared = next(own.encoder.parameters())  # one tensor in both networks
    x = torch.bernoulli(torch.full((4, 12), 0.5))
    with pytest.raises(ValueError, match="rws routes gradients to model.encoder and model.decoder apart, but they"):
        iwae.objective(own, x, k=2, bound="iwae", estimator="rws")


class _IgnoresStopQGrad(GaussianLatentModel):
    """A model of one's own whose forward_samples takes the path keywords and drops stop_q_grad."""

    def forward_samples(self, x, k, *, noise=None, generator=None, stop_q_grad=False, sample_hook=None):
        return super().forward_samples(x, k, noise=noise, generator=generator, sample_hook=sample_hook)


class _IgnoresSampleHook(GaussianLatentModel):
    def forward_samples(self, x, k, *, noise=None, generator=None, stop_q_grad=False, sample_hook=None):
        return super().forward_samples(x, k, noise=noise, generator=generator, stop_q_grad=stop_q_grad)


class _Honours(GaussianLatentModel):
    def forward_samples(self, x, k, **kwargs):
        return super().forward_samples(x, k, **kwargs)


class _PriorOnTheEncoder(_Honours):
    """Honours both keywords, and its log p reads the encoder's parameters by right (as a VampPrior's pseudo-inputs
    or tied weights do): a term the same under every probe."""

    def forward_samples(self, x, k, **kwargs):
        out = super().forward_samples(x, k, **kwargs)
        return out._replace(log_w=out.log_w + 1e-3 * sum(p.sum() for p in self.encoder.parameters()))


@pytest.mark.parametrize("bound,estimator", [("iwae", "stl"), ("iwae", "dreg"), ("iwae", "rws"),
                                             ("iwae", "rws-dreg"), ("piwae", "dreg")])  # fmt: skip
@pytest.mark.parametrize("cls,ignored", [(_IgnoresStopQGrad, "stop_q_grad"), (_IgnoresSampleHook, "sample_hook")])
def test_a_model_that_ignores_the_path_keywords_is_refused_by_the_estimators_that_read_them(cls, ignored, bound,
                                                                                            estimator):  # fmt: skip
    """STL, DReG and RWS read a model through stop_q_grad and sample_hook; one that drops either would train on the
    reparameterisation gradient (or another) under their name, without a word. Reparam needs neither; a model that
    honours both is trained, a term of log p that reads the encoder by right included."""
    paper, _ = _pair()
    model, honest, prior = (c(paper.encoder[0], paper.decoder[-1], latent_dim=3, x_dim=12)
                            for c in (cls, _Honours, _PriorOnTheEncoder))  # fmt: skip
    x = torch.bernoulli(torch.full((4, 12), 0.5), generator=torch.Generator().manual_seed(0))
    before = [p.clone() for p in model.parameters()]
    message = f"{cls.__name__}.forward_samples ignores {ignored}: the encoder's gradient is the same with it as " \
        f"without it, so estimator '{estimator}' would train on another"  # fmt: skip
    with pytest.raises(TypeError, match=message):
        iwae.objective(model, x, k=2, m=2, bound=bound, estimator=estimator)
    assert all(torch.equal(a, b) and b.grad is None for a, b in zip(before, model.parameters()))  # left as found
    assert model.training
    iwae.objective(model, x, k=2, m=2, bound=bound, estimator="reparam").backward()
    iwae.objective(honest, x, k=2, m=2, bound=bound, estimator=estimator).backward()  # one of its own that honours
    iwae.objective(prior, x, k=2, m=2, bound=bound, estimator=estimator).backward()


def test_the_probe_waits_for_an_encoder_to_train_and_guards_a_compiled_step():
    """Not probed, and asked again: a frozen encoder, or inference mode. A compiled STL step probes before its
    trace (where no probe can run)."""
    paper, _ = _pair()
    model = _IgnoresSampleHook(paper.encoder[0], paper.decoder[-1], latent_dim=3, x_dim=12)
    x = torch.bernoulli(torch.full((4, 12), 0.5), generator=torch.Generator().manual_seed(0))
    model.encoder.requires_grad_(False)
    iwae.objective(model, x, k=2, estimator="stl").backward()  # nothing of q's to train: nothing to refuse yet
    model.encoder.requires_grad_(True)
    with torch.inference_mode():
        iwae.Objective("iwae", 2, "stl").loss(model, x)
    step = iwae.make_train_step(model, iwae.make_optimizer(model), k=2, estimator="stl", compile=True)
    with pytest.raises(TypeError, match="_IgnoresSampleHook.forward_samples ignores sample_hook"):
        step(x)


def test_per_example_gradients_under_vmap_are_not_stopped_by_the_probe():
    """Inside torch.func transforms the probe (whose own noise draw vmap refuses) waits: per-example STL gradients
    of a model of one's own by vmap(grad(...)) average to the batch gradient, and a model that ignores a keyword is
    refused at its first call outside a transform."""
    paper, _ = _pair()
    x = torch.bernoulli(torch.full((4, 12), 0.5), generator=torch.Generator().manual_seed(0))
    stl = iwae.Objective("iwae", 2, "stl")

    class Loss(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, xi, eps):  # one example: (x_dim,) and its (k, d) noise
            return stl.loss(self.model, xi[None], noise=[eps[:, None]])

    for cls in (_Honours, _IgnoresSampleHook):
        model = cls(paper.encoder[0], paper.decoder[-1], latent_dim=3, x_dim=12)
        noise, loss = model.draw_noise(2, 4, torch.Generator().manual_seed(0)), Loss(model)
        params = {f"model.{name}": p.detach() for name, p in model.named_parameters()}
        grad = torch.func.grad(functools.partial(torch.func.functional_call, loss))  # of (params, (xi, eps))
        per_example = torch.func.vmap(grad, in_dims=(None, (0, 1)))(params, (x, noise[0]))
        if cls is _Honours:
            stl.loss(model, x, noise=noise).backward()
            for name, p in model.named_parameters():
                torch.testing.assert_close(per_example[f"model.{name}"].mean(0), p.grad)
        else:
            with pytest.raises(TypeError, match="_IgnoresSampleHook.forward_samples ignores sample_hook"):
                stl.loss(model, x, noise=noise)


def test_a_model_without_forward_is_named_by_the_estimators_that_call_it_through_functional_call():
    class NoForward(nn.Module):
        def __init__(self, own):
            super().__init__()
            self.encoder, self.decoder, self.latent_dims, self.inner = own.encoder, own.decoder, [3], own

        def forward_samples(self, x, k, **kwargs):
            return self.inner.forward_samples(x, k, **kwargs)

        def draw_noise(self, k, batch, generator=None, out=None):
            return self.inner.draw_noise(k, batch, generator)

    model = NoForward(_pair()[1])
    with pytest.raises(TypeError, match="rws calls NoForward through torch.func.functional_call, which needs its "
                       r"forward: define forward\(self, x, k, \*\*kwargs\)"):  # fmt: skip
        iwae.objective(model, torch.bernoulli(torch.full((4, 12), 0.5)), k=2, bound="iwae", estimator="rws")
