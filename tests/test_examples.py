"""Every script in examples/ runs in its smoke mode (a few steps, a small evaluation) and prints its score."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, binary_batch, tiny_model

import iwae
from iwae.cli import main
from iwae.runs import rundir
from iwae.runs.config import total_passes

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.py"))


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"conv_mnist.py", "own_estimator.py", "score_any_model.py"}


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_in_smoke_mode(script, data_dir):
    env = {**os.environ, "IWAE_DATA_DIR": data_dir, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), "--smoke"], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    nll = re.search(r"^test NLL [^:]*: ([0-9.]+)", done.stdout, re.MULTILINE)
    assert nll and 50 < float(nll.group(1)) < 800, done.stdout  # nats per image: untrained is ~550


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_without_its_data_says_where_to_get_it_in_one_line(script, tmp_path):
    env = {**os.environ, "IWAE_DATA_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(script), "--smoke"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "iwae download" in done.stderr
    assert done.stderr.startswith(f"{script.name}: data set 'mnist' not found in {tmp_path}")


@pytest.fixture
def vimco(registry_as_found):
    """examples/own_estimator.py as a module, its VIMCO registered as "vimco" for the test's length."""
    import importlib.util

    from iwae.objectives import register_estimator

    spec = importlib.util.spec_from_file_location("own_estimator", EXAMPLES[0].parent / "own_estimator.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    register_estimator("vimco", module.vimco)
    return module


@pytest.mark.slow  # trains a tiny run
def test_vimco_named_by_its_module_trains_a_run_folder(data_dir, tmp_path, monkeypatch, registry_as_found):
    """`iwae train --estimator own_estimator:vimco`, with examples/ on the import path, as its docstring says."""
    monkeypatch.syspath_prepend(str(EXAMPLES[0].parent))
    monkeypatch.delitem(sys.modules, "own_estimator", raising=False)  # (imported from there, dropped after)
    (tmp_path / "tiny.json").write_text(json.dumps(dict(TINY, stages=1, evaluate=False)))
    argv = ["train", "--config", str(tmp_path / "tiny.json"), "--estimator", "own_estimator:vimco", "--out",
            str(tmp_path / "run"), "--data-dir", data_dir, "--quiet", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    log, config = rundir.read_log(tmp_path / "run"), rundir.read_config(tmp_path / "run")
    assert config.estimator == "own_estimator:vimco"
    assert log[-1]["pass"] == total_passes(config) and all(math.isfinite(r["bound"]) for r in log if "bound" in r)


def test_vimcos_leave_one_out_estimates_replace_one_weight_by_the_others_geometric_mean(vimco):
    log_w = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for i in range(4):
        others = [j for j in range(4) if j != i]
        replaced = torch.cat([log_w[others], log_w[others].mean(0, keepdim=True)])
        expected = torch.logsumexp(replaced, 0) - math.log(4)
        assert torch.allclose(vimco.leave_one_out(log_w)[i], expected, rtol=1e-12)


def test_the_example_estimator_vimco_is_unbiased_for_the_gradient_of_l_k(vimco):
    """VIMCO's value is L_hat, its decoder gradient is Eq. 14's on the same noise, and its encoder gradient agrees
    in expectation with the reparameterisation gradient (both unbiased for grad L_k): every coordinate within 5
    standard errors over 48,000 draws, on a model with two stochastic layers. Without its score-function term it
    misses by 50 standard errors and more: the test can fail."""
    model = tiny_model(x_dim=4, latent_dims=(2, 1))
    x = binary_batch(1, 4).expand(2000, 4)  # one image, 2,000 independent draws in one batch
    n_enc = sum(p.numel() for p in model.encoder.parameters())

    def gradient(estimator: str, seed: int) -> tuple[float, torch.Tensor]:
        model.zero_grad()
        loss = iwae.Objective("iwae", 3, estimator).loss(model, x, torch.Generator().manual_seed(seed))
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    (value, g_vimco), (reparam_value, g_reparam) = gradient("vimco", 0), gradient("reparam", 0)
    assert value == pytest.approx(reparam_value, rel=1e-12)
    assert torch.allclose(g_vimco[n_enc:], g_reparam[n_enc:], rtol=1e-10, atol=1e-12)  # decoder: Eq. 14's

    class NoScore(vimco.VIMCO):  # the learning signals dropped: only the samples-held-fixed term is left
        def loss(self, model, x, objective, generator=None, noise=None):
            noise = model.draw_noise(3, x.shape[0], generator)
            log_w = model.forward_samples(x, 3, noise=noise, sample_hook=torch.Tensor.detach).log_w
            return -(torch.softmax(log_w.detach(), 0) * log_w).sum(0).mean()

    iwae.objectives.register_estimator("no-score", NoScore())
    try:
        draws = {name: torch.stack([gradient(name, seed)[1][:n_enc] for seed in range(1, 25)])
                 for name in ("vimco", "reparam", "no-score")}  # fmt: skip
    finally:
        iwae.objectives.registry._ESTIMATORS.pop("no-score")

    def z(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
        return ((a.mean(0) - b.mean(0)) / se)[se > 0].abs()

    assert z(draws["vimco"], draws["reparam"]).max() < 5
    assert z(draws["no-score"], draws["reparam"]).max() > 50


def test_the_convolutional_example_builds_for_a_run_folder(monkeypatch):
    """``iwae train --model conv_mnist:conv_vae`` from examples/: the run's model is built from the seed, and scores
    a batch of images."""
    from iwae.runs.config import TrainConfig
    from iwae.runs.rundir import build_model

    monkeypatch.syspath_prepend(str(EXAMPLES[0].parent))
    config = TrainConfig(model="conv_mnist:conv_vae", model_kwargs={"latent_dim": 8})
    model, again = build_model(config), build_model(config)
    assert model.latent_dims == [8]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert model.log_weights(torch.zeros(3, 784), 4).shape == (4, 3)
