"""Paired comparison of two runs: same images, same noise, per-example differences and their standard error."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from iwae.analysis.compare import compare_runs, paired_difference, paired_records


def test_paired_difference_is_the_mean_and_standard_error_of_per_example_differences():
    ll_a = torch.tensor([-90.0, -100.0, -110.0, -95.0])
    ll_b = ll_a - torch.tensor([1.0, 2.0, 3.0, 2.0])  # B is worse by 1, 2, 3, 2 nats
    d = paired_difference(ll_a, ll_b)
    assert d["mean"] == -2.0  # NLL_A - NLL_B
    assert d["sem"] == pytest.approx((2 / 3) ** 0.5 / 2)  # std([1, 2, 3, 2]) / sqrt(4)
    assert paired_difference(ll_a, ll_a) == {"mean": 0.0, "sem": 0.0}
    with pytest.raises(ValueError, match=r"same examples, got \(4,\), \(3,\)"):
        paired_difference(ll_a, ll_b[:3])


@pytest.fixture(scope="module")
def runs(_trained_tiny_run, tiny_config, tmp_path_factory):
    """Two tiny MNIST runs with the same seed: an IWAE (the session's TINY run) and a VAE."""
    from iwae.runs.train import train

    root = tmp_path_factory.mktemp("runs")
    a = shutil.copytree(_trained_tiny_run, root / "iwae")
    b = train(dataclasses.replace(tiny_config, bound="vae"), root / "vae", progress=False)
    return a, b


def test_a_run_compared_with_itself_differs_by_exactly_zero(runs):
    r = compare_runs(runs[0], runs[0], progress=False)
    assert r["difference"] == {"mean": 0.0, "sem": 0.0} and r["a"]["nll"] == r["b"]["nll"]


def test_swapping_the_runs_negates_the_difference(runs):
    ab = compare_runs(*runs, progress=False)
    ba = compare_runs(*reversed(runs), progress=False)
    assert ab["difference"]["mean"] == -ba["difference"]["mean"] != 0
    assert ab["difference"]["sem"] == ba["difference"]["sem"] > 0
    assert (ab["a"], ab["b"]) == (ba["b"], ba["a"])


def test_difference_is_that_of_the_two_evaluate_nlls_and_tighter_than_unpaired(runs):
    from iwae.runs.evaluate_run import evaluate_run

    r = compare_runs(*runs, k=30, n=40, progress=False)
    a, b = (evaluate_run(run, k=30, n=40, progress=False) for run in runs)
    assert (r["a"]["nll"], r["a"]["nll_sem"], r["b"]["nll"]) == (a["nll"], a["nll_sem"], b["nll"])
    assert r["difference"]["mean"] == pytest.approx(a["nll"] - b["nll"], abs=1e-4)
    assert r["difference"]["sem"] < (a["nll_sem"] ** 2 + b["nll_sem"] ** 2) ** 0.5
    assert (r["eval_k"], r["n"], r["seed"], r["split"], r["dataset"]) == (30, 40, 0, "test", "mnist")


def test_runs_of_different_seeds_are_scored_with_the_first_runs_streams_and_other_data_sets_refused(runs, tmp_path):
    other = shutil.copytree(runs[1], tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "seed": 1}))
    same = compare_runs(runs[0], runs[1], k=10, n=20, progress=False)
    mixed = compare_runs(runs[0], other, k=10, n=20, progress=False)  # a fleet's seed-0 and seed-1, say
    assert mixed["seed"] == 0 and mixed["b"]["nll"] == same["b"]["nll"]  # the same images and noise as seed 0's
    assert compare_runs(runs[0], other, k=10, n=20, seed=1, progress=False)["seed"] == 1
    (other / "config.json").write_text(json.dumps({**config, "dataset": "binarized-mnist"}))
    with pytest.raises(ValueError, match=r"cannot compare runs of different data sets: .*iwae \(mnist\), .*"):
        compare_runs(runs[0], other, progress=False)


def test_cli_prints_the_table_and_writes_the_json(runs, tmp_path, capsys):
    from iwae.cli import main

    out = tmp_path / "ab.json"
    assert main(["compare", str(runs[0]), str(runs[1]), "--k", "10", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved == compare_runs(*runs, k=10, progress=False)
    assert f"| A - B (paired) | {saved['difference']['mean']:+.3f} ± " in printed and f"wrote {out}" in printed
    assert main(["compare", str(runs[0]), str(tmp_path / "missing"), "--quiet"]) == 1
    # by default the JSON goes into run A's folder, and `iwae sample`'s picture into the run's: not the cwd
    assert main(["compare", str(runs[0]), str(runs[1]), "--k", "10", "--n", "20", "--quiet"]) == 0
    assert (runs[0] / f"compare-{runs[0].name}-{runs[1].name}-test-k10-n20.json").is_file()
    assert main(["sample", str(runs[0]), "--n", "4", "--seed", "3"]) == 0
    assert (runs[0] / "samples-n4-seed3.png").is_file()


def test_estimator_results_generator_writes_every_number_from_the_runs(runs, tmp_path):
    """results/estimators/make_results.py: NLLs as `iwae evaluate`, differences as `iwae compare`."""
    import runpy
    from pathlib import Path

    from iwae.runs.evaluate_run import evaluate_run

    script = Path(__file__).resolve().parents[1] / "results" / "estimators" / "make_results.py"
    make_results = runpy.run_path(str(script))["make_results"]
    stl = shutil.copytree(runs[0], tmp_path / "stl")
    config = json.loads((stl / "config.json").read_text())
    (stl / "config.json").write_text(json.dumps({**config, "estimator": "stl"}))
    out = make_results([runs[0], stl], 20, 50, "cmd")
    assert list(out["runs"]) == ["reparam", "stl"] and out["source"] == "cmd" and "data_dir" not in out["training"]
    reference = evaluate_run(runs[0], progress=False)
    assert out["runs"]["reparam"]["test_nll"] == reference["nll"] == out["runs"]["stl"]["test_nll"]
    assert out["runs"]["reparam"]["active_units"] == reference["active_units"]
    assert out["paired_test_nll_differences"] == {"stl - reparam": {"mean": 0.0, "sem": 0.0}}
    with pytest.raises(ValueError, match="differs from .* in more than the estimator: bound"):
        make_results([stl, runs[1]], 20, 50, "cmd")


def test_a_finished_runs_per_image_record_is_what_compare_scores_and_pairs_alike(runs, tmp_path):
    """``test_ll.json``: the final evaluation's L_k of each test image, the values `iwae compare` draws again, so
    that the runs of one seed are paired from their folders without scoring them again."""
    from iwae.analysis.compare import log_likelihoods
    from iwae.runs.evaluate_run import finish_run, read_per_image, spread

    runs = (runs[0], shutil.copytree(runs[1], tmp_path / "vae"))
    finish_run(runs[1], progress=False)
    records = [read_per_image(run) for run in runs]
    _, lls = log_likelihoods(runs, progress=False)
    for record, ll in zip(records, lls):
        assert record["ll"] == ll.double().tolist() and record["split"] == "test"
        assert record["index"] == spread(10_000, len(ll)).tolist()
    stored = paired_records(*records)
    assert stored == pytest.approx(compare_runs(*runs, progress=False)["difference"], abs=1e-6)
    assert stored == paired_difference(*(torch.tensor(r["ll"], dtype=torch.float64) for r in records))
    for key, other in (("seed", 1), ("index", records[1]["index"][::-1]), ("eval_k", 7)):
        with pytest.raises(ValueError, match=f"differ in '{key}': not paired"):
            paired_records(records[0], {**records[1], key: other})


def test_a_damaged_per_image_record_is_refused(runs, tmp_path):
    from iwae.runs.evaluate_run import read_per_image
    from iwae.runs.rundir import PER_IMAGE_NAME

    with pytest.raises(FileNotFoundError, match="no per-image record"):
        read_per_image(tmp_path)
    record = json.loads((runs[0] / PER_IMAGE_NAME).read_text())
    record["ll"][3] = float("nan")
    (tmp_path / PER_IMAGE_NAME).write_text(json.dumps(record))
    with pytest.raises(ValueError, match="damaged per-image record"):
        read_per_image(tmp_path)
