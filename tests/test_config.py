"""The config is declared once: the command line, --config files and the command-line guide's option table
(docs/cli.md) come from its fields."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from iwae.cli.commands import build_parser
from iwae.cli.options import config_from_args, options_table
from iwae.runs.config import TrainConfig

CLI_GUIDE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _train_args(*argv: str):
    return build_parser().parse_args(["train", "--out", "run", *argv])


def test_every_command_line_field_has_its_flag_and_default():
    defaults = config_from_args(_train_args())
    assert defaults == TrainConfig()  # no flag given: exactly the config's defaults
    cli = [f for f in dataclasses.fields(TrainConfig) if f.metadata["cli"]]
    assert {"dataset", "k", "estimator", "custom_schedule", "compile", "active_threshold"} <= {f.name for f in cli}
    parsed = config_from_args(
        _train_args("--k", "7", "--schedule", "2:1e-3,1:1e-4", "--compile", "--active-threshold", "0.02")
    )
    assert (parsed.k, parsed.custom_schedule, parsed.compile, parsed.active_threshold) == (
        7, [[2.0, 1e-3], [1.0, 1e-4]], True, 0.02,
    )  # fmt: skip


def test_choices_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        _train_args("--stages", "9")
    assert "--stages: unknown choice '9'; choose one of 1, 2, 3, 4, 5, 6, 7, 8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _train_args("--k", "0")
    assert "expected a positive integer, got 0" in capsys.readouterr().err


def test_config_file_then_flags(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(TrainConfig(k=5, seed=3, bound="vae").to_json())
    config = config_from_args(_train_args("--seed", "4"), path)
    assert (config.k, config.bound, config.seed) == (5, "vae", 4)  # file, file, flag
    assert config_from_args(_train_args(), path) == TrainConfig.load(path)


def test_bad_config_files_are_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{k: 5")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        config_from_args(_train_args(), bad)
    bad.write_text(json.dumps({"learning_rate": 0.1}))
    with pytest.raises(ValueError, match=r"unknown config keys \['learning_rate'\]"):
        config_from_args(_train_args(), bad)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="must hold a JSON object"):
        config_from_args(_train_args(), bad)
    with pytest.raises(ValueError, match="cannot read config file"):
        config_from_args(_train_args(), tmp_path / "missing.json")


def test_config_validation_names_each_problem():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; choose one of mnist, omniglot, binarized-mnist"):
        TrainConfig(dataset="cifar")
    with pytest.raises(ValueError, match="unknown stages 9; choose one of 1, 2, 3, 4, 5, 6, 7, 8"):
        TrainConfig(stages=9)
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        TrainConfig(k=0)
    with pytest.raises(ValueError, match=r"unknown config keys \['learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match=r"layers=2 and latent_dims=\[10\] disagree: latent_dims gives the archi"):
        TrainConfig(layers=2, latent_dims=[10])
    assert TrainConfig(layers=2, latent_dims=[20, 10]).latent_dims == [20, 10]  # agreeing, or layers left at 1
    assert TrainConfig(latent_dims=[20, 10]).layers == 1


def test_the_guides_option_table_is_generated_from_the_config():
    text = CLI_GUIDE.read_text()
    block = text.split("<!-- options: begin -->\n")[1].split("<!-- options: end -->")[0]
    assert block.strip() == options_table().strip(), "regenerate docs/cli.md's table with `python -m iwae.cli.options`"


def test_python_callers_tuples_numpy_numbers_and_paths_are_taken_as_json_would_hold_them():
    import numpy as np

    c = TrainConfig(latent_dims=(2,), q_hidden=((8,),), p_hidden=[[8]], custom_schedule=[(1, 1e-3)],
                    seed=np.int64(3), pass_scale=np.float32(0.5), init_from=Path("runs/a"))  # fmt: skip
    assert (c.latent_dims, c.q_hidden, c.custom_schedule, c.init_from) == ([2], [[8]], [[1, 1e-3]], "runs/a")
    assert type(c.seed) is int and type(c.pass_scale) is float
    assert TrainConfig.from_dict(json.loads(c.to_json())) == c
    for bad, message in [({"compile": "no"}, "compile must be true or false, got 'no'"),
                         ({"seed": True}, "seed must be an integer, got True"),
                         ({"latent_dims": [2, "a"]}, "latent_dims must be a list of integers or null")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad)
