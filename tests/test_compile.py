"""The compiled training step (``make_train_step(..., compile=True)``) against the eager one on the same noise.

Compiling is slow where inductor's cache is cold (a fresh machine or checkout: 10-20 s a test), so the tests that
compile are marked slow; the default run checks that the loss traces whole."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import binary_batch, tiny_model

import iwae
from iwae.runs.config import TrainConfig


def _steps(model: iwae.IWAE, compile: bool, n: int, **kw) -> tuple[list[float], iwae.IWAE]:
    """n SGD steps from a copy of ``model`` (SGD: the update is the gradient itself, so parameters compare it)."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = iwae.make_train_step(model, opt, generator=torch.Generator().manual_seed(7), compile=compile, **kw)
    return [float(step(binary_batch(3, 4))) for _ in range(n)], model


def _assert_same(a: iwae.IWAE, b: iwae.IWAE) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("estimator", "kind", "latent_dims"), [("reparam", "iwae", (2,)), ("stl", "miwae", (2, 2))]
)  # fmt: skip
def test_compiled_step_matches_eager_on_the_same_noise(estimator, kind, latent_dims):
    model = tiny_model(x_dim=4, latent_dims=latent_dims)
    kw = dict(k=5, bound=kind, estimator=estimator, **({"m": 2} if kind == "miwae" else {}))
    eager_losses, eager = _steps(model, False, 3, **kw)
    compiled_losses, compiled = _steps(model, True, 3, **kw)
    # The same noise stream step after step: the losses differ from step to step but agree between the two.
    assert len(set(eager_losses)) == 3
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-10, atol=0)
    _assert_same(compiled, eager)


@pytest.mark.slow
def test_compiled_step_follows_pruning_of_the_same_model():
    """Loading a state with pruned units into the model must change the compiled loss as it changes the eager one."""
    model = tiny_model(x_dim=4, latent_dims=(3,))
    pruned_state = model.pruned([torch.tensor([True, False, True])], [torch.tensor([0.0, 0.4, 0.0])]).state_dict()
    results = []
    for compile in (False, True):
        m = copy.deepcopy(model)
        step = iwae.make_train_step(
            m, torch.optim.SGD(m.parameters(), lr=0.0), k=4, generator=torch.Generator().manual_seed(1), compile=compile
        )
        before = float(step(binary_batch(3, 4)))
        m.load_state_dict(pruned_state)
        results.append((before, float(step(binary_batch(3, 4)))))
    (eager_before, eager_after), (compiled_before, compiled_after) = results
    assert eager_after != pytest.approx(eager_before, rel=1e-3)  # pruning changes the loss
    assert compiled_before == pytest.approx(eager_before, rel=1e-10)
    assert compiled_after == pytest.approx(eager_after, rel=1e-10)


def test_compile_refuses_estimators_it_does_not_cover():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for estimator, kind in (("dreg", "iwae"), ("sample-one", "iwae"), ("reparam", "piwae")):
        with pytest.raises(ValueError, match="compile is available for the reparam and stl estimators"):
            iwae.make_train_step(model, opt, bound=kind, estimator=estimator, compile=True)
    with pytest.raises(ValueError, match="train without compile"):
        TrainConfig(estimator="dreg", compile=True)


@pytest.mark.parametrize("estimator", ["reparam", "stl"])
@pytest.mark.parametrize("layers", [1, 2])
def test_the_compiled_loss_traces_whole_without_a_graph_break(estimator, layers):
    """torch.compile's CUDA graphs (reduce-overhead) need one graph: the loss that compile=True traces has none.
    The 2-layer STL loss had two, from torch.func.functional_call in iwae.models.layers.q_params."""
    from iwae.objectives import Objective

    model = iwae.IWAE(6, [3] * layers, [[8]] * layers, [[8]] * layers)
    objective = Objective("iwae", 3, estimator)
    noise = model.draw_noise(3, 4, torch.Generator().manual_seed(0))
    explained = torch._dynamo.explain(lambda x, noise: objective.loss(model, x, noise=noise))(
        binary_batch(4, 6).float(), noise
    )
    assert explained.graph_break_count == 0, [str(r.reason)[:200] for r in explained.break_reasons]
