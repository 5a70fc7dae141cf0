"""iwae.pretrained: the models published under results/*/weights/, listed and loaded by name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import iwae


def test_the_published_models_are_listed_and_load_checked():
    models = iwae.pretrained.available()
    assert "mnist-2d-iwae-k5" in models
    for name, folder in models.items():
        model, config, metrics = iwae.pretrained.load(name)
        assert not model.training and metrics is not None
        # a general architecture's sizes, or the paper's of its number of layers
        paper = {1: [50], 2: [100, 50]}[config.layers]
        assert model.latent_dims == (config.latent_dims or paper)
        assert metrics["test_nll"] > 0 and folder.parent.name == "weights"


def test_each_published_cards_python_snippet_runs_as_written():
    for name, folder in iwae.pretrained.available().items():
        card = (folder / "README.md").read_text()
        snippet = card.split("```python\n")[1].split("```")[0].replace("THIS_FOLDER", folder.as_posix())
        scope: dict = {}
        exec(snippet, scope)
        assert scope["samples"].shape == (16, 784), name


@pytest.mark.slow  # L_1000 on 500 images
def test_the_2d_model_replays_its_recorded_test_nll(data_dir, tmp_path):
    """The published 2-D latent model (a copy: evaluating writes into the folder), scored again, gives the mean of
    the per-image values its run recorded: the same images, the same importance samples."""
    import json

    from iwae.runs.evaluate_run import evaluate_run

    folder = shutil.copytree(iwae.pretrained.available()["mnist-2d-iwae-k5"], tmp_path / "model")
    record = json.loads((folder / "test_ll.json").read_text())
    result = evaluate_run(folder, data_dir=data_dir, progress=False)
    recorded = -torch.tensor(record["ll"], dtype=torch.float32).mean().item()  # the same float32 values here
    assert result["nll"] == pytest.approx(recorded, abs=1e-4)  # (on another CPU, its kernels' own rounding)


def test_an_installed_package_finds_them_in_the_current_checkout_and_says_where_to_look_elsewhere(
    tmp_path, monkeypatch
):
    import iwae.pretrained as pretrained

    monkeypatch.setattr(pretrained, "_CHECKOUT", tmp_path / "site-packages")  # as installed from a wheel
    checkout = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(checkout)
    assert "mnist-2d-iwae-k5" in pretrained.available()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="or in the current directory: published models come with a checkout"):
        pretrained.available()


def test_an_unknown_name_lists_the_known_ones_and_a_wheel_install_is_told_where_they_are(tmp_path):
    with pytest.raises(KeyError, match="no published model 'nope'; available: .*mnist-2d-iwae-k5"):
        iwae.pretrained.load("nope")
    with pytest.raises(FileNotFoundError, match="published models come with a checkout"):
        iwae.pretrained.available(tmp_path)
    source = iwae.pretrained.available()["mnist-2d-iwae-k5"]
    for study in ("a", "b"):
        shutil.copytree(source, tmp_path / "results" / study / "weights" / "twin")
    with pytest.raises(ValueError, match="two published models are named 'twin'"):
        iwae.pretrained.available(tmp_path)
    assert torch.equal(
        next(iwae.pretrained.load("mnist-2d-iwae-k5").model.parameters()),
        next(iwae.load_run(source).model.parameters()),
    )


ROOT = Path(__file__).resolve().parents[1]  # the checkout, which holds hubconf.py

HUB = """
import sys
from pathlib import Path

import torch

root = sys.argv[1]
torch.hub.load(root, "pretrained", name="mnist-2d-iwae-k5", source="local")  # the first import of iwae: the checkout's
import iwae

assert Path(iwae.__file__).resolve().is_relative_to(Path(root) / "src"), iwae.__file__
for name in iwae.pretrained.available(root):
    expected = iwae.pretrained.load(name, root=root).model.state_dict()
    for got in (torch.hub.load(root, "pretrained", name=name, source="local"),
                torch.hub.load(root, name.replace("-", "_"), source="local")):
        assert not got.training and got.state_dict().keys() == expected.keys()
        assert all(torch.equal(got.state_dict()[k], expected[k]) for k in expected), name
try:
    torch.hub.load(root, "pretrained", name="nope", source="local")
except KeyError as err:
    assert "no published model 'nope'; available: " in str(err)
else:
    raise AssertionError("an unknown name loaded")
print("ok")
"""


@pytest.mark.slow  # a fresh process that imports torch
def test_torch_hub_loads_each_published_model_by_name_from_the_checkout(tmp_path):
    """hubconf.py, in a process that has not imported iwae (an installed one beside it or not): its `pretrained`
    entry and one per published model (its folder's name with underscores) give iwae.pretrained.load's model, with
    the checkout's own code."""
    done = subprocess.run([sys.executable, "-c", HUB, str(ROOT)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_torch_hub_refuses_to_load_the_checkout_beside_an_iwae_imported_from_elsewhere(monkeypatch):
    elsewhere = type(iwae)("iwae")
    elsewhere.__file__ = "/elsewhere/iwae/__init__.py"
    monkeypatch.setitem(sys.modules, "iwae", elsewhere)
    with pytest.raises(ImportError, match="this process imported iwae from /elsewhere/iwae before torch.hub loaded"):
        torch.hub.load(str(ROOT), "mnist_2d_iwae_k5", source="local")


@pytest.mark.slow  # L_k (k in the thousands) on 128 images of each published model
@pytest.mark.parametrize("name", sorted(iwae.pretrained.available()))
def test_each_published_model_scores_its_first_recorded_test_images_again(name, data_dir):
    """The first 128 images of a published model's ``test_ll.json``, scored again from the committed weights with its
    evaluation streams, give the recorded per-image L_k: the weights are those that made the published numbers.

    The evaluation binarizes all its images with one draw and scores them 32 at a time (at k >= 64), each block
    drawing its noise in turn; so the first four blocks of the whole evaluation are replayed exactly."""
    from iwae.evaluate import log_likelihood
    from iwae.runs.evaluate_run import eval_split, read_per_image, stream

    model, config, _ = iwae.pretrained.load(name, data_dir=data_dir)
    record = read_per_image(iwae.pretrained.available()[name])
    assert record["eval_k"] >= 64 and record["seed"] == config.seed and record["streams"] == config.streams
    index, x = eval_split(config, "test", len(record["index"]), torch.device("cpu"), config.seed)
    assert index.tolist() == record["index"]
    gen = stream(config, torch.device("cpu"), "test", "nll", config.seed)
    ll = log_likelihood(model, x[:128], record["eval_k"], generator=gen, progress=False)
    recorded = torch.tensor(record["ll"][:128], dtype=torch.float64)
    # Another CPU's matrix kernels may round otherwise (1e-5 nats or so); other noise moves images by 0.06 nats
    # (median; measured on the 2-D model at k = 1000) and some by nats.
    torch.testing.assert_close(ll.double(), recorded, rtol=0, atol=1e-3)
