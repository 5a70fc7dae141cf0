"""The sharded evaluation (:mod:`iwae.analysis.distributed`): the same numbers with 1 and 2 gloo processes on the
loopback, each block of examples drawing its own noise; process 0 alone writes the file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from iwae.analysis.distributed import BLOCK, active_units_blocks, evaluate_sharded, log_likelihood_blocks, shard
from iwae.evaluate import active_units
from iwae.runs.config import TrainConfig

pytestmark = pytest.mark.slow

N = BLOCK + 44  # two blocks, the second partial


def test_without_torch_distributed_one_process_takes_every_block():
    assert list(shard(10 * BLOCK + 1)) == list(range(11))


def test_block_moments_equal_the_one_pass_active_units(tiny):
    model = tiny(x_dim=6, latent_dims=(3,)).float()
    x = torch.bernoulli(torch.full((N, 6), 0.4), generator=torch.Generator().manual_seed(0))
    for a, b in zip(active_units_blocks(model, x, TrainConfig(seed=1)), active_units(model, x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)  # layer 1: the means need no noise


def test_blocks_are_drawn_independently_of_the_rows_around_them(tiny):
    model = tiny(x_dim=6, latent_dims=(3,)).float()
    x = torch.bernoulli(torch.full((N, 6), 0.4), generator=torch.Generator().manual_seed(0))
    whole = log_likelihood_blocks(model, x, 20, TrainConfig(seed=5), "test")
    first = log_likelihood_blocks(model, x[:BLOCK], 20, TrainConfig(seed=5), "test")
    assert torch.equal(whole[:BLOCK], first) and whole.dtype == torch.float64
    # each block its own stream of iwae.util.streams, of scheme 2 here, of the seed formula for runs made before it
    again = log_likelihood_blocks(model, x, 20, TrainConfig(seed=5, streams=1), "test")
    assert not torch.equal(whole, again)


def test_two_gloo_processes_give_the_numbers_of_one(tiny_run, data_dir):
    one = evaluate_sharded(tiny_run, k=30, n=N, nproc=1, data_dir=data_dir)
    (tiny_run / f"eval-test-k30-n{N}-blocks.json").unlink()
    two = evaluate_sharded(tiny_run, k=30, n=N, nproc=2, data_dir=data_dir)
    written = json.loads((tiny_run / f"eval-test-k30-n{N}-blocks.json").read_text())
    assert (one["world_size"], two["world_size"], written["world_size"]) == (1, 2, 2)
    assert two["nll"] == pytest.approx(one["nll"], rel=1e-12) and two["nll_sem"] == pytest.approx(one["nll_sem"])
    assert two["active_units"] == one["active_units"] and two["n"] == one["n"] == N


def test_torchrun_runs_iwae_evaluate_sharded(tiny_run, data_dir):
    # the cluster guide's form: torchrun's own parser takes `--n` for an abbreviation of its options, so `--images`
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "iwae", "evaluate", str(tiny_run), "--k", "30", "--images", "40", "--data-dir", data_dir]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("test NLL") == 1  # process 0 alone reports
    (written,) = [json.loads(p.read_text()) for p in tiny_run.glob("eval-test-k30-n40-blocks.json")]
    assert written["world_size"] == 2 and f"NLL {written['nll']:.2f} +- " in out.stdout
    assert f"(on {written['active_units_n']} train images)" in out.stdout


def test_a_stopped_sharded_evaluation_continues_with_its_saved_blocks(tiny_run, data_dir, monkeypatch, tmp_path):
    """Stopped after its first block, the evaluation takes that block from its progress file and scores only the
    second: the numbers of one that never stopped; the progress files are gone once the result is written."""
    import shutil

    import iwae.analysis.distributed as distributed
    from iwae.runs import eval_progress

    monkeypatch.setattr(eval_progress, "SAVE_EVERY", 0.0)
    other = shutil.copytree(tiny_run, tmp_path / "never-stopped")
    expected = evaluate_sharded(other, k=30, n=N, data_dir=data_dir)
    scored, log_likelihood = [], distributed.log_likelihood

    def counting(model, x, *args, stop_after=None, **kwargs):
        if len(scored) == stop_after:
            raise KeyboardInterrupt
        scored.append(x.shape[0])
        return log_likelihood(model, x, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(distributed, "log_likelihood", lambda *a, **kw: counting(*a, stop_after=1, **kw))
        evaluate_sharded(tiny_run, k=30, n=N, data_dir=data_dir)
    kept = [p.name for p in tiny_run.glob("*.progress.safetensors")]
    assert kept == [f"eval-test-k30-n{N}-blocks-part0.progress.safetensors"]
    scored.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(distributed, "log_likelihood", counting)
        result = evaluate_sharded(tiny_run, k=30, n=N, data_dir=data_dir)
    assert scored == [N - BLOCK]  # the second block only
    assert (result["nll"], result["nll_sem"]) == (expected["nll"], expected["nll_sem"])
    assert list(tiny_run.glob("*.progress.safetensors")) == []


def test_a_process_keeps_the_saved_blocks_of_other_shards_in_its_file(tiny, tmp_path, monkeypatch):
    """Started again with more processes, a process rewrites its file with every block it read, not only its own
    shard's: a block saved by an earlier start is never lost to a process that has not read it yet."""
    import iwae.analysis.distributed as distributed
    from iwae.runs.eval_progress import BlockProgress

    model = tiny(x_dim=6, latent_dims=(3,)).float()
    x = torch.bernoulli(torch.full((N, 6), 0.4), generator=torch.Generator().manual_seed(0))
    whole = log_likelihood_blocks(model, x, 20, TrainConfig(seed=5), "test")
    identity = {"what": "nll", "device": "cpu"}
    earlier = BlockProgress(tmp_path, "p", identity, rank=0)  # one process scored both blocks, then stopped
    earlier.save({0: whole[:BLOCK], 1: whole[BLOCK:]}, force=True)
    monkeypatch.setattr(distributed, "shard", lambda n: range(1, 2))  # now process 1 of 2: block 1
    again = log_likelihood_blocks(model, x, 20, TrainConfig(seed=5), "test", BlockProgress(tmp_path, "p", identity, 1))
    assert torch.equal(again[BLOCK:], whole[BLOCK:]) and again[:BLOCK].eq(0).all()  # (the other block: process 0's)
    earlier.files()[0].unlink()  # part0
    assert sorted(BlockProgress(tmp_path, "p", identity).load()) == [0, 1]  # both in part1
