"""The benchmark suite runs end to end on a tiny configuration and writes well-formed results (no timing checks)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import iwae

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, where benchmarks/ lives

from benchmarks import bench, measure, peers, report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "layers": (1,),
    "ks": (2,),
    "kinds": ("iwae",),
    "steps": {2: 1},
    "repeats": 1,
    "ll_layers": (1,),
    "ll_k": 8,
    "ll_images": 2,
    "memory": ((1, 8, 4),),
}


@pytest.mark.slow
def test_tiny_benchmark_writes_json_and_markdown(tmp_path):
    result = bench.run(TINY, torch.device("cpu"), with_pyro=False, log=lambda _: None)
    result["cuda"] = None
    out = tmp_path / "cpu.json"
    report.write(result, report.markdown(result), out)
    loaded = json.loads(out.read_text())
    assert set(loaded) >= {"meta", "ceiling", "train", "log_likelihood", "memory", "targets", "cuda"}
    assert loaded["meta"]["torch"] == torch.__version__ and loaded["meta"]["cores"] >= 1
    assert loaded["ceiling"]["gflops"] > 0
    impls = {r["impl"] for r in loaded["train"]}
    assert impls == {"project", "project sample-one", "baseline"}
    for row in loaded["train"]:
        assert row["ms_per_step"] > 0 and row["examples_per_s"] > 0 and row["k"] == 2
    (floor,) = loaded["floor"]
    assert (floor["layers"], floor["k"]) == (1, 2) and floor["gemm_ms"] > 0 and floor["adam_ms"] > 0
    assert floor["floor_ms"] == pytest.approx(floor["gemm_ms"] + floor["adam_ms"])
    assert loaded["log_likelihood"][0]["samples_per_s"] > 0
    assert loaded["memory"][0]["process_peak_mib"] > 0
    assert [t["target"] for t in loaded["targets"]] == [t[0] for t in report.TARGETS]
    text = out.with_suffix(".md").read_text()
    assert "## Training step, batch 20" in text and "| target |" in text


def test_baseline_bound_matches_the_project_on_shared_weights():
    """The baseline computes the same L_k as the project given the same networks and noise source."""
    torch.manual_seed(0)
    base = peers.Baseline(1).double()
    model = iwae.IWAE.paper(1).double()
    with torch.no_grad():
        for src, dst in zip(base.q[0].parameters(), model.encoder[0].parameters()):
            dst.copy_(src)
        for src, dst in zip(base.px.parameters(), model.decoder[0].parameters()):
            dst.copy_(src)
    x = measure.synthetic_binary(3).double()
    torch.manual_seed(1)
    lw_base = base.log_weights(x, 4)
    torch.manual_seed(1)
    lw_model = model.log_weights(x.repeat(4, 1), 1).view(4, 3)  # the baseline draws noise for k*batch rows
    torch.testing.assert_close(lw_base, lw_model)


def test_step_flops_counts_encoder_once_per_example():
    model = iwae.IWAE.paper(1)
    enc = 784 * 200 + 200 * 200 + 2 * 200 * 50
    dec = 50 * 200 + 200 * 200 + 200 * 784
    assert measure.step_flops(model, 50, 20) == 3 * 2 * 20 * (enc + 50 * dec)
    assert measure.log_likelihood_flops(model, 5000, 10) == 2 * 10 * (enc + 5000 * dec)


@pytest.mark.parametrize("layers", [1, 2])
def test_floor_gemms_are_the_minimum_step_flops_less_the_unneeded_input_gradient(layers):
    """The floor's GEMMs do step_flops' work, less the gradient with respect to the data, which no step computes."""
    model = iwae.IWAE.paper(layers)
    gemms = measure.step_gemms(model, 50, 20)
    flops = sum(2.0 * rows * m.in_features * m.out_features for _, m, rows in gemms)
    assert flops == measure.step_flops(model, 50, 20) - 2.0 * 20 * 784 * 200
    assert len(gemms) == 3 * sum(isinstance(m, torch.nn.Linear) for m in model.modules()) - 1


@pytest.mark.slow  # a fresh process per measurement
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the RSS peak")
def test_log_likelihood_memory_does_not_grow_with_the_number_of_images():
    """6,000 images in ~190 sub-batches: results kept per sub-batch once pinned heap and grew RSS by ~3 MiB each."""
    mem = measure.log_likelihood_memory(layers=1, k=50, n_images=6000, threads=1)
    assert mem["added_peak_mib"] < 100, mem


def test_targets_take_the_faster_project_step_and_say_which():
    def row(layers, k, impl, ms):
        return {"device": "cpu", "layers": layers, "k": k, "kind": "iwae", "impl": impl, "ms_per_step": ms,
                "gflops": 50.0 / ms}  # fmt: skip

    result = {
        "ceiling": {"gflops": 100.0},
        "train": [
            row(1, 50, "project", 16.0), row(1, 50, "project compiled", 13.0), row(1, 50, "baseline", 30.0),
            row(1, 50, "project sample-one", 8.0), row(1, 1, "project", 1.0), row(1, 1, "baseline", 2.0),
            row(2, 1, "project", 3.0), row(2, 1, "project compiled", 1.5), row(2, 1, "baseline", 2.5),
        ],
        "log_likelihood": [],
        "memory": [],
    }  # fmt: skip
    got = {t["target"]: t for t in report.targets(result)}
    vs_base = got["k=50 1L IWAE step vs baseline"]
    assert vs_base["value"] == pytest.approx(13.0 / 30.0) and vs_base["met"]
    assert vs_base["measure"].startswith("project compiled /")
    k1 = got["k=1 step vs baseline (worst row)"]  # worst over rows of the best project step per row
    assert k1["value"] == pytest.approx(0.6) and k1["measure"].startswith("project compiled /") and not k1["met"]
    assert got["sample-one speed-up over IWAE at k=50 (1L)"]["value"] == pytest.approx(2.0)  # eager reparam
    assert got["k=50 1L IWAE step vs Pyro"]["value"] is None and got["k=50 1L IWAE step vs Pyro"]["met"] is None


@pytest.mark.slow  # a process each
@pytest.mark.parametrize("args", [["benchmarks.peer_nll"], ["benchmarks.exact_ll", "some-run"]])
def test_an_out_folder_that_does_not_exist_is_refused_before_any_work(args, tmp_path):
    out = tmp_path / "missing" / "x.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", *args, "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)  # fmt: skip
    assert done.returncode == 2 and f"the folder {out.parent} does not exist" in done.stderr


def test_same_log_finds_where_two_logs_part_and_ignores_timings(tmp_path, capsys):
    from benchmarks.same_log import main as same_log

    log = [{"stage": 0, "pass": float(i), "train_bound": -100.0 - i, "seconds": 1.0} for i in range(1, 6)]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps(r) + "\n" for r in log))
    slower = [{**r, "seconds": 9.0} for r in log[:4]]  # the same passes, shorter and slower
    b.write_text("".join(json.dumps(r) + "\n" for r in slower))
    assert same_log([str(a), str(b)]) == 0
    assert "identical in the first 4 records, to pass 4 (all but their timings" in capsys.readouterr().out
    slower[2]["train_bound"] += 2**-20  # (exact in float64)
    b.write_text("".join(json.dumps(r) + "\n" for r in slower))
    assert same_log([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "identical in the first 2 records, to pass 2; record 3 differs in train_bound:" in out
    assert "largest differences over the 4 records both hold: train_bound 9.54e-07 (pass 3)" in out
    slower[3]["train_bound"] -= 0.5  # drifted further later on
    b.write_text("".join(json.dumps(r) + "\n" for r in slower))
    assert same_log([str(a), str(b)]) == 1
    assert "largest differences over the 4 records both hold: train_bound 0.5 (pass 4)" in capsys.readouterr().out
    b.write_text("")
    assert same_log([str(a), str(b)]) == 1 and "nothing to compare" in capsys.readouterr().out


def test_progress_table_gives_passes_hours_and_the_curve_at_each_stage_end(tiny_run, tmp_path, capsys):
    from benchmarks.progress_table import main as progress_table
    from iwae.runs import rundir

    log = rundir.read_log(tiny_run)
    curve = [r["test_nll_curve"] for r in log if "test_nll_curve" in r]
    assert len(curve) == 2  # TINY: two stages, a curve point at each end
    assert progress_table([str(tiny_run)]) == 0
    out = capsys.readouterr().out
    assert "| run | passes | training hours | test NLL (L_20, 30 images) after passes " in out
    assert f"| tiny-run | 0.08 of 0.08 | 0.0 | {curve[0]:.2f}, {curve[1]:.2f} |" in out
    assert progress_table([str(tiny_run), "--figure", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_progress_table_finds_the_papers_number_for_a_table_1_cell(tiny_run):
    from benchmarks.progress_table import row
    from iwae.runs import rundir

    assert row(tiny_run)["paper_test_nll"] is None  # k = 3: no cell of Table 1
    config = rundir.read_config(tiny_run)
    (tiny_run / rundir.CONFIG_NAME).write_text(config.replace(k=5).to_json())
    assert row(tiny_run)["paper_test_nll"] == 85.54  # 1 layer, IWAE, k = 5
    (tiny_run / rundir.CONFIG_NAME).write_text(config.replace(k=5, bound="vae").to_json())
    assert row(tiny_run)["paper_test_nll"] == 86.47


def test_ais_exact_scores_l5000_and_ais_against_the_exact_log_likelihood(data_dir, tmp_path):
    from benchmarks.ais_exact import main as ais_exact

    out = tmp_path / "exact.json"
    args = ["--n", "3", "--steps", "2", "--prior-steps", "3", "--chains", "2", "--points", "51", "--out", str(out)]
    assert ais_exact(args) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    estimates = ["L_5000", "AIS, 2 steps x 2 chains", "AIS from the prior, 3 steps x 2 chains"]
    assert list(rows) == ["exact", *estimates] and result["n"] == 3
    for name in estimates:  # the gap is the exact mean less the estimate's
        assert rows[name]["gap"] == pytest.approx(rows["exact"]["mean"] - rows[name]["mean"])
    assert "| AIS from the prior, 3 steps x 2 chains |" in out.with_suffix(".md").read_text()
    assert all(len(r["ll"]) == 3 for r in rows.values())  # per image, for any further pairing
    args[5] = "2"  # from the prior at 2 steps as well: the two starts' chains pooled, at their summed cost
    assert ais_exact(args) == 0
    result = json.loads(out.read_text())
    rows, name = result["rows"], "AIS from q and the prior, 2 steps x 2 + 2 chains"
    pooled = [
        math.log((math.exp(a) + math.exp(b)) / 2)
        for a, b in zip(rows["AIS, 2 steps x 2 chains"]["ll"], rows["AIS from the prior, 2 steps x 2 chains"]["ll"])
    ]
    assert rows[name]["ll"] == pytest.approx(pooled) and result["crossings"][0]["steps"] == 2
    assert "At 2 steps: of the" in out.with_suffix(".md").read_text()
    assert ais_exact([*args[:4], "--prior-steps", "", *args[6:]]) == 0  # none from the prior
    assert list(json.loads(out.read_text())["rows"]) == ["exact", *estimates[:2]]


def test_khat_exact_groups_the_images_by_khat_with_their_gaps_to_the_exact_log_likelihood(data_dir, tmp_path):
    from benchmarks.khat_exact import main as khat_exact

    out = tmp_path / "khat.json"
    assert khat_exact(["--n", "6", "--ks", "20,40", "--points", "51", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["k"] for r in result["runs"]] == [20, 40] and len(result["log_px"]) == 6
    for run in result["runs"]:
        assert sum(g["images"] for g in run["groups"]) == 6 and len(run["khat"]) == 6
        gaps = [lp - ll for lp, ll in zip(result["log_px"], run["ll"])]
        assert sum(g > 1 for g in gaps) == run["missed"] == sum(g["missed"] for g in run["groups"])
        flagged = [g for g, k in zip(gaps, run["khat"]) if k > run["threshold"]]
        last = run["groups"][-1]
        assert last["images"] == len(flagged) == run["flagged"]
        assert last["gap"] is None or last["gap"] == pytest.approx(sum(flagged) / len(flagged))
    text = out.with_suffix(".md").read_text()
    assert "| 40 | k-hat <= 0.38 |" in text and "0.38 < k-hat <= 0.38" not in text  # (k = 40's threshold: 0.38)
    assert [len(r["groups"]) for r in result["runs"]] == [2, 2]  # no middle group below k = 100


def test_ais_gap_writes_l5000_and_each_annealing_beside_it(data_dir, tmp_path, capsys):
    from benchmarks.ais_gap import main as ais_gap

    args = ["--n", "3", "--steps", "2,3", "--prior-steps", "4", "--chains", "2", "--out", str(tmp_path / "gap")]
    assert ais_gap(args) == 0
    result = json.loads((tmp_path / "gap.json").read_text())
    kinds = ("AIS", "AIS from the prior"), ("BDMC", "BDMC from the prior")
    annealed = [
        f"{kind}, {steps} steps x 2 chains" for q, prior in kinds for kind, steps in ((q, 2), (q, 3), (prior, 4))
    ]
    assert [r["estimate"] for r in result["rows"]] == ["L_5000", *annealed]
    assert result["n"] == 3 and all(math.isfinite(r["mean"]) for r in result["rows"][:4])
    for r in result["rows"][4:]:
        assert r["bdmc_gap"]["mean"] == pytest.approx(r["upper"] - r["lower"])
    assert "| AIS, 3 steps x 2 chains |" in (tmp_path / "gap.md").read_text()
    assert "| BDMC, 3 steps x 2 chains |" in (tmp_path / "gap.md").read_text()
    assert "| BDMC from the prior, 4 steps x 2 chains |" in (tmp_path / "gap.md").read_text()
