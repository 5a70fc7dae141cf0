"""log_likelihood (chunked L_k, the log-weights protocol, standard error) and the activity statistic A_u."""

from __future__ import annotations

import pytest
import torch
from conftest import all_binary, binary_batch, read_json, tiny_model

import iwae
from iwae import bounds


class BankModel:
    """A log-weights-protocol model that hands out a fixed bank of log-weights in order (the same draws)."""

    def __init__(self, bank: torch.Tensor) -> None:
        self.bank, self.cursor = bank, 0

    def log_weights(self, x: torch.Tensor, k: int) -> torch.Tensor:
        out = self.bank[self.cursor : self.cursor + k]
        self.cursor += k
        return out


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_chunked_log_likelihood_equals_unchunked_on_the_same_draws(chunk):
    bank = torch.randn(5000, 3, dtype=torch.float64) * 20 - 90
    x = torch.zeros(3, 2)
    ll = iwae.log_likelihood(BankModel(bank), x, k=5000, chunk_size=max(chunk, 3))
    torch.testing.assert_close(ll, bounds.iwae(bank).float())


def test_log_likelihood_splits_large_batches_and_bounds_rows():
    """Rows per call never exceed chunk_size, whatever k and batch are."""
    model = tiny_model(x_dim=3, latent_dims=(2,))
    calls = []
    original = model.log_weights

    def spy(x, k):
        calls.append(x.shape[0] * k)
        return original(x, k)

    model.log_weights = spy
    x = torch.bernoulli(torch.full((50, 3), 0.5, dtype=torch.float64))
    ll = iwae.log_likelihood(model, x, k=300, chunk_size=64)
    assert ll.shape == (50,) and max(calls) <= 64 and sum(calls) == 50 * 300


def test_standard_error_matches_spread_of_repeated_estimates():
    model = tiny_model(x_dim=3, latent_dims=(1,), seed=1, scale=1.5)
    x = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    runs = [iwae.log_likelihood(model, x, k=2000, generator=gen, return_stderr=True) for _ in range(200)]
    spread = torch.stack([r.ll for r in runs]).std(0)
    reported = torch.stack([r.stderr for r in runs]).mean(0)
    assert torch.allclose(reported, spread, rtol=0.3)


def test_log_likelihood_refuses_bad_models_and_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"must return shape \(1, 2\), got \(1, 3\)"):
        iwae.log_likelihood(BankModel(torch.zeros(8, 3)), torch.zeros(3, 3), k=4, chunk_size=2)
    with pytest.raises(FloatingPointError, match="non-finite"):
        iwae.log_likelihood(BankModel(torch.full((4, 2), float("nan"))), x, k=4)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        iwae.log_likelihood(BankModel(torch.zeros(4, 2)), x, k=0)


def _model_with_known_active_set() -> iwae.IWAE:
    """q(h1|x) reads only x_0..x_2 into units 0..2 (unit 3, 4 constant); q(h2|h1) reads only h1_0 into unit 0."""
    torch.manual_seed(0)
    model = iwae.IWAE(6, [5, 3], [[], []], [[4], [4]])
    with torch.no_grad():
        for layer in model.encoder:
            layer.mean.weight.zero_()
            layer.mean.bias.fill_(0.3)
        model.encoder[0].mean.weight[0, 0] = 1.0
        model.encoder[0].mean.weight[1, 1] = 2.0
        model.encoder[0].mean.weight[2, 2] = 0.5
        model.encoder[0].mean.weight[3, 3] = 0.05  # Var = 0.05^2 * 0.25 < 0.01: inactive
        model.encoder[0].log_std.bias.fill_(-3.0)
        model.encoder[1].mean.weight[0, 0] = 1.0
    return model


def test_active_units_on_a_model_with_known_active_set():
    model = _model_with_known_active_set()
    x = torch.bernoulli(torch.full((4000, 6), 0.5), generator=torch.Generator().manual_seed(1))
    A = iwae.active_units(model, x)
    # Layer 1: A_u = w^2 Var(x_u) = w^2 / 4 for the units that read a pixel, 0 for the others.
    torch.testing.assert_close(A[0], torch.tensor([0.25, 1.0, 0.0625, 0.000625, 0.0]), atol=0.01, rtol=0.05)
    assert iwae.count_active(A) == [3, 1]
    assert iwae.count_active(A, threshold=0.1) == [2, 1]
    with pytest.raises(TypeError, match="for one layer pass \\[A_u\\]"):
        iwae.count_active(A[0])
    # Layer 2 sees a sample of h1: Var(h1_0) = Var(x_0) + Var(noise) ~= 0.25
    assert A[1][0].item() == pytest.approx(0.25, rel=0.1)
    assert (A[1][1:] == 0).all()


def test_prune_inactive_keeps_active_units_and_holds_the_others_at_their_mean():
    model = _model_with_known_active_set()
    x = torch.bernoulli(torch.full((500, 6), 0.5), generator=torch.Generator().manual_seed(2))
    pruned = iwae.prune_inactive(model, x)
    assert [int(m.sum()) for m in (pruned.unit_mask_0, pruned.unit_mask_1)] == [3, 1]
    assert pruned.unit_fill_0[4].item() == pytest.approx(0.3)
    assert model.unit_mask_0.all()  # the original is untouched


def _model_with_inactive_units_at_the_prior() -> iwae.IWAE:
    """q(h|x) encodes x_0, x_1 in units 0, 1; units 2, 3 are the prior N(0, 1) whatever x (unit 2 nearly:
    A_2 = 0.05^2 / 4), as a trained model's inactive units are. p(x|h) reads all four with its initial weights."""
    torch.manual_seed(0)
    model = iwae.IWAE(6, [4], [[]], [[8]]).double()
    with torch.no_grad():
        enc = model.encoder[0]
        for p in enc.parameters():
            p.zero_()
        enc.mean.weight[0, 0], enc.mean.weight[1, 1], enc.mean.weight[2, 2] = 1.5, -1.5, 0.05
        enc.log_std.bias[:2] = -1.0
    return model


def test_pruning_inactive_units_changes_the_log_likelihood_by_little():
    """Section 5.2: removing the inactive units of a model changes its test log-likelihood by < 0.06 nats."""
    x = binary_batch(400, 6, seed=1)

    def nll_change(model: iwae.IWAE, threshold: float = 0.01) -> float:
        pruned = iwae.prune_inactive(model, x, threshold, generator=torch.Generator().manual_seed(2))
        before, after = (
            iwae.log_likelihood(m, x, k=1000, generator=torch.Generator().manual_seed(3)).mean().item()
            for m in (model, pruned)
        )  # fmt: skip
        return abs(after - before)

    model = _model_with_inactive_units_at_the_prior()
    assert iwae.prune_inactive(model, x).unit_mask_0.tolist() == [True, True, False, False]
    assert nll_change(model) < 0.06  # 0.01 here; holding units 2, 3 at 2.0 instead of their mean gives 0.2
    # the measurement has power: removing the active units too (a threshold above their A_u) changes it a lot
    assert nll_change(model, threshold=10.0) > 0.5


def test_spread_takes_every_total_over_n_th_example():
    from iwae.runs.evaluate_run import spread

    idx = spread(10_000, 1_000)
    assert torch.equal(idx, torch.arange(0, 10_000, 10))
    assert torch.equal(spread(10, None), torch.arange(10)) and torch.equal(spread(10, 50), torch.arange(10))
    idx = spread(8_070, 1_000)  # uneven: distinct, increasing, every block of the split represented
    assert idx.unique().numel() == 1_000 and bool((idx.diff() > 0).all()) and int(idx[-1]) < 8_070
    assert torch.bincount(idx // 807, minlength=10).tolist() == [100] * 10


def test_every_split_has_its_own_binarize_and_nll_stream():
    from iwae.data import SPLITS
    from iwae.runs.config import TrainConfig
    from iwae.runs.evaluate_run import STREAMS, stream

    assert all((split, p) in STREAMS for split in SPLITS for p in ("binarize", "nll", "active"))
    for scheme in (1, 2):
        config = TrainConfig(seed=3, streams=scheme)
        firsts = [stream(config, torch.device("cpu"), *pair).initial_seed() for pair in STREAMS]
        distinct = {p: s for p, s in zip(STREAMS, firsts) if p[1] != "active"}
        assert len(set(distinct.values())) == len(distinct)
    # scheme 1: the seeds every metrics.json made before scheme 2 was computed with, 10,000 x seed + salt
    old = TrainConfig(seed=3, streams=1)
    seeds = [stream(old, torch.device("cpu"), split, p).initial_seed() for split in ("test", "train")
             for p in ("binarize", "nll", "active")]  # fmt: skip
    assert seeds == [30_000, 30_099, 30_007, 30_001, 30_098, 30_007]


def test_evaluate_replays_an_evaluation_made_on_several_threads_from_one(tiny_run):
    from iwae.runs.evaluate_run import evaluate_run, finish_run

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        metrics = finish_run(tiny_run, progress=False)
        torch.set_num_threads(1)
        test = evaluate_run(tiny_run, split="test", progress=False)
    finally:
        torch.set_num_threads(before)
    assert metrics["eval_threads"] == 3
    assert (test["nll"], test["nll_sem"]) == (metrics["test_nll"], metrics["test_nll_sem"])


def test_evaluate_refuses_unknown_split():
    from iwae.runs.evaluate_run import evaluate_run

    with pytest.raises(ValueError, match="unknown split 'dev'; choose one of train, validation, test"):
        evaluate_run("no-such-run", split="dev")


def test_evaluate_reproduces_every_number_of_metrics_json(tiny_run, capsys):
    """``tiny_run``'s metrics.json was written by finish_run at the end of ``iwae train`` (tests/conftest.py)."""
    from iwae.cli import main
    from iwae.runs.evaluate_run import evaluate_run

    run = tiny_run
    metrics = read_json(run / "metrics.json")
    assert metrics["eval_threads"] == 1  # training and its evaluation run on one thread on the CPU by default
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # whatever the caller's threads, the evaluation replays metrics.json's
        test = evaluate_run(run, split="test", pruned=True, progress=False)
        train = evaluate_run(run, split="train", progress=False)
        validation = evaluate_run(run, split="validation", progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert (test["nll"], test["nll_sem"], test["nll_pruned"]) == (
        metrics["test_nll"], metrics["test_nll_sem"], metrics["test_nll_pruned"]
    )  # fmt: skip
    assert (train["nll"], train["nll_sem"]) == (metrics["train_nll"], metrics["train_nll_sem"])
    assert test["n"] == train["n"] == metrics["eval_n"] == 50 and test["eval_k"] == metrics["eval_k"] == 20
    for result in (test, train, validation):
        for key in ("active_units", "active_units_split", "active_units_n", "active_threshold"):
            assert result[key] == metrics[key]
    assert metrics["active_units_split"] == "train"
    # the train split's noise is not the test split's (each split has its own stream)
    assert validation["nll"] != test["nll"] and "nll_pruned" not in train

    assert main(["evaluate", str(run), "--split", "train", "--quiet"]) == 0
    assert "(on 50 train images); eval-train-k20-n50.json" in capsys.readouterr().out
    assert {**read_json(run / "eval-train-k20-n50.json"), "seconds": 0} == {**train, "seconds": 0}  # but its time
    # a different n writes its own file and leaves the other
    assert evaluate_run(run, split="train", n=30, progress=False)["n"] == 30
    assert (run / "eval-train-k20-n30.json").is_file() and (run / "eval-train-k20-n50.json").is_file()


def test_log_likelihood_of_no_examples_is_empty():
    from iwae import IWAE, log_likelihood

    model = IWAE(6, [2], [[4]], [[4]])
    assert log_likelihood(model, torch.zeros(0, 6), k=10).shape == (0,)
    ll, se = log_likelihood(model, torch.zeros(0, 6), k=10, return_stderr=True)
    assert ll.shape == se.shape == (0,)


def test_a_bernoulli_model_refuses_values_outside_0_1_and_warns_of_grey_levels():
    """Images not scaled to [0, 1] are refused; grey levels are scored with a warning to binarize (a plausible
    but meaningless number otherwise); binary images and a Gaussian model's real values pass silently."""
    import warnings

    model = tiny_model(x_dim=3)
    with pytest.raises(ValueError, match="values from 0 to 255, but the model's visible layer is Bernoulli"):
        iwae.log_likelihood(model, torch.tensor([[0.0, 255.0, 3.0]], dtype=torch.float64), 4)
    with pytest.warns(UserWarning, match="grey levels, not only 0 and 1.*binarize first") as caught:
        iwae.log_likelihood(model, torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64), 4)
    assert caught[0].filename == __file__  # the warning points at the line that called log_likelihood
    with pytest.raises(ValueError, match="x holds NaN values"):
        iwae.log_likelihood(model, torch.tensor([[0.0, float("nan"), 1.0]], dtype=torch.float64), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iwae.log_likelihood(model, all_binary(3), 4)
        iwae.log_likelihood(tiny_model(x_dim=3, likelihood="gaussian"), torch.tensor([[-2.0, 0.5, 7.0]]).double(), 4)


def test_log_likelihood_takes_binary_images_of_any_dtype_and_names_misuse():
    """bool and integer 0/1 images are cast to the model's dtype (the same estimates); another floating dtype, a k
    that is no count, a generator that is none are refused by name; the delta-method error is NaN at k = 1; the
    model is scored in eval mode and left in the mode it was in."""
    import numpy as np

    model = tiny_model(x_dim=3)
    x = all_binary(3)
    want = iwae.log_likelihood(model, x, 8, generator=torch.Generator().manual_seed(0))
    for held in (x.bool(), x.to(torch.uint8)):
        got = iwae.log_likelihood(model, held, np.int64(8), generator=torch.Generator().manual_seed(0))
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="x is torch.float32 but the model's parameters are torch.float64"):
        iwae.log_likelihood(model, x.float(), 8)
    for bad in (True, 2.0, 0):
        with pytest.raises(ValueError, match=f"k must be a positive integer, got {bad!r}"):
            iwae.log_likelihood(model, x, bad)
    with pytest.raises(TypeError, match="generator must be a torch.Generator, got int"):
        iwae.log_likelihood(model, x, 8, generator=0)
    assert iwae.log_likelihood(model, x, 1, return_stderr=True).stderr.isnan().all()
    model.train()
    A = iwae.active_units(model, x)
    assert model.training and A[0].dtype == torch.float64  # a float64 model's statistic in float64


def test_prune_inactive_names_the_model_it_takes():
    from torch import nn

    model = iwae.GaussianLatentModel(nn.Linear(3, 2), nn.Linear(1, 3), latent_dim=1, x_dim=3)
    with pytest.raises(TypeError, match="prune_inactive removes units of an iwae.IWAE, got GaussianLatentModel"):
        iwae.prune_inactive(model, torch.zeros(4, 3))
