"""iwae.runs.train_step: one update per call from an Objective, and the paper's optimiser."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import binary_batch, tiny_model

import iwae
from iwae.objectives.names import BOUND_PARAMS
from iwae.runs.train_step import build_step


def test_train_step_updates_parameters_and_returns_loss():
    torch.manual_seed(0)
    model = iwae.IWAE.paper(layers=1)
    opt = iwae.make_optimizer(model)
    step = iwae.make_train_step(model, opt, k=5, bound="iwae", estimator="sample-one")
    x = torch.bernoulli(torch.full((20, 784), 0.2))
    before = [p.detach().clone() for p in model.parameters()]
    losses = [step(x).item() for _ in range(30)]
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(("kind", "estimator"), [("iwae", "dreg"), ("piwae", "reparam"), ("ciwae", "stl")])
def test_build_step_with_an_objective_equals_make_train_step(kind, estimator):
    base = tiny_model(x_dim=4, latent_dims=(2,))
    x = binary_batch(3, 4)
    runs = []
    params = {name: value for name, value in {"m": 2, "beta": 0.2}.items() if name in BOUND_PARAMS[kind]}
    for make in (
        lambda m, o, g: iwae.make_train_step(m, o, 3, kind, estimator, **params, generator=g),
        lambda m, o, g: build_step(m, o, iwae.Objective(kind, 3, estimator, **params), generator=g),
    ):
        model = copy.deepcopy(base)
        step = make(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.Generator().manual_seed(3))
        losses = [step(x) for _ in range(3)]
        assert all(not loss.requires_grad for loss in losses)
        runs.append((torch.stack(losses), list(model.parameters())))
    (l1, p1), (l2, p2) = runs
    assert torch.equal(l1, l2) and all(torch.equal(a, b) for a, b in zip(p1, p2))


def test_build_step_refuses_compile_for_an_objective_that_cannot_be_compiled():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="not for estimator='dreg', bound='iwae'; train without compile"):
        build_step(model, opt, iwae.Objective(estimator="dreg"), compile=True)


def test_make_optimizer_uses_the_papers_adam_settings():
    opt = iwae.make_optimizer(tiny_model())
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.Adam)
    assert (group["lr"], group["betas"], group["eps"]) == (1e-3, (0.9, 0.999), 1e-4)
