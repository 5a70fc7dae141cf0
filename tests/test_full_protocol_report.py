"""benchmarks.full_protocol: Table 1's cells from finished runs (or their exports), and the paper's claims paired."""

from __future__ import annotations

import dataclasses
import json

import pytest

from benchmarks import full_protocol
from iwae.analysis.compare import compare_runs
from iwae.runs.sharing import export_run
from iwae.runs.train import train_and_evaluate

pytestmark = pytest.mark.slow  # three tiny trainings

CELLS = {"mnist-l1-k1": ("iwae", 1), "mnist-l1-vae-k5": ("vae", 5), "mnist-l1-iwae-k5": ("iwae", 5)}


@pytest.fixture(scope="module")
def cells(tiny_config, tmp_path_factory):
    """The three cells as tiny runs of one seed, the IWAE k=5 as an export (what the report reads when published)."""
    root = tmp_path_factory.mktemp("cells")
    runs = {}
    for name, (bound, k) in CELLS.items():
        runs[name] = root / name
        train_and_evaluate(runs[name], dataclasses.replace(tiny_config, bound=bound, k=k), progress=False)
    runs["mnist-l1-iwae-k5"] = export_run(runs["mnist-l1-iwae-k5"], root / "export" / "mnist-l1-iwae-k5")
    return runs


@pytest.fixture
def references(tmp_path):
    short = {name: {"passes": 9.84, "test_nll": 100.0 + i} for i, name in enumerate(CELLS)}
    short["mnist-l1-k1"].update(seeds=[1, 0, 2], test_nll_seeds=[99.0, 98.0, 103.0], test_nll_sd=0.3)  # seed 0: 98
    short["mnist-l1-iwae-k5"].update(test_nll_sd=0.4)
    (tmp_path / "reproduction").mkdir()
    (tmp_path / "reproduction" / "results.json").write_text(json.dumps({"runs": short}))
    prefix = {"runs": [{"name": "mnist-l1-k1", "passes": 364.0, "test_nll": 87.44, "test_nll_sem": 0.74,
                        "eval_k": 5000, "eval_n": 1000, "active_units": [19]}]}  # fmt: skip
    (tmp_path / "prefix.json").write_text(json.dumps(prefix))
    return ["--reproduction", str(tmp_path / "reproduction"), "--prefix", str(tmp_path / "prefix.json")]


def test_each_cell_beside_the_paper_and_each_claim_paired_as_compare_scores_it(cells, references, tmp_path, capsys):
    out = tmp_path / "report" / "results.json"
    assert full_protocol.main([*map(str, cells.values()), *references, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["name"]: r for r in result["cells"]}
    paper = {"mnist-l1-k1": 86.76, "mnist-l1-vae-k5": 86.47, "mnist-l1-iwae-k5": 85.54}
    for name, run in cells.items():
        metrics = json.loads((run / "metrics.json").read_text())
        row = rows[name]
        assert row["test_nll"] == metrics["test_nll"] and row["train_nll"] == metrics["train_nll"]
        assert row["paper_test_nll"] == paper[name] and row["to_paper"] == pytest.approx(row["test_nll"] - paper[name])
        assert row["meets_goal"] is False  # a tiny run is far from the paper
    assert rows["mnist-l1-k1"]["short_test_nll"] == 98.0 and rows["mnist-l1-vae-k5"]["short_test_nll"] == 101.0
    assert rows["mnist-l1-k1"]["prefix_test_nll"] == 87.44 and rows["mnist-l1-vae-k5"]["prefix_test_nll"] is None
    assert rows["mnist-l1-iwae-k5"]["paper_active_units"] == [22]
    for claim in result["claims"]:
        a, b = cells[claim["a"]], cells[claim["b"]]
        scored = compare_runs(a, b, progress=False)["difference"]  # scored again, not read from the records
        assert claim["difference"] == pytest.approx(scored, abs=1e-5)
        nlls = [json.loads((run / "metrics.json").read_text())["test_nll"] for run in (a, b)]
        assert claim["difference"]["mean"] == pytest.approx(nlls[0] - nlls[1], abs=1e-4)
    assert [c["paper"] for c in result["claims"]] == pytest.approx([86.47 - 85.54, 86.76 - 86.47, 86.76 - 85.54])
    assert [c["seed_spread"] for c in result["claims"]] == [None, None, pytest.approx(0.5)]  # hypot(0.3, 0.4)
    for claim in result["claims"]:
        assert claim["reading"] == full_protocol._reading(claim["difference"], claim["paper"])
    report = out.with_suffix(".md").read_text()
    assert "| mnist-l1-vae-k5 | mnist-l1-iwae-k5 |" in report and "missed" in report
    # the references say how they were scored; the machines that trained and evaluated each cell
    assert "| 87.44 ± 0.74 (L_5000, 1,000 images) | 98.00 (9.84 passes) |" in report
    k1 = rows["mnist-l1-k1"]
    assert f"| {k1['active_units'][0]} / 19 (19) |" in report
    from iwae.util.machine import describe

    assert f"- mnist-l1-k1: trained on {describe()} (100%, 0.0 h); evaluated on {describe()} in 0.0 hours." in report
    assert out.with_name("results-curves.png").stat().st_size > 0
    assert "python -m benchmarks.full_protocol" in capsys.readouterr().out


def test_a_claim_whose_cell_is_missing_is_pending_and_a_cell_given_twice_is_refused(cells, references, tmp_path):
    out = tmp_path / "results.json"
    two = [str(cells["mnist-l1-k1"]), str(cells["mnist-l1-iwae-k5"])]
    assert full_protocol.main([*two, *references, "--out", str(out)]) == 0
    claims = {c["claim"]: c for c in json.loads(out.read_text())["claims"]}
    assert claims["IWAE k=5 beats the VAE k=5"]["difference"] is None
    assert claims["IWAE k=5 beats k=1"]["difference"] is not None
    assert "| pending |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        full_protocol.main([two[0], two[0], *references, "--out", str(out)])


def test_a_claims_reading_sets_our_difference_against_the_papers():
    reading = full_protocol._reading
    assert reading({"mean": 0.0, "sem": 0.0}, 0.93) == "no difference beyond twice the evaluation's standard error"
    assert reading({"mean": 0.19, "sem": 0.1}, 0.93) == "no difference beyond twice the evaluation's standard error"
    assert reading({"mean": 1.0, "sem": 0.1}, 0.93) == "as the paper: +0.07 nats from its difference"
    assert reading({"mean": -0.5, "sem": 0.1}, 0.29) == "opposite to the paper: -0.79 nats from its difference"


def test_a_cell_diagnosed_on_its_own_images_shows_its_weights_and_the_others_say_how(cells, references, tmp_path):
    from iwae.analysis.diagnose_run import diagnose_run

    config = json.loads((cells["mnist-l1-k1"] / "config.json").read_text())
    diagnosed = diagnose_run(cells["mnist-l1-k1"], n=config["eval_n"])
    out = tmp_path / "results.json"
    assert full_protocol.main([*map(str, cells.values()), *references, "--out", str(out)]) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())["cells"]}
    weights = rows["mnist-l1-k1"]["weights"]
    assert weights["recorded"] == 0.0 and weights["khat_median"] == diagnosed["khat_median"]
    assert rows["mnist-l1-vae-k5"]["weights"] is None
    text = out.with_suffix(".md").read_text()
    assert f"| {100 * weights['khat_unreliable']:.1f}% (above {weights['khat_threshold']:.2f}) |" in text
    assert "| replayed exactly |" in text
    assert f"| mnist-l1-vae-k5 | not diagnosed: `iwae diagnose FOLDER --n {config['eval_n']}` |" in text
    path = cells["mnist-l1-k1"] / f"diagnostics-test-k{config['eval_k']}-n{config['eval_n']}.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "recorded": None}))  # compared with nothing: said so
    assert full_protocol.main([*map(str, cells.values()), *references, "--out", str(out)]) == 0
    assert "| not compared |" in out.with_suffix(".md").read_text()
    path.write_text(json.dumps({**record, "passes": record["passes"] / 2}))  # a diagnosis of an earlier model
    assert full_protocol.main([*map(str, cells.values()), *references, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["cells"][0]["weights"] is None
