"""A model of one's own in a run folder (``iwae train --model MODULE:CALLABLE --model-kwargs JSON``): trained,
stopped and resumed exactly, evaluated, exported and loaded as the paper's model is; its errors named before any
run folder is made."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import TINY, read_json
from safetensors.torch import load_file
from test_train import _log_without_timings, _same_checkpoints, train_stopped_at

import iwae
import iwae.runs.train
from iwae.cli import main
from iwae.runs import rundir
from iwae.runs.checkpoint import load_checkpoint
from iwae.runs.config import TrainConfig
from iwae.runs.rundir import RunError
from iwae.util import streams

OWN = dict(TINY, model="own_models:mlp_vae", model_kwargs={"latent_dim": 3, "hidden": 16})


@pytest.fixture(scope="module")
def own_run(data_dir, tmp_path_factory):
    """The TINY schedule on own_models.mlp_vae, trained and evaluated by `iwae train`."""
    folder = tmp_path_factory.mktemp("own")
    (folder / "tiny.json").write_text(json.dumps(TINY))  # the schedule; the model as flags
    run = folder / "run"
    argv = [
        "train",
        "--config",
        str(folder / "tiny.json"),
        "--model",
        OWN["model"],
        "--model-kwargs",
        json.dumps(OWN["model_kwargs"]),
        "--out",
        str(run),
        "--data-dir",
        data_dir,
        "--quiet",
        "--threads",
        "1",
    ]
    assert main(argv) == 0
    return run


@pytest.mark.slow  # trains and evaluates the tiny run
def test_a_model_of_ones_own_trains_evaluates_and_exports_as_the_paper_model_does(own_run, tmp_path, capsys):
    config = rundir.read_config(own_run)
    assert (config.model, config.model_kwargs) == ("own_models:mlp_vae", {"latent_dim": 3, "hidden": 16})
    metrics = read_json(own_run / "metrics.json")
    assert 100 < metrics["test_nll"] < 800 and metrics["train_nll"] > 0 and len(metrics["active_units"]) == 1
    assert metrics["test_nll_pruned"] is None and metrics["units_pruned"] is None  # pruning needs the paper's layers
    assert (own_run / "samples.png").is_file() and (own_run / "training.png").is_file()
    assert any("test_nll_curve" in r for r in rundir.read_log(own_run))
    # loaded by name again: the same class, the same weights as the checkpoint's
    loaded = iwae.load_run(own_run)
    assert type(loaded.model).__name__ == "GaussianLatentModel" and loaded.metrics == metrics
    assert main(["evaluate", str(own_run), "--quiet"]) == 0
    assert f"test NLL {metrics['test_nll']:.2f}" in capsys.readouterr().out  # replays metrics.json's number
    assert main(["evaluate", str(own_run), "--pruned", "--quiet"]) == 1
    assert "holds a model of one's own (own_models:mlp_vae): the pruned model" in capsys.readouterr().err
    out = tmp_path / "shared"
    assert main(["export", str(own_run), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "a model of one's own, `own_models:mlp_vae` (GaussianLatentModel, latent units 3)" in card
    assert "NLL without the inactive units" not in card
    assert "loading it imports `own_models` and calls `own_models:mlp_vae`" in card
    snippet = card.split("```python\n")[1].split("```")[0].replace("THIS_FOLDER", out.as_posix())
    scope: dict = {}
    exec(snippet, scope)  # the card's snippet runs as written
    assert scope["samples"].shape == (16, 784)
    shared = iwae.load_run(out)
    for a, b in zip(shared.model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(a, b)


def test_its_weights_come_from_the_seed_and_leave_the_global_generator_alone(data_dir):
    config = TrainConfig(data_dir=data_dir, **OWN)
    state = torch.random.get_rng_state()
    one, again = rundir.build_model(config).state_dict(), rundir.build_model(config).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    other = rundir.build_model(config.replace(seed=1)).state_dict()
    assert all(torch.equal(one[key], again[key]) for key in one)
    assert not all(torch.equal(one[key], other[key]) for key in one)


@pytest.mark.slow  # trains it twice more
def test_a_stopped_run_of_ones_own_model_resumes_to_the_uninterrupted_numbers(own_run, data_dir, tmp_path,
                                                                                monkeypatch):  # fmt: skip
    config = TrainConfig(data_dir=data_dir, **OWN)
    train_stopped_at(monkeypatch, config, tmp_path / "broken")
    state, _ = load_checkpoint(tmp_path / "broken" / "checkpoint.safetensors", rundir.build_model(config))
    assert (state["stage"], state["step"]) == (1, 50)
    iwae.runs.train.resume(tmp_path / "broken", progress=False)
    _same_checkpoints(own_run, tmp_path / "broken")
    assert _log_without_timings(tmp_path / "broken") == _log_without_timings(own_run)


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        ("no_such_module:f", None, r"cannot import 'no_such_module' \(ModuleNotFoundError: .*\); put the folder"),
        ("own_models:missing", None, "own_models has no 'missing'"),
        ("own_models:NOT_CALLABLE", None, "NOT_CALLABLE is not marked with @iwae.model_builder"),
        ("own_models:unmarked", None, "unmarked is not marked with @iwae.model_builder; mark the function or class"),
        ("own_models:UnmarkedModel", None, "UnmarkedModel is not marked with @iwae.model_builder"),
        ("subprocess:getoutput", {"cmd": "true"}, "getoutput is not marked with @iwae.model_builder"),
        ("torch:ops", None, "ops is not marked"),  # (an object that answers every attribute)
        ("own_models:double", None, "its parameters are torch.float64; the images are float32"),
        ("own_models:tied", None, r"two of its state_dict's entries share memory \(tied weights"),
        ("own_models:mlp_vae", {"width": 3}, r"called with \{'width': 3\}: .*unexpected keyword argument 'width'"),
        ("own_models:not_a_model", None, "Linear lacks forward_samples, draw_noise, encoder, decoder, latent_dims"),
        ("own_models:wrong_size", None, r"cannot score images of 784 pixels, as the data sets hold: log_weights"),
        ("own_models:sampler_without_generator", None, r"sample\(.*\) raised TypeError: .*; give it the signature"),
        ("own_models:sampler_too_few_pixels", None, r"sample\(.*\) returned shape \(2, 100\), not 2 images of 784"),
    ],
)
def test_a_model_that_cannot_be_built_is_named_before_any_run_folder_is_made(model, kwargs, message, data_dir,
                                                                             tmp_path, capsys):  # fmt: skip
    argv = ["train", "--model", model, "--out", str(tmp_path / "run"), "--data-dir", data_dir, "--quiet"]
    assert main(argv + (["--model-kwargs", json.dumps(kwargs)] if kwargs else [])) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(f"model {model}:? {message}", err), err
    assert not (tmp_path / "run").exists()


def test_the_config_refuses_a_model_spec_it_cannot_read_and_the_paper_architectures_options_beside_it():
    with pytest.raises(ValueError, match="model must be MODULE:CALLABLE .*, got 'own_models.mlp_vae'"):
        TrainConfig(model="own_models.mlp_vae")
    with pytest.raises(ValueError, match="model builds the whole architecture: leave latent_dims, layers out"):
        TrainConfig(model="own_models:mlp_vae", latent_dims=[2, 2], layers=2)
    with pytest.raises(ValueError, match="model_kwargs are the arguments of model, which is not given"):
        TrainConfig(model_kwargs={"latent_dim": 3})
    with pytest.raises(SystemExit):
        main(["train", "--model", "own_models:mlp_vae", "--model-kwargs", "[3]", "--out", "x"])


@pytest.mark.parametrize("name", ["above", "below", "of_class"])
def test_a_class_method_builds_with_the_mark_above_or_below_its_decorator(name, data_dir):
    model = rundir.build_model(TrainConfig(data_dir=data_dir, model=f"own_models:Builders.{name}"))
    assert model.latent_dims == [3]


def test_the_sampler_is_checked_as_a_run_starts_and_a_folder_loads_whatever_it_does_later(data_dir, monkeypatch):
    """A sampler that uses autograd inside passes (the samples figure calls it with gradients on); one that breaks
    after its run began stops no loading (evaluate, export and load_run draw no samples)."""
    import own_models

    from iwae.runs.own_model import check_sampler

    config = TrainConfig(data_dir=data_dir, model="own_models:refined_sampler")
    check_sampler(rundir.build_model(config), config.model)
    monkeypatch.setattr(own_models, "SAMPLER_BROKEN", True)
    model = rundir.build_model(config)  # as loading a folder builds it
    with pytest.raises(rundir.RunError, match="sample.* raised RuntimeError: sampler broke"):
        check_sampler(model, config.model)


def test_a_stacked_fleet_refuses_a_model_of_ones_own(data_dir):
    from iwae.fleets.fleet import stackable

    model = rundir.build_model(TrainConfig(data_dir=data_dir, **OWN))
    assert stackable([model], [iwae.Objective("iwae", 3)]) == "a model of one's own is stepped by a loop fleet"


def test_a_model_that_raises_inside_shows_its_own_traceback(data_dir, monkeypatch):
    """Only a call whose keyword arguments do not fit becomes one line; a bug inside the callable keeps its
    traceback, for its author."""
    import own_models

    @iwae.model_builder
    def broken(latent_dim: int = 3) -> None:
        raise TypeError("zeros(): argument 'size' (position 1) must be tuple of ints, not str")  # a torch call's

    monkeypatch.setattr(own_models, "broken", broken, raising=False)
    with pytest.raises(TypeError, match="zeros\\(\\): argument 'size'"):
        rundir.build_model(TrainConfig(data_dir=data_dir, model="own_models:broken"))
    with pytest.raises(RunError, match="called with"):
        rundir.build_model(TrainConfig(data_dir=data_dir, model="own_models:broken", model_kwargs={"x": 1}))


@pytest.mark.slow  # two processes of their own
def test_a_module_in_the_working_folder_is_found_by_python_m_iwae_and_named_to_the_iwae_command(data_dir, tmp_path):
    """`python -m iwae` searches the working folder (here the module imports, then is refused for its image size);
    the `iwae` script does not, and says how to give it (PYTHONPATH)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    shutil.copy(Path(__file__).with_name("own_models.py"), tmp_path / "my_vaes.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = ["train", "--model", "my_vaes:wrong_size", "--out", "run", "--data-dir", data_dir]
    for command, found in (([sys.executable, "-m", "iwae"], True), ([str(Path(sys.executable).with_name("iwae"))],
                                                                     False)):  # fmt: skip
        done = subprocess.run(command + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        expected = "cannot score images of 784 pixels" if found else "put the folder that holds it on PYTHONPATH"
        assert done.returncode == 1 and expected in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # trains and evaluates the tiny run (the module fixture)
def test_a_folder_that_brings_the_module_it_names_is_refused_before_importing_it(own_run, tmp_path, monkeypatch):
    """A downloaded folder whose config names a module inside it, loaded from within (the working folder on the
    import path, as `python -m` and notebooks have it), is refused before that module runs."""
    from iwae.runs.sharing import export_run

    folder = export_run(own_run, tmp_path / "downloaded")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model": "brought_along:build"}))
    (folder / "brought_along.py").write_text("open('RAN', 'w').close()\n")
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    with pytest.raises(RunError, match="whose module 'brought_along' lies inside the folder itself"):
        iwae.load_run(folder)
    assert not (folder / "RAN").exists() and "brought_along" not in __import__("sys").modules


def test_the_build_checks_leave_a_batch_normalised_model_as_built(data_dir):
    """The probe scores images on a copy in eval mode: batch normalisation is accepted, and its running statistics
    and training mode are the builder's."""
    model = rundir.build_model(TrainConfig(data_dir=data_dir, model="own_models:batch_norm"))
    norm = model.encoder.net[1]
    assert model.training and int(norm.num_batches_tracked) == 0 and torch.equal(norm.running_mean, torch.zeros(16))


def test_a_stacked_fleet_of_ones_own_model_is_refused_before_any_folder_is_made(data_dir, tmp_path, capsys):
    argv = ["train", "--model", "own_models:mlp_vae", "--seeds", "0,1", "--fleet", "stacked", "--out",
            str(tmp_path / "fleet"), "--data-dir", data_dir]  # fmt: skip
    assert main(argv) == 1
    assert "a model of one's own (own_models:mlp_vae) is stepped by a loop fleet; use --fleet loop" in \
        capsys.readouterr().err  # fmt: skip
    assert not (tmp_path / "fleet").exists()


def test_ais_names_what_a_model_of_ones_own_lacks_for_it_in_one_line():
    from iwae.analysis.ais_run import _check_methods

    model = rundir.build_model(TrainConfig(model="own_models:mlp_vae"))  # a GaussianLatentModel: has them all
    _check_methods("RUN", model, ["simulate", "log_px_at_prior_noise", "prior_noise"])
    with pytest.raises(RunError, match=r"RUN: its model \(Linear\) has no simulate and prior_noise, which this AIS"):
        _check_methods("RUN", torch.nn.Linear(1, 1), ["simulate", "prior_noise"])


@pytest.mark.slow  # trains the tiny schedule three times
def test_a_model_that_draws_from_the_global_generator_trains_and_resumes_to_the_same_numbers(data_dir, tmp_path,
                                                                                             monkeypatch):  # fmt: skip
    """Dropout draws from torch's global generator: each run's steps draw it from a stream of their own (checkpointed
    with the others), so a seed gives one trajectory, a stopped run resumes to it, and the global generator outside
    the steps is untouched."""
    config = TrainConfig(data_dir=data_dir, **{**OWN, "model": "own_models:dropout_vae", "evaluate": False})
    iwae.runs.train.train(config, tmp_path / "one", progress=False)
    torch.manual_seed(123)  # another global state around the second run: it must not matter
    state = torch.random.get_rng_state()
    iwae.runs.train.train(config, tmp_path / "two", progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    _same_checkpoints(tmp_path / "one", tmp_path / "two")
    stream = load_file(str(tmp_path / "one" / "checkpoint.safetensors"))["extra.rng_global"]
    assert not torch.equal(stream, streams.generator(0, "global").get_state())  # its steps drew from it
    train_stopped_at(monkeypatch, config, tmp_path / "broken")
    iwae.runs.train.resume(tmp_path / "broken", progress=False)
    _same_checkpoints(tmp_path / "one", tmp_path / "broken")
    assert _log_without_timings(tmp_path / "broken") == _log_without_timings(tmp_path / "one")
    with_scheme_1 = config.replace(streams=1, stages=1)  # a stream new to scheme 2, drawn so for every run
    iwae.runs.train.train(with_scheme_1, tmp_path / "scheme-1", progress=False)


@pytest.mark.slow  # trains the tiny schedule twice and a half
def test_the_path_keyword_probe_draws_nothing_from_the_runs_global_stream(data_dir, tmp_path, monkeypatch):
    """DReG probes a model class of its own at the first step of each process; a model that draws from the global
    generator in eval mode too must not have that probe's draws taken from its run's stream, or a resumed run
    would part from the uninterrupted one."""
    config = TrainConfig(data_dir=data_dir, **{**OWN, "model": "own_models:draws_itself", "estimator": "dreg",
                                               "evaluate": False})  # fmt: skip
    iwae.runs.train.train(config, tmp_path / "one", progress=False)
    train_stopped_at(monkeypatch, config, tmp_path / "broken")
    iwae.runs.train.resume(tmp_path / "broken", progress=False)
    _same_checkpoints(tmp_path / "one", tmp_path / "broken")
