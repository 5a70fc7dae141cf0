"""The variational Rényi bound (Li & Turner 2016), ``--bound vr --alpha A``: its closed forms, its order in
alpha, its gradient against per-sample autograd, and alpha = 0 training exactly as the IWAE bound."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import binary_batch, tiny_model
from test_estimators import B, K, _assert_grads_close, _objective_grads, _per_sample_weighted

import iwae
from iwae import bounds
from iwae.runs.train_step import make_optimizer


def test_closed_forms_alpha_0_is_iwae_bit_for_bit_and_towards_1_the_elbo():
    log_w = torch.randn(9, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    assert torch.equal(bounds.vr(log_w, 0.0), bounds.iwae(log_w))
    torch.testing.assert_close(bounds.vr(log_w, 1 - 1e-7), bounds.elbo(log_w), rtol=0, atol=1e-5)
    # alpha = 1/2: 2 log mean sqrt(w), by hand
    torch.testing.assert_close(bounds.vr(log_w, 0.5), 2 * torch.log(torch.exp(0.5 * log_w).mean(0)))
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\)"):
        bounds.vr(log_w, 1.0)


def test_the_bound_falls_as_alpha_rises_between_l_k_and_the_elbo():
    """For alpha in [0, 1) the Rényi bound is non-increasing in alpha (Li & Turner 2016, Theorem 1), so it lies
    between the ELBO and L_k for every set of weights."""
    log_w = torch.randn(20, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    values = torch.stack([bounds.vr(log_w, a) for a in (0.0, 0.2, 0.5, 0.8, 0.99)])
    assert bool((values[1:] <= values[:-1] + 1e-12).all())
    assert bool((values >= bounds.elbo(log_w) - 1e-12).all() and (values <= bounds.iwae(log_w) + 1e-12).all())


@pytest.mark.parametrize("alpha", [0.3, 0.7])
def test_gradient_is_the_tempered_weight_average_of_log_weight_gradients(alpha):
    """grad L_alpha = sum_i w_i^(1-alpha) / sum_j w_j^(1-alpha) grad log w_i, per example."""
    model, x = tiny_model(x_dim=4, latent_dims=(2,)), binary_batch(B, 4)
    got = _objective_grads(model, x, 3, k=K, bound="vr", alpha=alpha)
    want = _per_sample_weighted(model, x, 3, lambda lw: torch.softmax((1 - alpha) * lw, 0))
    _assert_grads_close(got, want)


def test_alpha_0_trains_exactly_as_the_iwae_bound():
    x = binary_batch(5, 6).float()
    losses, params = [], []
    for kind in ("iwae", "vr"):
        model = iwae.IWAE(6, [2], [[8]], [[8]])
        model.load_state_dict(_initial(model))
        alpha = {"alpha": 0.0} if kind == "vr" else {}
        step = iwae.make_train_step(model, make_optimizer(model), k=4, bound=kind, **alpha,
                                    generator=torch.Generator().manual_seed(0))  # fmt: skip
        losses.append([float(step(x)) for _ in range(20)])
        params.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert losses[0] == losses[1] and torch.equal(params[0], params[1])


def _initial(model: iwae.IWAE) -> dict:
    torch.manual_seed(0)
    return {k: torch.randn_like(v) * 0.3 if v.is_floating_point() else v for k, v in model.state_dict().items()}


def test_the_command_line_and_the_config_carry_alpha(tmp_path):
    from iwae.cli.commands import build_parser
    from iwae.cli.options import config_from_args

    config = config_from_args(build_parser().parse_args(["train", "--bound", "vr", "--alpha", "0.25", "--out",
                                                         str(tmp_path)]))  # fmt: skip
    assert (config.bound, config.alpha) == ("vr", 0.25) and '"alpha": 0.25' in config.to_json()
    assert iwae.Objective.from_config(config).params == {"alpha": 0.25}
    with pytest.warns(UserWarning, match="alpha=0.25 has no effect on bound='iwae'"):  # the field stays set
        assert math.isclose(iwae.Objective.from_config(config.replace(bound="iwae")).samples_per_example, 50)
