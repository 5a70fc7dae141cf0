"""iwae.Objective: the compatibility rules, sample counts, compilability, and the loss against iwae.objective."""

from __future__ import annotations

import argparse
import dataclasses
import warnings

import pytest
import torch
from conftest import binary_batch, tiny_model

import iwae
from iwae.objectives import BOUNDS, ESTIMATORS_BY_NAME

B = 3
# Every (bound, estimator) pair the rules admit, listed by hand from the module docstrings.
VALID = [
    ("vae", "reparam"), ("vae", "stl"),
    ("iwae", "reparam"), ("iwae", "sample-one"), ("iwae", "stl"), ("iwae", "dreg"),
    ("miwae", "reparam"), ("miwae", "stl"), ("miwae", "dreg"),
    ("ciwae", "reparam"), ("ciwae", "stl"), ("ciwae", "dreg"),
    ("piwae", "reparam"), ("piwae", "dreg"),
    ("vr", "reparam"), ("vr", "stl"), ("vr", "dreg"), ("iwae", "rws"), ("iwae", "rws-dreg"),
]  # fmt: skip

# Many tests give every bound the parameters of the others on purpose (checked elsewhere to warn).
pytestmark = pytest.mark.filterwarnings("ignore:.*has no effect on bound")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(bound="elbo"), "unknown bound 'elbo'; choose one of vae, iwae, miwae, ciwae, piwae, vr$"),
        (dict(estimator="reinforce"),
         "unknown estimator 'reinforce'; choose one of reparam, sample-one, stl, dreg, rws, rws-dreg$"),
        (dict(k=0), "k must be a positive integer number of samples, got 0"),
        (dict(k=2.0), "k must be a positive integer number of samples, got 2.0"),
        (dict(m=0), "m must be an integer >= 1, got 0"),
        (dict(m=2.0), "m must be an integer >= 1, got 2.0"),
        (dict(bound="vr", alpha=1.0), r"alpha must be a number in \[0, 1\), got 1.0"),
        (dict(bound="vae", estimator="dreg"),
         "estimator 'dreg' is defined for bound='iwae', 'miwae', 'ciwae', 'piwae' or 'vr' only, got bound='vae'"),
        (dict(bound="miwae", estimator="sample-one"), "estimator 'sample-one' is defined for bound='iwae' only"),
        (dict(bound="piwae", estimator="rws"),
         "estimator 'rws' is not defined for bound='piwae'; use 'reparam' or 'dreg'$"),
        (dict(bound="piwae", estimator="stl"),
         "estimator 'stl' is not defined for bound='piwae'; use 'reparam' or 'dreg'$"),
        (dict(bound="ciwae", beta=1.5), r"beta must be a number in \[0, 1\], got 1.5"),
        (dict(bound="ciwae", beta=-0.1), r"beta must be a number in \[0, 1\], got -0.1"),
    ],
)  # fmt: skip
def test_each_rule_is_refused_at_construction_with_its_message(kw, message):
    with pytest.raises(ValueError, match=message):
        iwae.Objective(**kw)
    with pytest.raises(ValueError, match=message):  # iwae.objective checks through the same object
        iwae.objective(tiny_model(x_dim=4), binary_batch(B, 4), **kw)


def test_every_other_combination_is_accepted():
    accepted = {(kind, est) for kind in iwae.KINDS for est in iwae.ESTIMATORS if _valid(kind, est)}
    assert accepted == set(VALID)
    assert iwae.Objective("vae", 5, m=3).samples_per_example == 5  # m is unused outside miwae and piwae,
    assert iwae.Objective("vae", 5, m=3).params == {} and iwae.Objective("ciwae", beta=0.2).params == {"beta": 0.2}
    with pytest.raises(ValueError, match="m must be an integer >= 1"):  # but a count is still a count,
        iwae.Objective("vae", m=0)
    assert iwae.Objective("iwae", beta=7.0).beta == 7.0  # and beta is ignored, so unchecked, outside ciwae
    with pytest.raises(ValueError, match="beta must be a number, got 'x'"):  # though a number
        iwae.Objective("iwae", beta="x")


def _valid(kind: str, est: str) -> bool:
    try:
        iwae.Objective(kind, 2, est, m=2)
    except ValueError:
        return False
    return True


def test_objective_is_a_frozen_value():
    a = iwae.Objective("miwae", 5, "stl", m=2)
    assert a == iwae.Objective(bound="miwae", k=5, estimator="stl", m=2) and hash(a) == hash(dataclasses.replace(a))
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.k = 3  # type: ignore[misc]


@pytest.mark.parametrize(("kind", "want"), [("vae", 5), ("iwae", 5), ("ciwae", 5), ("miwae", 15), ("piwae", 15)])
def test_samples_per_example_is_m_times_k_for_grouped_bounds_only(kind, want):
    assert iwae.Objective(kind, 5, m=3).samples_per_example == want


@pytest.mark.parametrize(("kind", "est"), VALID)
def test_compilable_exactly_for_single_pass_estimators_of_plain_bounds(kind, est):
    obj = iwae.Objective(kind, 2, est, m=2)
    assert obj.compilable == (est in ("reparam", "stl") and kind != "piwae")
    if obj.compilable:
        obj.check_compilable()
    else:
        want = (
            "compile is available for the reparam and stl estimators of the vae, iwae, miwae, ciwae and vr bounds, "
            f"not for estimator='{est}', bound='{kind}'; train without compile"
        )
        with pytest.raises(ValueError, match=f"^{want}$"):
            obj.check_compilable()


@pytest.mark.parametrize(("kind", "est"), VALID)
def test_loss_equals_iwae_objective_exactly(kind, est):
    model, x = tiny_model(x_dim=4, latent_dims=(2, 2)), binary_batch(B, 4)
    got = iwae.Objective(kind, 3, est, m=2, beta=0.3).loss(model, x, torch.Generator().manual_seed(4))
    g_got = torch.autograd.grad(got, list(model.parameters()), allow_unused=True)
    want = iwae.objective(model, x, 3, kind, est, m=2, beta=0.3, generator=torch.Generator().manual_seed(4))
    g_want = torch.autograd.grad(want, list(model.parameters()), allow_unused=True)
    assert torch.equal(got, want)
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(g_got, g_want))


@pytest.mark.parametrize(("kind", "est"), [v for v in VALID if v[1] != "sample-one"])
def test_loss_on_given_noise_equals_loss_drawing_it(kind, est):
    """Noise drawn beforehand with ``draw_noise`` gives the loss of the same draws made inside."""
    model, x = tiny_model(x_dim=4, latent_dims=(2,)), binary_batch(B, 4)
    obj = iwae.Objective(kind, 3, est, m=2)
    noise = model.draw_noise(obj.samples_per_example, B, torch.Generator().manual_seed(5))
    assert torch.equal(obj.loss(model, x, noise=noise), obj.loss(model, x, torch.Generator().manual_seed(5)))


def test_loss_value_is_minus_the_batch_mean_bound():
    model, x = tiny_model(x_dim=4, latent_dims=(2,)), binary_batch(B, 4)
    for kind, est in VALID:
        obj = iwae.Objective(kind, 3, est, m=2, beta=0.3)
        n = obj.samples_per_example
        log_w = model.forward_samples(x, n, generator=torch.Generator().manual_seed(6)).log_w
        loss = obj.loss(model, x, torch.Generator().manual_seed(6))
        torch.testing.assert_close(loss, -obj.per_example(log_w).mean(), msg=f"{kind}/{est}")


def test_registry_declarations_refer_to_each_other():
    assert iwae.KINDS == tuple(BOUNDS) and iwae.ESTIMATORS == tuple(ESTIMATORS_BY_NAME)
    for est in ESTIMATORS_BY_NAME.values():
        assert est.bounds is None or set(est.bounds) <= set(BOUNDS)
    for spec in BOUNDS.values():
        assert spec.estimators is None or set(spec.estimators) <= set(ESTIMATORS_BY_NAME)


def test_the_torch_free_names_are_the_registrys():
    from iwae.objectives import names, registry

    assert names.KINDS == tuple(registry.BOUNDS) and names.ESTIMATORS == tuple(registry.ESTIMATORS_BY_NAME)


def test_the_bound_has_one_name_and_its_former_names_still_work(tmp_path):
    """``bound`` everywhere; ``kind=`` (iwae.objective, make_train_step), ``--objective`` and a config file's
    ``objective`` key are read as it."""
    from iwae.cli.options import add_config_options, config_from_args
    from iwae.runs.config import TrainConfig

    model = iwae.IWAE(x_dim=6, latent_dims=[2], q_hidden=[[4]], p_hidden=[[4]])
    x = torch.bernoulli(torch.full((3, 6), 0.5), generator=torch.Generator().manual_seed(0))
    with pytest.warns(DeprecationWarning, match="kind= is the former name of bound="):
        by_name = [iwae.objective(model, x, 4, generator=torch.Generator().manual_seed(1), **kw).item()
                   for kw in ({"bound": "vae"}, {"kind": "vae"})]  # fmt: skip
    assert by_name[0] == by_name[1] != iwae.objective(model, x, 4, generator=torch.Generator().manual_seed(1)).item()
    with pytest.raises(ValueError, match="bound='vae' and kind='iwae' .* disagree"):
        iwae.objective(model, x, 4, bound="vae", kind="iwae")
    with pytest.warns(DeprecationWarning):
        step = iwae.make_train_step(model, iwae.make_optimizer(model), k=4, kind="vae")
    assert step(x).shape == ()
    parser = argparse.ArgumentParser()
    add_config_options(parser)
    assert config_from_args(parser.parse_args(["--bound", "vae"])).bound == "vae"
    with pytest.warns(FutureWarning, match="--objective is the former name of --bound; write --bound"):
        assert config_from_args(parser.parse_args(["--objective", "vae"])).bound == "vae"
    old = tmp_path / "old.json"
    old.write_text('{"objective": "miwae", "m": 2}')
    assert config_from_args(parser.parse_args([]), old).bound == "miwae"
    assert TrainConfig.from_dict({"objective": "vae", "bound": "vae"}).bound == "vae"
    with pytest.raises(ValueError, match="'objective' .* and 'bound' disagree"):
        TrainConfig.from_dict({"objective": "vae", "bound": "iwae"})


def test_misuse_of_the_training_api_is_named():
    """A k given as a NumPy integer counts; a bound's parameter given to a bound that ignores it is a warning; images
    of 0..255 are refused at the first step; a model without the protocol training needs is named as such."""
    import numpy as np

    model = iwae.IWAE(x_dim=6, latent_dims=[2], q_hidden=[[4]], p_hidden=[[4]])
    assert iwae.Objective("iwae", np.int64(5)).k == 5 and type(iwae.Objective("iwae", np.int64(5)).k) is int
    with pytest.raises(ValueError, match="k must be a positive integer number of samples, got True"):
        iwae.Objective("iwae", True)
    with pytest.warns(UserWarning, match="alpha=0.9 has no effect on bound='iwae': it is read by vr only"):
        iwae.Objective("iwae", 5, alpha=0.9)
    step = iwae.make_train_step(model, iwae.make_optimizer(model), k=2)
    with pytest.raises(ValueError, match="x holds values from 0 to 255"):
        step(torch.tensor([[0.0, 255.0, 3.0, 0.0, 1.0, 9.0]]))

    class ScoresOnly:
        def log_weights(self, x, k):
            return torch.zeros(k, x.shape[0])

    with pytest.raises(TypeError, match="ScoresOnly lacks forward_samples, draw_noise, encoder, decoder, latent_dims"):
        iwae.objective(ScoresOnly(), torch.zeros(2, 6), 2)
    with pytest.raises(TypeError, match="lacks posterior_means or latent_dims"):
        iwae.active_units(ScoresOnly(), torch.zeros(3, 6))


def test_the_loss_function_and_the_train_step_check_what_they_are_given():
    """iwae.objective checks images as the train step and log_likelihood do; bool or integer images are cast to the
    model's dtype; an empty batch and an optimizer of another model are refused."""
    model = iwae.IWAE(x_dim=6, latent_dims=[2], q_hidden=[[4]], p_hidden=[[4]])
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="x holds values from 0 to 255"):
        iwae.objective(model, x * 255, k=2)
    with pytest.raises(ValueError, match=r"at least one example, got \(0, 6\)"):
        iwae.objective(model, x[:0], k=2)
    with pytest.raises(ValueError, match="x is torch.float64 but the model's parameters are torch.float32"):
        iwae.objective(model, x.double(), k=2)
    as_bool = iwae.objective(model, x.bool(), k=2, generator=torch.Generator().manual_seed(0))
    assert as_bool == iwae.objective(model, x, k=2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="the optimizer holds none of the model's parameters"):
        iwae.make_train_step(model, iwae.make_optimizer(iwae.IWAE(6, [2], [[4]], [[4]])), k=2)
    step = iwae.make_train_step(model, iwae.make_optimizer(model), k=2)
    assert torch.isfinite(step(x)) and torch.isfinite(step(x.to(torch.uint8)))  # later batches are cast too
    with pytest.raises(ValueError, match="at least one example"):
        step(x[:0])


def test_a_bound_that_routes_its_gradient_must_list_the_estimators_it_implements():
    from iwae.objectives.base import Bound
    from iwae.objectives.piwae import PIWAERouting

    with pytest.raises(ValueError, match="must list the estimators it implements"):
        Bound(lambda log_w, k, p: log_w.mean(0), gradient=PIWAERouting())


def test_a_bound_registered_from_outside_trains_with_the_estimators_defined_for_it(registry_as_found):
    """VR-max (the largest log-weight; Li & Turner 2016) from outside the package: the reparameterisation gradient
    of its value; a copy of the Rényi bound registered with its parameter and DReG weights gives the built-in
    bound's loss and gradients on the same noise."""
    from iwae import bounds
    from iwae.objectives import Bound, register_bound
    from iwae.objectives.dreg import vr_path_weights

    register_bound("vr-max", Bound(lambda log_w, k, p: log_w.max(0).values))
    register_bound("my-vr", Bound(lambda log_w, k, p: bounds.vr(log_w, p["alpha"]), path_weights=vr_path_weights),
                   params="alpha")  # fmt: skip
    register_bound("my-miwae", Bound(lambda log_w, k, p: bounds.miwae(log_w, k), grouped=True))  # reads m, always
    model, x = tiny_model(x_dim=4), binary_batch(B, 4)
    loss = iwae.objective(model, x, k=3, bound="vr-max", generator=torch.Generator().manual_seed(0))
    out = model.forward_samples(x, 3, generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(-out.log_w.max(0).values.mean().item(), rel=1e-6)
    for estimator in ("reparam", "stl", "dreg"):
        grads = []
        for bound in ("vr", "my-vr"):
            model.zero_grad()
            iwae.Objective(bound, 3, estimator, alpha=0.3).loss(model, x, torch.Generator().manual_seed(1)).backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        assert all(torch.equal(a, b) for a, b in zip(*grads))
    with pytest.raises(ValueError, match="estimator 'dreg' is defined for bound=.*'my-vr' only, got bound='vr-max'"):
        iwae.Objective("vr-max", 3, "dreg")  # no path weights declared
    step = iwae.make_train_step(model, iwae.make_optimizer(model), k=3, bound="vr-max")
    assert torch.isfinite(step(x))
    from iwae.runs.config import TrainConfig

    with pytest.raises(ValueError, match="unknown bound 'vr-max'; choose one of .* \\(a bound added by register_bound "
                       "is known to the process that added it; a run folder names it as MODULE:NAME"):  # fmt: skip
        TrainConfig(bound="vr-max")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # m is its own: no "has no effect" warning
        mine, builtin = iwae.Objective("my-miwae", 2, m=3), iwae.Objective("miwae", 2, m=3)
    assert mine.samples_per_example == 6 and mine.params == {"m": 3}
    losses = [o.loss(model, x, torch.Generator().manual_seed(2)).item() for o in (mine, builtin)]
    assert losses[0] == losses[1]


def test_registering_a_bound_refuses_a_taken_name_an_unknown_parameter_and_a_plain_function(registry_as_found):
    from iwae.objectives import Bound, register_bound

    with pytest.raises(ValueError, match="a bound named 'iwae' exists already; choose another name"):
        register_bound("iwae", Bound(lambda log_w, k, p: log_w.mean(0)))
    with pytest.raises(ValueError, match=r"unknown bound parameter\(s\) 'tau'; a bound reads those .* m, beta, alpha"):
        register_bound("tempered", Bound(lambda log_w, k, p: log_w.mean(0)), params=("tau",))
    with pytest.raises(ValueError, match="a bound's name must be a non-empty string without spaces, got ' vr'"):
        register_bound(" vr", Bound(lambda log_w, k, p: log_w.mean(0)))
    with pytest.raises(TypeError, match="register_bound takes an iwae.objectives.Bound .*, got function"):
        register_bound("plain", lambda log_w, k, p: log_w.mean(0))
    assert "tempered" not in iwae.objectives.BOUNDS and "plain" not in iwae.objectives.BOUNDS


def test_an_estimator_registered_from_outside_trains_the_bounds_it_is_defined_for(registry_as_found):
    """STL written against the public API (objective.per_example of log-weights with q's parameters held) and
    registered gives the built-in STL's loss and gradients bit for bit, for every bound both are defined for; a bound
    that lists its estimators (PIWAE) keeps to its list, and an estimator's own ``bounds`` are kept to."""
    from iwae.objectives import Estimator, register_estimator

    class MySTL(Estimator):
        path_keywords = True

        def loss(self, model, x, objective, generator=None, noise=None):
            out = model.forward_samples(x, objective.samples_per_example, noise=noise, generator=generator,
                                        stop_q_grad=True)  # fmt: skip
            return -objective.per_example(out.log_w).mean()

    class ELBOOnly(MySTL):
        bounds = ("vae",)

    register_estimator("my-stl", MySTL())
    register_estimator("elbo-only", ELBOOnly())
    model, x = tiny_model(x_dim=4), binary_batch(B, 4)
    for bound in ("vae", "iwae", "miwae", "ciwae", "vr"):
        grads, losses = [], []
        for estimator in ("stl", "my-stl"):
            model.zero_grad()
            loss = iwae.Objective(bound, 3, estimator, m=2).loss(model, x, torch.Generator().manual_seed(1))
            loss.backward()
            losses.append(loss.item())
            grads.append([p.grad.clone() for p in model.parameters()])
        assert losses[0] == losses[1] and all(torch.equal(a, b) for a, b in zip(*grads)), bound
    step = iwae.make_train_step(model, iwae.make_optimizer(model), k=3, estimator="my-stl")
    assert torch.isfinite(step(x))
    with pytest.raises(
        ValueError, match="estimator 'my-stl' is not defined for bound='piwae'; use 'reparam' or 'dreg'"
    ):
        iwae.Objective("piwae", 3, "my-stl", m=2)
    with pytest.raises(ValueError, match="estimator 'elbo-only' is defined for bound='vae' only, got bound='iwae'"):
        iwae.Objective("iwae", 3, "elbo-only")
    with pytest.raises(
        ValueError, match="compile is available for the reparam and stl estimators .* not for estimator='my-stl'"
    ):
        iwae.Objective("iwae", 3, "my-stl").check_compilable()
    with pytest.raises(ValueError, match="unknown estimator 'reinforce'; choose one of reparam, .*, rws-dreg, my-stl, "
                       "elbo-only$"):  # fmt: skip
        iwae.Objective("iwae", 3, "reinforce")
    from iwae.runs.config import TrainConfig

    with pytest.raises(ValueError, match="unknown estimator 'my-stl'; choose one of .* \\(an estimator added by "
                       "register_estimator is known to the process that added it"):  # fmt: skip
        TrainConfig(estimator="my-stl")


def test_a_registered_estimator_that_reads_the_path_keywords_probes_a_model_of_ones_own(registry_as_found):
    from test_latent_model import _IgnoresStopQGrad, _pair

    from iwae.objectives import register_estimator
    from iwae.objectives.reparam import StickingTheLanding

    register_estimator("stl-copy", StickingTheLanding())
    paper, _ = _pair()
    model = _IgnoresStopQGrad(paper.encoder[0], paper.decoder[-1], latent_dim=3, x_dim=12)
    with pytest.raises(TypeError, match="_IgnoresStopQGrad.forward_samples ignores stop_q_grad: .* estimator "
                       "'stl-copy' would train on another gradient"):  # fmt: skip
        iwae.Objective("iwae", 3, "stl-copy").loss(model, torch.bernoulli(torch.full((4, 12), 0.5)))


def test_registering_an_estimator_refuses_a_taken_name_a_class_and_a_plain_function(registry_as_found):
    from iwae.objectives import register_estimator
    from iwae.objectives.reparam import Reparam

    with pytest.raises(ValueError, match="an estimator named 'dreg' exists already; choose another name"):
        register_estimator("dreg", Reparam())
    with pytest.raises(ValueError, match="an estimator's name must be a non-empty string without spaces, got ''"):
        register_estimator("", Reparam())
    with pytest.raises(TypeError, match="takes an instance of a subclass of iwae.objectives.Estimator .*, got the "
                       "class Reparam: pass an instance"):  # fmt: skip
        register_estimator("mine", Reparam)
    with pytest.raises(TypeError, match="takes an instance of a subclass .*, got function"):
        register_estimator("mine", lambda model, x, objective, generator, noise: x.sum())
    with pytest.raises(ValueError, match="an estimator's name must be a non-empty string without spaces"):
        register_estimator("my\tstl", Reparam())

    class OneBound(Reparam):
        bounds = "miwae"  # a string, not a tuple: 'iwae' in 'miwae' would admit iwae

    with pytest.raises(TypeError, match="OneBound.bounds must be None .* or a tuple of bound names, got 'miwae'"):
        register_estimator("mine", OneBound())
    assert "mine" not in ESTIMATORS_BY_NAME

    class Typo(Reparam):
        bounds = ("iwea",)

    register_estimator("typo", Typo())
    with pytest.raises(ValueError, match="estimator 'typo' is defined for no bound there is \\(its bounds: "
                       "\\('iwea',\\)\\)"):  # fmt: skip
        iwae.Objective("iwae", 3, "typo")
