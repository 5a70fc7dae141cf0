"""A bound or an estimator of one's own named ``MODULE:NAME`` (``iwae train --bound own_objectives:iwae_again``): in a
run folder, on the command line and in the Python API as the package's own are; the package's numbers bit for bit
where it is the package's maths written again; its errors named before any run folder is made."""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file
from test_train import _log_without_timings, train_stopped_at

import iwae
import iwae.fleets.fleet_train
import iwae.runs.train
from iwae.cli import main
from iwae.fleets.fleet import stackable
from iwae.objectives import Objective
from iwae.objectives.registry import register_bound
from iwae.runs import rundir
from iwae.runs.config import TrainConfig
from iwae.runs.rundir import RunError
from iwae.util.imports import lies_inside

QUIET = dict(TINY, evaluate=False)


@pytest.fixture(autouse=True)
def _registry(registry_as_found):
    """Every test here registers what it names."""


def _weights(run) -> dict[str, torch.Tensor]:
    """The model's parameters and Adam's state in a run's checkpoint (not its random streams)."""
    return {k: v for k, v in load_file(str(run / "checkpoint.safetensors")).items() if not k.startswith("extra.rng")}


def _same_run(a, b) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _log_without_timings(a) == _log_without_timings(b)


def test_the_packages_bound_and_estimator_written_again_train_a_run_folder_to_its_numbers(data_dir, tmp_path):
    """`iwae train --bound MODULE:NAME --estimator MODULE:NAME` trains, and its config.json names them: the same
    weights, Adam state and learning curve as `--bound iwae --estimator reparam`, bit for bit."""
    (tmp_path / "tiny.json").write_text(json.dumps(QUIET))
    argv = ["train", "--config", str(tmp_path / "tiny.json"), "--bound", "own_objectives:iwae_again", "--estimator",
            "own_objectives:reparam_again", "--out", str(tmp_path / "own"), "--data-dir", data_dir, "--quiet",
            "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    iwae.runs.train.train(TrainConfig(data_dir=data_dir, **QUIET), tmp_path / "package", progress=False)
    _same_run(tmp_path / "own", tmp_path / "package")
    streams = [load_file(str(tmp_path / run / "checkpoint.safetensors")) for run in ("own", "package")]
    assert "extra.rng_global" in streams[0] and "extra.rng_global" not in streams[1]  # (code of one's own: its stream)
    config = rundir.read_config(tmp_path / "own")
    assert (config.bound, config.estimator) == ("own_objectives:iwae_again", "own_objectives:reparam_again")
    assert rundir.load_run(tmp_path / "own")[0] == config


def test_a_bound_of_ones_own_reads_the_parameters_it_declares_and_gets_the_estimators_defined_for_it(data_dir):
    model = iwae.IWAE.paper(layers=1, generator=torch.Generator().manual_seed(0))
    x = torch.bernoulli(torch.full((4, 784), 0.3), generator=torch.Generator().manual_seed(1))
    noise = model.draw_noise(5, 4, torch.Generator().manual_seed(2))
    own, package = Objective("own_objectives:vr_again", 5, alpha=0.3), Objective("vr", 5, alpha=0.3)
    assert own.params == package.params == {"alpha": 0.3}
    assert torch.equal(own.loss(model, x, noise=noise), package.loss(model, x, noise=noise))
    with pytest.warns(UserWarning, match="alpha=0.3 has no effect on bound='own_objectives:iwae_again'"):
        Objective("own_objectives:iwae_again", 5, alpha=0.3)
    Objective("own_objectives:iwae_again", 5, "dreg")  # it declares its path weights
    with pytest.raises(ValueError, match="estimator 'dreg' is defined for bound=.* got bound='own_objectives:vr_"):
        Objective("own_objectives:vr_again", 5, "dreg")  # (no path weights declared)
    config = TrainConfig(data_dir=data_dir, bound="own_objectives:vr_again", alpha=0.25)
    assert Objective.from_config(config).params == {"alpha": 0.25}


BOUND_MODULE = """
import iwae
from iwae.objectives import Bound
from iwae.objectives.reparam import Reparam

tilted = Bound(lambda log_w, k, params: iwae.bounds.iwae(log_w) - {shift})
again = Reparam()
"""


def test_a_name_registered_before_follows_its_module_reloaded_or_keeps_the_object_it_had(tmp_path, monkeypatch,
                                                                                        request):  # fmt: skip
    """A notebook edits its module and reloads it (or runs a cell of ``__main__`` again): the next objective of the
    same MODULE:NAME computes the new bound and uses the new estimator; a reload that leaves no Bound there is
    refused, and the bound registered before stays."""
    import importlib

    monkeypatch.syspath_prepend(str(tmp_path))
    request.addfinalizer(lambda: sys.modules.pop("tilted_bounds", None))
    (tmp_path / "tilted_bounds.py").write_text(BOUND_MODULE.format(shift=0.0))
    log_w = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    first = Objective("tilted_bounds:tilted", 5, "tilted_bounds:again")
    module = sys.modules["tilted_bounds"]
    assert torch.equal(first.per_example(log_w), iwae.bounds.iwae(log_w))
    old_estimator = iwae.objectives.ESTIMATORS_BY_NAME["tilted_bounds:again"]
    Objective("tilted_bounds:tilted", 5)  # the same objects: nothing registered again
    assert iwae.objectives.ESTIMATORS_BY_NAME["tilted_bounds:again"] is old_estimator

    (tmp_path / "tilted_bounds.py").write_text(BOUND_MODULE.format(shift=2.0) + "# edited\n")
    importlib.invalidate_caches()
    importlib.reload(module)
    second = Objective("tilted_bounds:tilted", 5, "tilted_bounds:again")
    assert torch.equal(second.per_example(log_w), iwae.bounds.iwae(log_w) - 2.0)
    assert iwae.objectives.ESTIMATORS_BY_NAME["tilted_bounds:again"] is module.again is not old_estimator

    module.tilted = lambda log_w, k, params: log_w.mean(0)  # a cell that rebinds the name to no Bound
    with pytest.raises(ValueError, match="bound tilted_bounds:tilted: a function, not an iwae.objectives.Bound"):
        Objective("tilted_bounds:tilted", 5)
    module.tilted = iwae.objectives.Bound(lambda log_w, k, params: log_w.mean(0), params=("tau",))  # not declared
    with pytest.raises(ValueError, match="bound tilted_bounds:tilted: unknown bound parameter"):
        Objective("tilted_bounds:tilted", 5)
    assert torch.equal(iwae.objectives.BOUNDS["tilted_bounds:tilted"].value(log_w, 5, {}), iwae.bounds.iwae(log_w) - 2)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--bound", "no_such_module:b"], r"bound no_such_module:b: cannot import 'no_such_module' .*PYTHONPATH"),
        (["--bound", "own_objectives:missing"], "bound own_objectives:missing: own_objectives has no 'missing'"),
        (["--bound", "own_objectives:not_a_bound"], "a function, not an iwae.objectives.Bound; name the Bound"),
        (["--estimator", "own_objectives:ReparamAgain"], "the class ReparamAgain, not an instance of an iwae.objec"),
        (["--estimator", "own_objectives:iwae_again"], "a Bound, not an instance of an iwae.objectives.Estimator"),
        (["--bound", "vae", "--estimator", "own_objectives:iwae_only"], "defined for bound='iwae' only, got bound="),
        (["--bound", "own_objectives:ReparamAgain"], "the class ReparamAgain, not an iwae.objectives.Bound"),
        (
            ["--bound", "own_objectives:reads_its_own_parameter"],
            r"bound own_objectives:reads_its_own_parameter: "
            r"unknown bound parameter\(s\) 'tau'; a bound reads those iwae.objectives.names.PARAMS declares",
        ),
        (["--bound", "no_such_module:b", "--seeds", "0,1"], "bound no_such_module:b: cannot import"),  # a fleet
        (["--bound", "no_such_module:b", "--executor", "slurm"], "bound no_such_module:b: cannot import"),
    ],
)
def test_what_is_no_bound_or_estimator_of_ones_own_is_named_before_any_run_folder_is_made(
    flags, message, data_dir, tmp_path, capsys
):
    assert main(["train", *flags, "--out", str(tmp_path / "run"), "--data-dir", data_dir, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()


def test_the_command_line_and_the_config_take_a_package_name_or_module_name_and_nothing_else(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--bound", "own objectives", "--out", "x"])
    assert "--bound/--objective: unknown choice 'own objectives'; choose one of vae, iwae, miwae, ciwae, piwae, " \
        "vr, or MODULE:NAME naming an iwae.objectives.Bound of one's own" in capsys.readouterr().err  # fmt: skip
    with pytest.raises(SystemExit):
        main(["train", "--estimator", "drge", "--out", "x"])
    assert "--estimator: unknown choice 'drge'; did you mean 'dreg'?" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"unknown estimator 'rienforce'; choose one of .*, or MODULE:NAME naming"):
        TrainConfig(estimator="rienforce")
    with pytest.raises(ValueError, match=r"unknown bound 'iwea'; choose one of .* of one's own; did you mean 'iwae'"):
        TrainConfig.from_dict({"bound": "iwea"})  # (a config file's)
    with pytest.raises(ValueError, match=r"unknown dataset 'my_data:mnist'; choose one of"):
        TrainConfig(dataset="my_data:mnist")  # (only a bound and an estimator may be one's own)
    with pytest.raises(TypeError, match=r"a Bound's params are a tuple of parameter names, e.g. \('alpha',\)"):
        iwae.objectives.Bound(lambda log_w, k, params: log_w[0], params="alpha")
    register_bound("registered-here", iwae.objectives.BOUNDS["iwae"])
    with pytest.raises(ValueError, match="is known to the process that added it; a run folder names it as MODULE"):
        TrainConfig(bound="registered-here")


@pytest.mark.parametrize("mode", ["stacked", "graph"])
@pytest.mark.parametrize(("flag", "what"), [("--estimator", "an estimator"), ("--bound", "a bound")])
def test_a_stacked_fleet_of_a_bound_or_an_estimator_of_ones_own_is_refused_before_any_folder_is_made(
    mode, flag, what, data_dir, tmp_path, capsys
):
    spec = {"--estimator": "own_objectives:reparam_again", "--bound": "own_objectives:iwae_again"}[flag]
    argv = ["train", flag, spec, "--seeds", "0,1", "--fleet", mode, "--out", str(tmp_path / "fleet"), "--data-dir",
            data_dir]  # fmt: skip
    assert main(argv) == 1
    assert f"{what} of one's own ({spec}) is stepped by a loop fleet" in capsys.readouterr().err
    assert not (tmp_path / "fleet").exists()
    objectives = [Objective(spec if flag == "--bound" else "iwae", 3, "reparam" if flag == "--bound" else spec)]
    assert f"{what.split()[1]} {spec} is one of one's own" in stackable([iwae.IWAE.paper()], objectives)


# Layouts of a downloaded folder that brings a module: where the run lies and the module, which folder is the working
# one (and on the import path), and how the run is named to load_run.
LAYOUTS = {
    "run": ("downloads/run", "downloads/run", "downloads/run", "."),
    "dotted": ("downloads/run", "downloads/run", ".", "downloads/run"),  # downloads.run.brought_along
    "fleet": ("downloads/seed-0", "downloads", "downloads", "seed-0"),
    "deeper in a fleet": ("downloads/a/run0", "downloads", "downloads", "a/run0"),
    "fleet, from its run": ("downloads/seed-0", "downloads", "downloads/seed-0", "."),
}


@pytest.mark.parametrize(
    ("key", "spec", "layout", "where"),
    [
        ("bound", "brought_along:tvo", "run", "the folder itself"),
        ("estimator", "brought_along:e", "run", "the folder itself"),
        ("objective", "brought_along:tvo", "run", "the folder itself"),  # (bound's former name)
        ("bound", "downloads.run.brought_along:tvo", "dotted", "the folder itself"),  # (through the folder's path)
        ("model", "brought_along:build", "fleet", "its fleet's folder"),  # (a fleet's folder holds its runs)
        ("model", "brought_along:build", "deeper in a fleet", "its fleet's folder"),
        ("bound", "brought_along:tvo", "fleet, from its run", "its fleet's folder"),
    ],
)
def test_a_folder_that_brings_the_code_it_names_is_refused_before_importing_it(
    key, spec, layout, where, tiny_run, tmp_path, monkeypatch
):
    """A downloaded folder whose config names a module inside it (or inside the fleet's folder around it), loaded
    with that folder on the import path (the working folder, as `python -m` and notebooks have it), is refused before
    that module runs."""
    run, module, home, named = LAYOUTS[layout]
    run, module, home = tmp_path / run, tmp_path / module, tmp_path / home
    shutil.copytree(tiny_run, run)
    if module != run:
        (module / "fleet.json").write_text("{}")
    config = {k: v for k, v in json.loads((run / "config.json").read_text()).items() if k != "bound"}
    (run / "config.json").write_text(json.dumps({"bound": "iwae", **config, key: spec}))
    (module / "brought_along.py").write_text("open('RAN', 'w').close()\n")
    monkeypatch.chdir(home)
    monkeypatch.syspath_prepend(str(module if layout != "dotted" else home))
    named_key = "bound" if key == "objective" else key
    with pytest.raises(RunError, match=f"names {named_key} {spec}, whose module .* lies inside {where}"):
        iwae.load_run(named)
    assert not (home / "RAN").exists() and not any("brought_along" in m for m in sys.modules)


def test_a_run_folder_named_as_the_module_is_not_taken_for_its_package(tmp_path, monkeypatch):
    """Python imports my_bounds.py, not a folder my_bounds/ without __init__.py (a namespace package only where no
    entry of the import path holds a module of that name), beside it or on another entry: a run folder so named
    brings no code."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "my_bounds.py").write_text("")
    for where in ("code", "runs"):
        (tmp_path / where / "my_bounds").mkdir(parents=True)
        monkeypatch.syspath_prepend(str(tmp_path / where))
        assert not lies_inside("my_bounds:tvo", tmp_path / where / "my_bounds")
    (tmp_path / "code" / "my_bounds.py").unlink()
    assert lies_inside("my_bounds:tvo", tmp_path / "runs" / "my_bounds")  # (now a namespace package, from inside)


@pytest.mark.slow  # trains the tiny schedule twice and a half
def test_an_estimator_that_draws_from_the_global_generator_trains_and_resumes_to_the_same_numbers(
    data_dir, tmp_path, monkeypatch
):
    """Its draws come from the run's own stream, as a model of one's own's do: a seed gives one trajectory, a
    stopped run resumes to it, and the global generator outside the steps is untouched."""
    config = TrainConfig(data_dir=data_dir, **QUIET, estimator="own_objectives:randomly_scaled")
    iwae.runs.train.train(config, tmp_path / "one", progress=False)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    iwae.runs.train.train(config, tmp_path / "two", progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    _same_run(tmp_path / "one", tmp_path / "two")
    assert "extra.rng_global" in load_file(str(tmp_path / "one" / "checkpoint.safetensors"))
    train_stopped_at(monkeypatch, config, tmp_path / "broken")
    iwae.runs.train.resume(tmp_path / "broken", progress=False)
    _same_run(tmp_path / "one", tmp_path / "broken")
    dirs = [tmp_path / "fleet" / f"seed-{s}" for s in (0, 1)]  # a loop fleet swaps each run's own stream in
    iwae.fleets.fleet_train.train_fleet([config, config.replace(seed=1)], dirs, tmp_path / "fleet" / "fleet.json",
                                        mode="loop", progress=False)  # fmt: skip
    _same_run(tmp_path / "one", dirs[0])
    package = TrainConfig(data_dir=data_dir, **QUIET)
    iwae.runs.train.train(package, tmp_path / "package", progress=False)
    assert not torch.equal(_weights(tmp_path / "one")["model.encoder.0.mean.weight"],
                           _weights(tmp_path / "package")["model.encoder.0.mean.weight"])  # fmt: skip


def test_a_folder_whose_bound_does_not_import_here_loads_evaluates_and_finishes_and_says_so_to_train_on(
    tiny_run, capsys
):
    """Scoring a model does not need the bound it was trained on: a folder (an exported one, say) loads, evaluates
    and finishes its final evaluation without that module; training it on does, and says where to put it, having
    written nothing."""
    config = json.loads((tiny_run / "config.json").read_text())
    (tiny_run / "config.json").write_text(json.dumps({**config, "bound": "moved_away:tvo"}))
    assert rundir.load_run(tiny_run)[0].bound == "moved_away:tvo"
    assert main(["evaluate", str(tiny_run), "--k", "5", "--n", "4", "--quiet"]) == 0
    (tiny_run / "metrics.json").unlink()  # trained to its end, its final evaluation to come
    assert main(["resume", str(tiny_run), "--quiet"]) == 0 and (tiny_run / "metrics.json").is_file()
    capsys.readouterr()
    (tiny_run / "metrics.json").unlink()
    (tiny_run / "config.json").write_text(json.dumps({**config, "bound": "moved_away:tvo", "stages": 3}))  # more
    before = {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()}
    assert main(["resume", str(tiny_run), "--eval-n", "10", "--quiet"]) == 1  # (its config.json unchanged too)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bound moved_away:tvo: cannot import 'moved_away' (ModuleNotFoundError" in err
    assert {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()} == before
