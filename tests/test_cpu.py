"""Subnormal floats flushed for the library's CPU work (iwae.util.cpu): on during the work, the setting found restored
after it, off when a run says so, and the numbers unchanged by it."""

from __future__ import annotations

import pytest
import torch
from conftest import binary_batch, tiny_model

import iwae
from iwae.runs.train_step import make_optimizer, make_train_step
from iwae.util.cpu import flush_subnormals, subnormals_flushed


def _can_flush() -> bool:
    with flush_subnormals(True):
        return subnormals_flushed()


needs_flush = pytest.mark.skipif(not _can_flush(), reason="this CPU cannot flush subnormal floats")


@needs_flush
def test_flush_subnormals_sets_the_flag_for_the_block_and_restores_the_one_found():
    assert not subnormals_flushed()  # torch's default
    with flush_subnormals():
        assert subnormals_flushed() and torch.tensor([1e-39]).mul(1.0).item() == 0.0
        with flush_subnormals(False):  # a run that keeps them, inside flushed work
            assert not subnormals_flushed() and torch.tensor([1e-39]).item() > 0
        assert subnormals_flushed()
    assert not subnormals_flushed()
    torch.set_flush_denormal(True)  # a user's own setting survives the library's work
    try:
        with flush_subnormals(False):
            assert not subnormals_flushed()
        assert subnormals_flushed()
    finally:
        torch.set_flush_denormal(False)


def _flag_during(fn, model) -> list[bool]:
    seen = []
    handle = model.register_forward_pre_hook(lambda *_: seen.append(subnormals_flushed()))
    try:
        fn()
    finally:
        handle.remove()
    return seen


@needs_flush
@pytest.mark.parametrize("flush", [True, False])
def test_the_train_step_and_log_likelihood_flush_while_they_run_and_restore_after(flush):
    model = iwae.IWAE(6, [2], [[8]], [[8]])
    x = binary_batch(5, 6).float()
    step = make_train_step(model, make_optimizer(model), k=4, flush_denormal=flush)
    assert set(_flag_during(lambda: step(x), model.encoder[0])) == {flush}
    assert not subnormals_flushed()
    seen = _flag_during(lambda: iwae.log_likelihood(model, x, k=10, flush_denormal=flush), model.encoder[0])
    assert set(seen) == {flush} and not subnormals_flushed()


@pytest.mark.slow  # seconds: the default run stays under 3 minutes
def test_flushing_moves_no_number_beyond_monte_carlo_noise(data_dir):
    """A 1-layer IWAE k=20 on MNIST, 150 steps with and without flushing: the training bound and L_200 agree."""
    x = iwae.data.load("mnist", "train", data_dir)[:3000]
    results = []
    for flush in (True, False):
        model = iwae.IWAE.paper(1, output_bias=x.mean(0), generator=torch.Generator().manual_seed(0))
        gen = torch.Generator().manual_seed(1)
        step = make_train_step(model, make_optimizer(model), k=20, generator=gen, flush_denormal=flush)
        losses = [step(iwae.data.binarize(x[20 * i : 20 * i + 20], generator=gen)) for i in range(150)]
        xt = iwae.data.binarize(x[:200], generator=torch.Generator().manual_seed(5))
        ll = iwae.log_likelihood(model, xt, 200, generator=torch.Generator().manual_seed(6), flush_denormal=flush)
        results.append((torch.stack(losses[-50:]).mean().item(), ll.double()))
    (bound_a, ll_a), (bound_b, ll_b) = results
    d = ll_a - ll_b  # paired: the same images and the same noise
    assert abs(d.mean().item()) <= 3 * d.std().item() / len(d) ** 0.5 + 1e-3
    assert bound_a == pytest.approx(bound_b, abs=0.5)


def test_a_config_turns_flushing_off_and_a_tiny_model_is_unchanged_by_it():
    from iwae.runs.config import TrainConfig

    assert TrainConfig().flush_denormal and not TrainConfig(flush_denormal=False).flush_denormal
    model = tiny_model(x_dim=4, latent_dims=(2,))
    x = binary_batch(8, 4)
    a = iwae.log_likelihood(model, x, k=50, generator=torch.Generator().manual_seed(0), flush_denormal=True)
    b = iwae.log_likelihood(model, x, k=50, generator=torch.Generator().manual_seed(0), flush_denormal=False)
    assert torch.equal(a, b)  # float64, values far from the subnormal range


def test_the_machine_is_described_in_one_line():
    import platform

    from iwae.util import machine

    line = machine.describe()
    assert machine.cpu_model() and line.startswith(machine.cpu_model())
    assert f"torch {torch.__version__}, Python {platform.python_version()}" in line and "\n" not in line
    assert f", ATen {torch.backends.cpu.get_cpu_capability()}" in line  # the kernels a bitwise comparison depends on
