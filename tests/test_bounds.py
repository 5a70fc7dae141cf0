"""Bounds as functions of log-weights: closed forms, Jensen's inequality, numerical stability, special cases."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from iwae import bounds

finite_log_w = arrays("float64", st.tuples(st.integers(1, 12), st.integers(1, 4)), elements=st.floats(-1e6, 1e6))


def test_iwae_matches_log_mean_exp():
    log_w = torch.randn(7, 5, dtype=torch.float64) * 3
    torch.testing.assert_close(bounds.iwae(log_w), log_w.exp().mean(0).log())
    torch.testing.assert_close(bounds.elbo(log_w), log_w.mean(0))


def test_iwae_equals_elbo_at_k1():
    log_w = torch.randn(1, 9)
    torch.testing.assert_close(bounds.iwae(log_w), bounds.elbo(log_w))


@settings(max_examples=200, deadline=None)
@given(finite_log_w)
def test_bounds_finite_and_ordered_for_any_finite_log_weights(a):
    """Jensen: ELBO <= L_k <= max_i log w_i, and no NaN/inf at log-weights of any magnitude."""
    log_w = torch.from_numpy(a)
    lk, el = bounds.iwae(log_w), bounds.elbo(log_w)
    assert torch.isfinite(lk).all() and torch.isfinite(el).all()
    tol = 1e-9 * (1 + log_w.abs().max())
    assert (el <= lk + tol).all()
    assert (lk <= log_w.max(0).values + tol).all()
    assert (lk >= log_w.max(0).values - math.log(log_w.shape[0]) - tol).all()


def test_iwae_stable_at_extreme_float32_log_weights():
    log_w = torch.tensor([[-1e30, 1e4], [-1e30, -1e4], [-3e4, 3e4]], dtype=torch.float32)
    lk = bounds.iwae(log_w)
    assert torch.isfinite(lk).all()
    torch.testing.assert_close(lk, torch.tensor([-3e4 - math.log(3), 3e4 - math.log(3)]))


def test_miwae_special_cases():
    log_w = torch.randn(12, 4, dtype=torch.float64)
    torch.testing.assert_close(bounds.miwae(log_w, 12), bounds.iwae(log_w))  # M = 1
    torch.testing.assert_close(bounds.miwae(log_w, 1), bounds.elbo(log_w))  # K = 1
    groups = torch.stack([bounds.iwae(log_w[i : i + 3]) for i in range(0, 12, 3)])
    torch.testing.assert_close(bounds.miwae(log_w, 3), groups.mean(0))


def test_ciwae_special_cases():
    log_w = torch.randn(6, 3, dtype=torch.float64)
    torch.testing.assert_close(bounds.ciwae(log_w, 0.0), bounds.iwae(log_w))
    torch.testing.assert_close(bounds.ciwae(log_w, 1.0), bounds.elbo(log_w))
    torch.testing.assert_close(bounds.ciwae(log_w, 0.25), 0.25 * bounds.elbo(log_w) + 0.75 * bounds.iwae(log_w))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="k_inner=4 must divide"):
        bounds.miwae(torch.zeros(6, 2), 4)
    with pytest.raises(ValueError, match="beta must lie in"):
        bounds.ciwae(torch.zeros(6, 2), 1.5)
    with pytest.raises(ValueError, match="sample dimension"):
        bounds.iwae(torch.zeros(0, 2))
