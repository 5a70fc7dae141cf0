"""A stopped evaluation goes on where it stopped, with the numbers of one that never stopped."""

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from conftest import binary_batch, read_json, tiny_model

import iwae
from iwae.evaluate import iter_log_likelihood, log_likelihood
from iwae.runs import eval_progress
from iwae.runs.eval_progress import progress_path, resumable_log_likelihood

# 70 images in blocks of 32, 32 and 6 (the default chunk_size with k >= 64 puts 32 images in a block)
N, K = 70, 100


def _images(n: int = N) -> torch.Tensor:
    return binary_batch(n, 3, seed=1)


def test_blocks_give_log_likelihood_exactly_and_continue_from_a_saved_generator():
    model, x = tiny_model(), _images()
    whole = log_likelihood(model, x, K, generator=torch.Generator().manual_seed(5),
                           return_stderr=True)  # fmt: skip
    gen = torch.Generator().manual_seed(5)
    blocks, states = [], []
    for first, estimate in iter_log_likelihood(model, x, K, generator=gen):
        blocks.append((first, estimate))
        states.append(gen.get_state())
    assert [(first, e.ll.shape[0], e.ll.dtype) for first, e in blocks] == [
        (0, 32, torch.float64), (32, 32, torch.float64), (64, 6, torch.float64)
    ]  # fmt: skip
    assert torch.equal(torch.cat([e.ll for _, e in blocks]).to(x.dtype), whole.ll)
    assert torch.equal(torch.cat([e.stderr for _, e in blocks]).to(x.dtype), whole.stderr)
    # from the row after the first block, with the generator as it was then: the remaining blocks again
    gen.set_state(states[0])
    rest = list(iter_log_likelihood(model, x, K, generator=gen, start=32))
    assert [first for first, _ in rest] == [32, 64]
    assert all(torch.equal(a.ll, b.ll) for (_, a), (_, b) in zip(rest, blocks[1:]))
    assert list(iter_log_likelihood(model, x, K, generator=gen, start=N)) == []
    with pytest.raises(ValueError, match="start must be 0 or the row after a block \\(a multiple of 32\\), got 5"):
        iter_log_likelihood(model, x, K, generator=gen, start=5)


def test_blocks_stderr_is_nan_at_k_1():
    ((_, estimate),) = iter_log_likelihood(tiny_model(), _images(10), 1, generator=torch.Generator().manual_seed(0))
    assert estimate.stderr.isnan().all() and estimate.ll.isfinite().all()


def test_blocks_hold_back_a_block_with_a_non_finite_log_weight_where_the_check_is_deferred(monkeypatch):
    """On a GPU the finite check is folded over the calls (no sync per call); it is read before each block is
    yielded, so a saved block never holds an estimate from a non-finite log-weight."""
    import iwae.evaluate as evaluate

    def deferred(lw, k, batch, finite):  # the GPU path of _check_log_weights, on the CPU
        all_finite = torch.isfinite(lw).all()
        return all_finite if finite is None else finite & all_finite

    class Overflowing:  # finite log-weights in the first block (two calls), +inf in the second
        calls = 0

        def log_weights(self, x, k):
            self.calls += 1
            lw = torch.zeros(k, x.shape[0])
            lw[0, 0] = torch.inf if self.calls > 2 else 0.0
            return lw

    monkeypatch.setattr(evaluate, "_check_log_weights", deferred)
    blocks = iter_log_likelihood(Overflowing(), _images(), K)
    assert next(blocks)[0] == 0
    with pytest.raises(FloatingPointError, match="non-finite"):
        next(blocks)


def test_blocks_of_no_images_and_of_integer_images():
    assert list(iter_log_likelihood(tiny_model(), _images()[:0], K)) == []
    with pytest.raises(TypeError, match="cast the images to the model's floating dtype"):
        resumable_log_likelihood(tiny_model(), _images().long(), K, torch.Generator(), "p", {})


class _Stop(Exception):
    pass


@contextmanager
def _stopping_after(blocks: int) -> Iterator[list[int]]:
    """Within the block, evaluations stop (raise _Stop) once ``blocks`` blocks were scored; yields the first rows
    of the blocks scored."""
    scored: list[int] = []

    def wrapped(*args, **kwargs):
        for first, estimate in iter_log_likelihood(*args, **kwargs):
            if len(scored) == blocks:
                raise _Stop
            scored.append(first)
            yield first, estimate

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(eval_progress, "iter_log_likelihood", wrapped)
        yield scored


def _measure(tmp_path, identity: dict) -> torch.Tensor:
    """resumable_log_likelihood of the 70 images, K samples, the seed-5 stream, kept in tmp_path/p.safetensors."""
    gen = torch.Generator().manual_seed(5)
    return resumable_log_likelihood(tiny_model(), _images(), K, gen, tmp_path / "p.safetensors", identity)


def _whole() -> torch.Tensor:
    return log_likelihood(tiny_model(), _images(), K, generator=torch.Generator().manual_seed(5))


@pytest.fixture
def saves_every_block(monkeypatch):
    monkeypatch.setattr(eval_progress, "SAVE_EVERY", 0.0)


def test_a_stopped_measurement_continues_exactly(tmp_path, saves_every_block, capsys):
    with _stopping_after(1), pytest.raises(_Stop):
        _measure(tmp_path, {"what": "nll"})
    assert (tmp_path / "p.safetensors").is_file()
    ll = _measure(tmp_path, {"what": "nll"})
    assert "p.safetensors: continuing from 32 of 70 images scored" in capsys.readouterr().err
    assert torch.equal(ll, _whole())
    # complete, the file holds every estimate: a call again scores nothing and gives the same numbers
    with _stopping_after(0) as scored:
        again = _measure(tmp_path, {"what": "nll"})
    assert scored == [] and torch.equal(again, ll)


def test_the_seconds_of_a_stopped_measurement_are_kept_and_added_to_on_resume(tmp_path, saves_every_block,
                                                                              monkeypatch):  # fmt: skip
    """The first process is slow (100 s a clock reading), the second fast (1 s): the file ends with the seconds of
    both, and not the idle time between them."""
    now, step = [0.0], [100.0]

    def clock() -> float:
        now[0] += step[0]
        return now[0]

    monkeypatch.setattr(eval_progress, "time", SimpleNamespace(monotonic=clock))
    path = tmp_path / "p.safetensors"
    assert eval_progress.saved_seconds(path) == 0.0  # no file yet
    with _stopping_after(1), pytest.raises(_Stop):
        _measure(tmp_path, {"what": "nll"})
    first = eval_progress.saved_seconds(path)
    assert first >= 100.0
    now[0], step[0] = now[0] + 10**6, 1.0  # a day later, another process
    assert torch.equal(_measure(tmp_path, {"what": "nll"}), _whole())
    assert first < eval_progress.saved_seconds(path) < first + 100.0


def test_progress_that_ends_inside_a_block_is_not_used(tmp_path, capsys):
    layout = {"rows": 32, **eval_progress._computation(torch.device("cpu"))}
    key = json.dumps({"what": "nll", **layout}, sort_keys=True)
    gen = torch.Generator().manual_seed(99)
    eval_progress._write(
        tmp_path / "p.safetensors", key, {"ll": torch.zeros(5, dtype=torch.float64), "generator": gen.get_state()}
    )
    ll = _measure(tmp_path, {"what": "nll"})
    assert "p.safetensors is not used: its estimates end inside a block" in capsys.readouterr().err
    assert torch.equal(ll, _whole())


@pytest.mark.parametrize("damage", ["identity", "truncated", "flipped", "foreign"])
def test_progress_of_another_measurement_or_damaged_is_not_used(tmp_path, saves_every_block, capsys, damage):
    with _stopping_after(2), pytest.raises(_Stop):
        _measure(tmp_path, {"what": "nll", "threads": 2})
    path = tmp_path / "p.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flipped":
        data[-20] ^= 1  # a bit of the saved estimates or generator state
        path.write_bytes(bytes(data))
    elif damage == "foreign":
        iwae.runs.checkpoint.save_weights(path, tiny_model())
    ll = _measure(tmp_path, {"what": "nll", "threads": 1 if damage == "identity" else 2})
    err = capsys.readouterr().err
    expected = {"identity": "another measurement's (threads 2, now 1)", "truncated": "unreadable or truncated",
                "flipped": "damaged", "foreign": "not an evaluation's progress"}[damage]  # fmt: skip
    assert "p.safetensors is not used: it is " + expected in err and "measuring from the start" in err
    assert torch.equal(ll, _whole())


@pytest.mark.slow  # two final evaluations of the tiny run
def test_a_stopped_final_evaluation_continues_with_the_same_numbers(tiny_run, saves_every_block, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    """finish_run stopped in the middle of its second measurement, then run again: metrics.json and test_ll.json
    as an evaluation that never stopped writes them, what was scored before the stop not scored again; its
    eval_seconds count the stopped process's time (a slow clock there, 1000 s a reading) as well."""
    from iwae.experiments.status import run_states
    from iwae.runs import rundir
    from iwae.runs.evaluate_run import finish_run

    rundir.update_config(tiny_run, {"eval_k": 64, "eval_n": 100})  # 4 blocks a measurement: 32, 32, 32, 4 images
    rundir.clear_results(tiny_run)
    other = shutil.copytree(tiny_run, tmp_path / "never-stopped")
    expected = finish_run(other, progress=False)
    now, step = [0.0], [1000.0]

    def clock() -> float:
        now[0] += step[0]
        return now[0]

    monkeypatch.setattr(eval_progress, "time", SimpleNamespace(monotonic=clock))
    with _stopping_after(6), pytest.raises(_Stop):
        finish_run(tiny_run, progress=False)
    step[0] = 1.0
    assert (tiny_run / "eval-test-k64-n100-nll.progress.safetensors").is_file()
    assert not (tiny_run / "metrics.json").exists()
    stray = tiny_run / "eval-x.progress.safetensors"  # not one of ours: ignored
    stray.write_bytes(b"")
    (state,) = run_states(tiny_run)  # `iwae status RUN` says how far the evaluation got
    assert state.state == "stopped" and "final evaluation so far: test nll 100 of 100 images, " in state.detail
    stray.unlink()
    before = eval_progress.saved_seconds(tiny_run / "eval-test-k64-n100-nll.progress.safetensors")
    with _stopping_after(10**6) as scored:
        metrics = finish_run(tiny_run, progress=False)
    assert len(scored) == (12 if expected["units_pruned"] else 8) - 6  # only the blocks not scored before the stop
    same = ("test_nll", "test_nll_sem", "train_nll", "train_nll_sem", "test_nll_pruned", "active_units")
    assert {key: metrics[key] for key in same} == {key: expected[key] for key in same}
    assert read_json(tiny_run / "test_ll.json") == read_json(other / "test_ll.json")
    assert list(tiny_run.glob("*.progress.safetensors")) == []  # gone once metrics.json is written
    assert 0 < expected["eval_seconds"] and 1000 <= before < metrics["eval_seconds"]


@pytest.mark.slow  # seconds: the default run stays under 3 minutes
def test_evaluate_keeps_its_progress_and_clear_results_removes_it(tiny_run, saves_every_block):
    from iwae.runs import rundir
    from iwae.runs.evaluate_run import evaluate_run

    with _stopping_after(1), pytest.raises(_Stop):
        evaluate_run(tiny_run, k=64, n=100, split="train", progress=False)
    path = progress_path(tiny_run, "train", 64, 100, "nll")
    assert path.is_file()
    expected = evaluate_run(tiny_run, k=64, n=100, split="train", progress=False)
    assert not path.exists()  # the measurement is written: its progress is gone
    with _stopping_after(1), pytest.raises(_Stop):
        evaluate_run(tiny_run, k=64, n=100, split="train", progress=False)
    rundir.clear_results(tiny_run)
    assert not path.exists()
    again = evaluate_run(tiny_run, k=64, n=100, split="train", progress=False)
    assert {**again, "seconds": None} == {**expected, "seconds": None}  # the same numbers (in another time)


def test_block_progress_is_read_by_any_process_and_refused_for_another_measurement(tmp_path, capsys):
    from iwae.runs.eval_progress import BlockProgress

    identity = {"what": "nll", "device": "cpu"}
    blocks = {0: torch.arange(4.0), 3: torch.ones(2)}
    BlockProgress(tmp_path, "eval-test-k5-n9-blocks", identity, rank=1).save(blocks, force=True)
    BlockProgress(tmp_path, "eval-test-k5-n9-blocks", identity, rank=0).save({1: torch.zeros(4)}, force=True)
    loaded = BlockProgress(tmp_path, "eval-test-k5-n9-blocks", identity).load()  # by one process: every file
    assert sorted(loaded) == [0, 1, 3] and torch.equal(loaded[0], blocks[0].double())
    assert BlockProgress(tmp_path, "eval-test-k5-n9-blocks", {**identity, "what": "other"}).load() == {}
    assert capsys.readouterr().err.count("is another measurement's, or damaged; its blocks are scored again") == 2
    with pytest.raises(FloatingPointError, match="non-finite"):
        BlockProgress(tmp_path, "x", identity).save({0: torch.tensor([float("nan")])}, force=True)
    BlockProgress(tmp_path, "eval-test-k5-n9-blocks", identity).remove()
    assert list(tmp_path.iterdir()) == []
