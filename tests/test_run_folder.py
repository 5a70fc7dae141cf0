"""The run folder (iwae.runs.rundir): atomic files, the metrics log cut back on resume, status."""

from __future__ import annotations

import json

import pytest

from iwae.runs import rundir
from iwae.runs.config import TrainConfig


def test_status_new_partial_done(tmp_path):
    run = tmp_path / "run"
    assert rundir.status(run) == "new"
    rundir.create(run, TrainConfig(k=5))
    assert rundir.status(run) == "partial" and rundir.read_config(run) == TrainConfig(k=5)
    (run / rundir.METRICS_NAME).write_text("{}")
    assert rundir.status(run) == "done"


def test_create_writes_config_atomically_and_refuses_an_existing_run(tmp_path):
    run = tmp_path / "run"
    rundir.create(run, TrainConfig())
    assert [p.name for p in run.iterdir()] == [rundir.CONFIG_NAME]  # no temporary files left
    assert json.loads((run / rundir.CONFIG_NAME).read_text())["k"] == 50
    with pytest.raises(rundir.RunError, match="already holds a run; continue it with `iwae resume"):
        rundir.create(run, TrainConfig())
    with pytest.raises(rundir.RunError, match=r"elsewhere: no such folder; name a run folder"):
        rundir.read_config(tmp_path / "elsewhere")


def test_metrics_log_is_cut_back_to_the_checkpoint_on_resume(tmp_path):
    assert rundir.read_log(tmp_path) == []
    for i in range(4):
        rundir.append_log(tmp_path, {"pass": i})
    with open(tmp_path / rundir.LOG_NAME, "a") as f:
        f.write('{"pass": 4')  # a line cut short by a kill
    rundir.truncate_log(tmp_path, 2)
    assert rundir.read_log(tmp_path) == [{"pass": 0}, {"pass": 1}]
    rundir.append_log(tmp_path, {"pass": 2})
    assert [r["pass"] for r in rundir.read_log(tmp_path)] == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == [rundir.LOG_NAME]  # no temporary files left


def test_a_run_starting_over_gets_an_empty_metrics_log(tmp_path):
    rundir.truncate_log(tmp_path, 0)
    assert (tmp_path / rundir.LOG_NAME).read_text() == "" and rundir.read_log(tmp_path) == []
