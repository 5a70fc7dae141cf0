"""The estimators experiment's paired differences: per seed over images, then over seeds, and how they are read."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from iwae.experiments.head_to_head import (
    MIN_SEEDS,
    REFERENCE,
    estimators_section,
    paired_over_seeds,
    reading,
)


def _record(seed: int, ll: list[float]) -> dict:
    return {"split": "test", "eval_k": 50, "seed": seed, "streams": 2, "dataset": "mnist",
            "index": list(range(len(ll))), "ll": ll}  # fmt: skip


def test_per_seed_difference_is_the_mean_over_images_and_over_seeds_their_mean_and_its_standard_error():
    ref = {s: _record(s, [-90.0, -100.0, -110.0]) for s in (0, 1, 2)}
    # the other run is worse by 1, 2, 3 nats (seed 0), 2, 2, 2 (seed 1), 0, 1, 2 (seed 2)
    worse = {0: [1.0, 2.0, 3.0], 1: [2.0, 2.0, 2.0], 2: [0.0, 1.0, 2.0]}
    other = {s: _record(s, [a - d for a, d in zip(ref[s]["ll"], worse[s])]) for s in (0, 1, 2)}
    d = paired_over_seeds(ref, other)
    assert d["seeds"] == [0, 1, 2]
    assert [p["mean"] for p in d["per_seed"]] == [2.0, 2.0, 1.0]
    assert d["per_seed"][0]["sem"] == pytest.approx(1 / math.sqrt(3)) and d["per_seed"][1]["sem"] == 0.0
    assert d["mean"] == pytest.approx(5 / 3)
    assert d["sem"] == pytest.approx(statistics.stdev([2.0, 2.0, 1.0]) / math.sqrt(3))
    assert paired_over_seeds(ref, ref)["mean"] == 0.0
    assert paired_over_seeds(ref, {7: _record(7, [0.0, 0.0, 0.0])}) is None  # no seed in common


def test_records_of_other_images_or_noise_are_not_paired():
    a = _record(0, [-1.0, -2.0])
    for key, value in (("eval_k", 5000), ("index", [0, 5]), ("streams", 1)):
        with pytest.raises(ValueError, match=f"differ in '{key}'"):
            paired_over_seeds({0: a}, {0: {**a, key: value}})


def test_a_difference_is_read_from_three_seeds_at_two_standard_errors():
    assert reading({"seeds": [0, 1], "mean": -5.0, "sem": 0.1}).startswith("undecided: 2 seed(s)")
    assert reading({"seeds": [0], "mean": -5.0, "sem": None}).startswith("undecided")
    assert reading({"seeds": [0, 1, 2], "mean": -0.3, "sem": 0.1}) == "lower NLL (better)"
    assert reading({"seeds": [0, 1, 2], "mean": 0.3, "sem": 0.1}) == "higher NLL (worse)"
    assert reading({"seeds": [0, 1, 2], "mean": 0.19, "sem": 0.1}).startswith("within noise")
    assert MIN_SEEDS == 3


def test_section_rows_every_evaluated_run_with_its_difference_from_iwae(tmp_path):
    names = [REFERENCE, "mnist-l1-iwae-dreg-k5", "mnist-l1-vr0.5-k5"]
    ll = {REFERENCE: [-90.0, -91.0], "mnist-l1-iwae-dreg-k5": [-89.5, -90.0], "mnist-l1-vr0.5-k5": None}
    cells = {n: ({"test_nll": -sum(v) / 2, "active_units": [20], "seeds": [0]} if v else None) for n, v in ll.items()}
    configs = {REFERENCE: dict(bound="iwae", estimator="reparam", alpha=0.0),
               "mnist-l1-iwae-dreg-k5": dict(bound="iwae", estimator="dreg", alpha=0.0)}  # fmt: skip
    lines, entry = estimators_section(
        tmp_path, names, lambda p: cells[p.name], lambda p: {0: _record(0, ll[p.name])} if ll[p.name] else {},
        lambda p: configs.get(p.name),
    )  # fmt: skip
    rows = [line for line in lines if line.startswith("| mnist")]
    assert len(rows) == 2  # the unevaluated VR run has no row
    assert "IWAE, dreg" in rows[1] and "-0.75" in rows[1] and "undecided: 1 seed(s)" in rows[1]
    assert entry["runs"][names[1]]["vs_reference"]["mean"] == pytest.approx(-0.75)
    assert list(entry["pairs"]) == [f"mnist-l1-iwae-dreg-k5 - {REFERENCE}"]
    json.dumps(entry)  # what results.json holds
    assert estimators_section(tmp_path, names, lambda p: None, lambda p: {}, lambda p: None)[1] == {}
