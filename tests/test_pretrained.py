"""iwae.pretrained: the models published under results/*/weights/, listed and loaded by name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import iwae


def test_the_published_models_are_listed_and_load_checked():
    models = iwae.pretrained.available()
    assert "mnist-2d-iwae-k5" in models
    for name, folder in models.items():
        model, config, metrics = iwae.pretrained.load(name)
        assert not model.training and metrics is not None and config.latent_dims == model.latent_dims
        assert metrics["test_nll"] > 0 and folder.parent.name == "weights"


@pytest.mark.slow  # L_1000 on 500 images
def test_the_2d_model_replays_its_recorded_test_nll(data_dir, tmp_path):
    """The published 2-D latent model (a copy: evaluating writes into the folder), scored again, gives the mean of
    the per-image values its run recorded: the same images, the same importance samples."""
    import json

    from iwae.runs.evaluate_run import evaluate_run

    folder = shutil.copytree(iwae.pretrained.available()["mnist-2d-iwae-k5"], tmp_path / "model")
    record = json.loads((folder / "test_ll.json").read_text())
    result = evaluate_run(folder, data_dir=data_dir, progress=False)
    assert result["nll"] == -torch.tensor(record["ll"], dtype=torch.float32).mean().item()  # the same float32 values


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
