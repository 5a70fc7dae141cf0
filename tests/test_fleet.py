"""Fleets (iwae.fleets.fleet, iwae.fleets.fleet_train): M runs in one step give each run the trajectory of its own run.

The contract: a stacked fleet equals M single runs to float64 rounding (losses and parameters after a few hundred
steps), for reparam and stl, 1 and 2 layers, mixed bounds and learning rates; a looping fleet (DReG, sample-one,
PIWAE, large k on a CPU) equals them bit for bit, log lines and checkpoints included; every run of a fleet is an
ordinary run folder; a fleet killed at any moment resumes to exactly the numbers of the uninterrupted fleet.
"""

from __future__ import annotations

import functools
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import TINY
from test_faults import _same_run

import iwae.data
import iwae.fleets.fleet_train
import iwae.runs.checkpoint
from iwae.cli import main
from iwae.fleets.fleet import LoopFleet, StackedFleet, make_fleet, stackable
from iwae.fleets.fleet_train import MANIFEST_NAME, read_manifest, resume_fleet, train_fleet
from iwae.models.model import IWAE
from iwae.objectives import Objective
from iwae.runs import rundir
from iwae.runs.config import TrainConfig, seed_list
from iwae.runs.rundir import RunError
from iwae.runs.train import train, train_and_evaluate
from iwae.runs.train_step import build_step, make_optimizer
from iwae.util import atomic

SHORT = {**TINY, "pass_scale": 0.01, "eval_n": 20, "curve_n": 10}


def _model(seed: int, layers: int) -> IWAE:
    hidden = [[12, 12]] + [[6]] * (layers - 1)
    return IWAE.from_latent_dims(
        [4, 3][:layers], x_dim=20, q_hidden=hidden, p_hidden=hidden[::-1], generator=torch.Generator().manual_seed(seed)
    ).double()


def _data(m: int) -> torch.Tensor:
    """Run m's 200 grey-level examples of 20 pixels."""
    return torch.rand(200, 20, generator=torch.Generator().manual_seed(50 + m), dtype=torch.float64)


def _singles(objectives, lrs, layers, steps):
    """Each run alone: its own build_step, Adam, generator; its losses and final model."""
    out = []
    for m, (objective, lr) in enumerate(zip(objectives, lrs)):
        model, gen = _model(m, layers), torch.Generator().manual_seed(100 + m)
        opt = make_optimizer(model, lr=lr)
        step = build_step(model, opt, objective, generator=gen)
        data = _data(m)
        losses = [step(torch.bernoulli(data[(t * 10) % 190 :][:10], generator=gen)) for t in range(steps)]
        out.append((torch.stack(losses), model))
    return out


def _fleet(objectives, lrs, layers, steps, mode):
    models = [_model(m, layers) for m in range(len(objectives))]
    opts = [make_optimizer(model) for model in models]
    gens = [torch.Generator().manual_seed(100 + m) for m in range(len(objectives))]
    fleet = make_fleet(models, opts, objectives, gens, mode=mode)
    datas = [
        torch.rand(200, 20, generator=torch.Generator().manual_seed(50 + m), dtype=torch.float64) for m in range(3)
    ]
    losses = []
    for t in range(steps):
        xs = [torch.bernoulli(d[(t * 10) % 190 :][:10], generator=g) for d, g in zip(datas, gens)]
        losses.append(fleet.step(xs, lrs))
    fleet.sync()
    return fleet, torch.stack(losses), models


@pytest.mark.parametrize("estimator,layers,k", [("reparam", 1, 5), ("stl", 2, 5), ("reparam", 2, 1), ("stl", 1, 3)])
def test_stacked_fleet_equals_single_runs_in_float64(estimator, layers, k):
    """Three runs with different seeds, bounds (IWAE, VAE) and learning rates, 200 steps: equal to ~1e-10."""
    objectives = [Objective(b, k, estimator) for b in ("iwae", "vae", "iwae")]
    lrs = [1e-3, 3e-3, 2e-3]
    fleet, losses, models = _fleet(objectives, lrs, layers, 200, "stacked")
    assert isinstance(fleet, StackedFleet)
    for m, (single_losses, single_model) in enumerate(_singles(objectives, lrs, layers, 200)):
        torch.testing.assert_close(losses[:, m], single_losses, rtol=0, atol=1e-10)
        for p, q in zip(models[m].parameters(), single_model.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-10)
    assert (models[0].encoder[0].mean.weight - _model(0, layers).encoder[0].mean.weight).abs().max() > 1e-3


@pytest.mark.parametrize("estimator,bound", [("dreg", "iwae"), ("sample-one", "iwae"), ("reparam", "piwae")])
def test_estimators_vmap_cannot_carry_loop_and_equal_single_runs_exactly(estimator, bound):
    objectives = [Objective(bound, 3, estimator)] * 3
    assert stackable([_model(0, 1)] * 3, objectives) is not None
    fleet, losses, models = _fleet(objectives, [1e-3, 2e-3, 3e-3], 1, 60, "auto")
    assert isinstance(fleet, LoopFleet)
    for m, (single_losses, single_model) in enumerate(_singles(objectives, [1e-3, 2e-3, 3e-3], 1, 60)):
        assert torch.equal(losses[:, m], single_losses)
        assert all(torch.equal(p, q) for p, q in zip(models[m].parameters(), single_model.parameters()))


def test_a_stacked_fleets_state_round_trips_through_the_runs_own_optimisers():
    """60 stacked steps, written back (sync), then 60 more by the runs' own steps == 120 stacked steps."""
    objectives, lrs = [Objective("iwae", 3, "reparam")] * 3, [1e-3, 2e-3, 3e-3]
    _, _, straight = _fleet(objectives, lrs, 1, 120, "stacked")
    fleet, _, models = _fleet(objectives, lrs, 1, 60, "stacked")
    looped = LoopFleet(models, fleet.optimizers, objectives, fleet.generators)
    datas = [
        torch.rand(200, 20, generator=torch.Generator().manual_seed(50 + m), dtype=torch.float64) for m in range(3)
    ]
    for t in range(60, 120):
        looped.step(
            [torch.bernoulli(d[(t * 10) % 190 :][:10], generator=g) for d, g in zip(datas, fleet.generators)], lrs
        )
    for a, b in zip(straight, models):
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-10)


def test_what_cannot_be_stacked_is_refused_with_the_reason():
    one, two = _model(0, 1), _model(1, 2)
    assert "architecture" in stackable([one, two], [Objective("iwae", 3)] * 2)
    assert "samples" in stackable([one, one], [Objective("iwae", 3), Objective("iwae", 5)])
    assert "log-weights alone" in stackable([one], [Objective("iwae", 3, "dreg")])
    args = ([one], [make_optimizer(one)], [Objective("iwae", 3, "dreg")], [torch.Generator()])
    with pytest.raises(ValueError, match="cannot be stacked"):
        make_fleet(*args, mode="stacked")
    with pytest.raises(ValueError, match="needs --device cuda"):
        make_fleet(*args, mode="graph")
    with pytest.raises(ValueError, match="unknown fleet mode"):
        make_fleet(*args, mode="fast")


def test_a_registered_estimator_is_stepped_by_a_loop_fleet_and_refused_by_a_stacked_one():
    """A stacked fleet computes reparam's and STL's losses itself: an estimator of one's own, compilable or not, is
    called by a loop fleet only (a stacked one would step reparam's gradient under its name)."""
    from iwae.objectives import registry
    from iwae.objectives.reparam import Reparam

    class Half(Reparam):
        def loss(self, model, x, objective, generator=None, noise=None):
            return 0.5 * super().loss(model, x, objective, generator, noise)

    registry.register_estimator("half", Half())
    try:
        one = _model(0, 1)
        objectives = [Objective("iwae", 3, "half")]
        assert "estimator half is one of one's own" in stackable([one], objectives)
        args = ([one], [make_optimizer(one)], objectives, [torch.Generator().manual_seed(0)])
        with pytest.raises(ValueError, match="cannot be stacked.*one of one.s own"):
            make_fleet(*args, mode="stacked")
        assert isinstance(make_fleet(*args, mode="auto"), LoopFleet)
    finally:
        registry._ESTIMATORS.pop("half")


def test_seed_lists():
    assert seed_list("0,1,2") == [0, 1, 2] and seed_list("3-5,9") == [3, 4, 5, 9] and seed_list("7") == [7]
    for bad in ("0,0", "a", "-1", "", "2-x"):
        with pytest.raises(Exception, match="seeds"):
            seed_list(bad)


# ----------------------------------------------------------------------------- fleets of run folders
@pytest.fixture
def cached_data(monkeypatch):
    monkeypatch.setattr(iwae.data, "load", functools.cache(iwae.data.load))  # read MNIST once


def _configs(data_dir: str, **changes) -> list[TrainConfig]:
    base = TrainConfig(**{**SHORT, "data_dir": data_dir, **changes})
    return [base.replace(seed=0), base.replace(seed=1, bound="vae")]


@pytest.mark.slow  # a few seconds: the default run stays under 3 minutes
def test_a_looping_fleet_writes_exactly_the_runs_of_iwae_train(data_dir, tmp_path, cached_data):
    """Log lines (learning-curve points included), checkpoints and results equal the single runs' bit for bit."""
    configs = _configs(data_dir)
    for i, c in enumerate(configs):
        train_and_evaluate(tmp_path / f"single-{i}", c, progress=False)
    dirs = [tmp_path / "fleet" / f"seed-{c.seed}" for c in configs]
    result = iwae.fleets.fleet_train.train_fleet_and_evaluate(
        dirs, tmp_path / "fleet" / MANIFEST_NAME, configs, mode="loop", progress=False
    )
    assert result["dropped"] == {} and len(result["metrics"]) == 2
    for i, d in enumerate(dirs):
        _same_run(tmp_path / f"single-{i}", d)
    assert "test_nll_curve" in rundir.read_log(dirs[0])[-1]
    assert read_manifest(tmp_path / "fleet" / MANIFEST_NAME)["mode"] == "loop"


@pytest.mark.slow  # a few seconds: the default run stays under 3 minutes
def test_a_stacked_fleet_of_two_data_sets_trains_each_run_like_its_own(data_dir, tmp_path, cached_data):
    """MNIST (dynamic binarization) and the fixed binarization differ in size: the runs' stages end at different
    steps, and the shorter one leaves the fleet first; each ends close to its single run (float32 rounding)."""
    configs = [TrainConfig(**{**SHORT, "data_dir": data_dir, "curve_k": 0}).replace(dataset=d, seed=i)
               for i, d in enumerate(("mnist", "binarized-mnist"))]  # fmt: skip
    dirs = [tmp_path / "fleet" / c.dataset for c in configs]
    assert train_fleet(configs, dirs, tmp_path / "fleet" / MANIFEST_NAME, mode="stacked", progress=False) == {}
    for c, d in zip(configs, dirs):
        train(c, tmp_path / f"single-{c.dataset}", progress=False)
        a, b = rundir.read_log(d), rundir.read_log(tmp_path / f"single-{c.dataset}")
        assert [r["pass"] for r in a] == [r["pass"] for r in b]
        for ra, rb in zip(a, b):
            assert ra["train_bound"] == pytest.approx(rb["train_bound"], rel=1e-4)
    steps = [rundir.load_state(d, rundir.build_model(c))[0]["fleet_step"] for c, d in zip(configs, dirs)]
    assert steps[0] != steps[1]  # each left the fleet when its own schedule ended


@pytest.mark.slow  # about 10 s: four kills, each a forked fleet
def test_a_fleet_killed_between_the_phases_of_its_checkpoint_resumes_to_the_same_numbers(
    data_dir, tmp_path, cached_data
):
    """kill -9 at a step, a checkpoint write, a commit rename and a log line: every resumed fleet's runs equal the
    uninterrupted fleet's runs (stacked, so any mixing of fleet steps between runs would show)."""
    configs = _configs(data_dir, curve_k=0)
    events: list[str] = []
    straight = tmp_path / "straight"
    with pytest.MonkeyPatch.context() as m:
        _hook(m.setattr, events.append)
        train_fleet(configs, [straight / "a", straight / "b"], straight / MANIFEST_NAME, mode="stacked", progress=False)
    renames = [i for i, e in enumerate(events, 1) if e == "rename"]
    moments = {events.index("step") + 5, events.index("checkpoint") + 2, renames[len(renames) // 2],
               renames[len(renames) // 2 + 1], len(events) - 3}  # fmt: skip
    for moment in sorted(moments):
        fleet = tmp_path / f"killed-{moment}-{events[moment - 1]}"
        _killed_at(moment, functools.partial(_train_ab, configs, fleet))
        resume_fleet(fleet / MANIFEST_NAME, progress=False)
        for name in ("a", "b"):
            assert not (fleet / name / rundir.PENDING_NAME).exists()
            _same_checkpoint(straight / name, fleet / name)


def _same_checkpoint(a: Path, b: Path) -> None:
    strip = ("seconds", "examples_per_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in rundir.read_log(a)] == [
        {k: v for k, v in r.items() if k not in strip} for r in rundir.read_log(b)
    ]
    ta, tb = (iwae.runs.checkpoint.load_file(str(r / rundir.CHECKPOINT_NAME)) for r in (a, b))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def _hook(setattr, event) -> None:
    make, save_file, replace = iwae.fleets.fleet_train.make_fleet, iwae.runs.checkpoint.save_file, atomic.os.replace

    def made(*args, **kwargs):
        fleet = make(*args, **kwargs)
        step = fleet.step
        fleet.step = lambda xs, lrs: (event("step"), step(xs, lrs))[1]
        return fleet

    setattr(iwae.fleets.fleet_train, "make_fleet", made)
    setattr(iwae.runs.checkpoint, "save_file", lambda *a, **k: (event("checkpoint"), save_file(*a, **k))[1])
    setattr(atomic.os, "replace", lambda src, dst: (event("rename"), replace(src, dst))[1])


def _killed_at(moment: int, work, kind: str | None = None) -> None:
    """``work()`` in a forked process that SIGKILLs itself at event number ``moment`` (of ``kind``, if given)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            count = iter(range(1, moment + 1))

            def event(what: str) -> None:
                if (kind is None or what == kind) and next(count, None) == moment:
                    os.kill(os.getpid(), signal.SIGKILL)

            _hook(setattr, event)
            work()
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), f"moment {moment}: not killed"


def test_a_fleet_run_is_an_ordinary_run_folder(data_dir, tmp_path, cached_data):
    """One run of a stopped fleet is continued alone by `iwae resume`; the fleet then refuses to mix it back in."""
    configs = _configs(data_dir, curve_k=0, checkpoint_minutes=0.0)
    fleet = tmp_path / "fleet"
    _killed_at(60, functools.partial(_train_ab, configs, fleet))
    # b alone, stopped after one checkpoint of its own: the fleet must not take it back at its old fleet step
    _killed_at(2, functools.partial(train_and_evaluate, fleet / "b", progress=False), kind="checkpoint")
    with pytest.raises(RunError, match="trained on its own"):
        resume_fleet(fleet / MANIFEST_NAME, progress=False)
    assert main(["resume", str(fleet / "b"), "--quiet", "--no-eval"]) == 0  # b alone, to its end
    assert rundir.load_state(fleet / "b", rundir.build_model(configs[1]))[0]["stage"] == 2
    assert resume_fleet(fleet / MANIFEST_NAME, progress=False) == {}  # b is done: the fleet finishes a
    assert rundir.load_state(fleet / "a", rundir.build_model(configs[0]))[0]["stage"] == 2


def _train_ab(configs: list[TrainConfig], fleet: Path) -> None:
    train_fleet(configs, [fleet / "a", fleet / "b"], fleet / MANIFEST_NAME, mode="stacked", progress=False)


@pytest.mark.slow  # a fleet trained, stopped and resumed through the command line
def test_iwae_train_seeds_makes_a_fleet_and_resume_continues_it(data_dir, tmp_path, cached_data, capsys):
    out = tmp_path / "fleet"
    flags = ["--dataset", "mnist", "--k", "3", "--stages", "2", "--pass-scale", "0.01", "--eval-k", "10",
             "--eval-n", "10", "--curve-k", "0", "--data-dir", data_dir, "--quiet"]  # fmt: skip
    assert main(["train", *[f for f in flags if f != "--quiet"], "--seeds", "3,5", "--out", str(out)]) == 0
    printed, err = capsys.readouterr()
    assert "seed-3: test NLL" in printed and "mean ± sd over 2 runs" in printed
    for seed in (3, 5):  # each run of the fleet says first what it will do
        assert f"{out / f'seed-{seed}'}: 2 stage(s), 0.04 passes over 59,600 training images in batches of 20" in err
    assert read_manifest(out / MANIFEST_NAME)["runs"] == ["seed-3", "seed-5"]
    assert [rundir.read_config(out / f"seed-{s}").seed for s in (3, 5)] == [3, 5]
    assert main(["resume", str(out), "--quiet"]) == 0  # finished: nothing left to train or evaluate
    assert capsys.readouterr().out.startswith(f"{out} is already finished (each of its 2 runs trained and evaluated)")
    assert main(["resume", str(out), "--re-evaluate", "--quiet"]) == 1
    assert f"is a fleet: evaluate its runs again one by one, e.g. `iwae resume {out / 'seed-3'} --re-evaluate`" in (
        capsys.readouterr().err)  # fmt: skip
    assert main(["train", *flags, "--seeds", "1", "--out", str(out)]) == 1
    assert "already holds a fleet" in capsys.readouterr().err
    # --fleet off, as reproduce offers it: the same runs, each on its own, no fleet
    alone = tmp_path / "alone"
    assert main(["train", *flags, "--seeds", "3,5", "--fleet", "off", "--out", str(alone)]) == 0
    assert "mean ± sd over 2 runs" in capsys.readouterr().out and not (alone / MANIFEST_NAME).exists()
    for s in (3, 5):
        _same_checkpoint(out / f"seed-{s}", alone / f"seed-{s}")
    assert main(["train", *flags, "--seeds", "3,5", "--fleet", "off", "--out", str(alone)]) == 0  # all done: kept


@pytest.mark.slow  # seconds: the default run stays under 3 minutes
def test_a_run_whose_loss_stops_being_finite_leaves_the_fleet_with_its_last_good_checkpoint(
    data_dir, tmp_path, cached_data, monkeypatch
):
    configs = _configs(data_dir, curve_k=0)
    make, calls = iwae.fleets.fleet_train.make_fleet, {"n": 0}

    def poisoned(*args, **kwargs):
        fleet = make(*args, **kwargs)
        step = fleet.step

        def poisoning_step(xs, lrs):
            calls["n"] += 1
            if calls["n"] == 40:  # run b's parameters become NaN at fleet step 40
                with torch.no_grad():
                    fleet.flat[1] = float("nan")
            return step(xs, lrs)

        fleet.step = poisoning_step
        return fleet

    monkeypatch.setattr(iwae.fleets.fleet_train, "make_fleet", poisoned)
    fleet = tmp_path / "fleet"
    result = iwae.fleets.fleet_train.train_fleet_and_evaluate(
        [fleet / "a", fleet / "b"], fleet / MANIFEST_NAME, configs, mode="stacked", progress=False
    )
    assert list(result["dropped"]) == ["b"] and "non-finite" in result["dropped"]["b"]
    assert list(result["metrics"]) == [str(fleet / "a")] and rundir.status(fleet / "b") == "partial"
    saved, _ = rundir.load_state(fleet / "b", rundir.build_model(configs[1]))
    assert 0 < saved["fleet_step"] < 40  # the last checkpoint before the NaN (the end of stage 1)
    assert read_manifest(fleet / MANIFEST_NAME)["dropped"] == result["dropped"]
    assert resume_fleet(fleet / MANIFEST_NAME, progress=False) == result["dropped"]  # nothing left to train


@pytest.mark.parametrize("same_rate", [True, False])
def test_stacked_adam_rows_are_torch_adams_of_each_run(same_rate):
    """The same gradients through StackedAdam's rows and through each run's torch.optim.Adam(fused=True): with one
    rate and step count for all rows, torch's own fused kernel (bit for bit); with a rate per row, Adam's formulas."""
    from iwae.fleets.stacked_adam import StackedAdam

    gen = torch.Generator().manual_seed(0)
    rows = [torch.randn(7, 5, generator=gen, dtype=torch.float64) for _ in range(3)]
    params = [row.clone().requires_grad_() for row in rows]
    opts = [torch.optim.Adam([p], lr=lr, eps=1e-4, fused=True) for p, lr in zip(params, (1e-3, 1e-3, 1e-3))]
    lrs = [1e-3] * 3 if same_rate else [1e-3, 3e-3, 2e-3]
    for opt, lr in zip(opts, lrs):
        opt.param_groups[0]["lr"] = lr
    flat = torch.stack([row.reshape(-1) for row in rows]).requires_grad_()
    adam = StackedAdam(flat, (0.9, 0.999), 1e-4)
    adam.set_lrs(lrs)
    for _ in range(25):
        grads = [torch.randn(7, 5, generator=gen, dtype=torch.float64) for _ in range(3)]
        for p, g, opt in zip(params, grads, opts):
            p.grad = g.clone()
            opt.step()
        flat.grad = torch.stack([g.reshape(-1) for g in grads])
        adam.step()
    assert adam.uniform is same_rate
    for m, p in enumerate(params):
        if same_rate:
            assert torch.equal(flat[m].view(7, 5), p)
        else:
            torch.testing.assert_close(flat[m].view(7, 5), p, rtol=1e-13, atol=0)
        assert torch.equal(adam.steps[m], torch.tensor([25.0], dtype=torch.float64))


def test_review_fixes_stale_pending_adam_settings_all_dropped(data_dir, tmp_path, cached_data):
    """A solo resume drops the fleet's uncommitted checkpoint; runs with other Adam settings are not stacked; a
    fleet whose every run was dropped resumes to nothing; reversed seed ranges are refused."""
    configs = _configs(data_dir, curve_k=0)
    fleet = tmp_path / "fleet"
    renames = 9  # 3 at the start (two config.json, fleet.json), 5 per checkpoint: a committed, b pending
    _killed_at(renames, functools.partial(_train_ab, configs, fleet), kind="rename")
    assert (fleet / "b" / rundir.PENDING_NAME).exists()
    assert main(["resume", str(fleet / "b"), "--quiet", "--no-eval"]) == 0
    assert not (fleet / "b" / rundir.PENDING_NAME).exists()
    models = [_model(0, 1), _model(1, 1)]
    opts = [make_optimizer(models[0]), make_optimizer(models[1], betas=(0.99, 0.999))]
    args = (models, opts, [Objective("iwae", 3)] * 2, [torch.Generator(), torch.Generator()])
    assert isinstance(make_fleet(*args, mode="auto"), LoopFleet)
    with pytest.raises(ValueError, match="betas or eps"):
        make_fleet(*args, mode="stacked")
    (tmp_path / "gone").mkdir()
    manifest = {"runs": ["x"], "step": 5, "mode": "loop", "dropped": {"x": "nan"}}
    (tmp_path / "gone" / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert resume_fleet(tmp_path / "gone" / MANIFEST_NAME, progress=False) == {"x": "nan"}
    with pytest.raises(Exception, match="seeds"):
        seed_list("5-3")


@pytest.mark.slow  # seconds of subprocesses; the single run's Ctrl-C test stays in the default run
def test_ctrl_c_checkpoints_the_fleet_step_under_way_and_resume_loses_nothing(data_dir, tmp_path, cached_data):
    configs = _configs(data_dir, curve_k=0, checkpoint_minutes=60.0)  # no timed checkpoint before the signal
    straight = tmp_path / "straight"
    train_fleet(configs, [straight / "a", straight / "b"], straight / MANIFEST_NAME, mode="stacked", progress=False)
    fleet = tmp_path / "interrupted"
    pid = os.fork()
    if pid == 0:  # the child: Ctrl-C during fleet step 20
        code = 3
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, however pytest was started
        try:
            count = iter(range(1, 21))
            _hook(setattr, lambda what: what == "step" and next(count, None) == 20 and os.kill(os.getpid(), 2))
            _train_ab(configs, fleet)
        except KeyboardInterrupt:
            code = 130
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 130
    assert read_manifest(fleet / MANIFEST_NAME)["step"] == 20  # checkpointed at the step under way
    resume_fleet(fleet / MANIFEST_NAME, progress=False)
    for name in ("a", "b"):
        _same_checkpoint(straight / name, fleet / name)


def test_graph_bookkeeping_says_what_the_steps_ran_as(monkeypatch):
    """The graph mode's record, on the CPU: a capture that works (stood in for by an eager replay of the static
    buffers) is counted and replayed, and the fleet says it ran as graphs; one that fails is counted, the fleet steps
    eagerly from then on, and says it ran stacked (a check must not pass a graph fleet that never replayed one); so
    does one that stepped runs of two batch sizes apart."""
    models = [_model(seed, 1) for seed in range(2)]
    objectives = [Objective("iwae", 3)] * 2

    def fleet(capture):
        monkeypatch.setattr(StackedFleet, "_capture", capture)
        opts = [make_optimizer(m) for m in models]
        return StackedFleet(models, opts, objectives, [torch.Generator().manual_seed(s) for s in range(2)], graph=True)

    def works(self, x, noise):  # replays the update on the static buffers that _draw fills
        return lambda: self._update(x, noise)

    xs = [_data(2)[:5], _data(2)[5:10]]
    good = fleet(works)
    for _ in range(3):
        good.step(xs, [1e-3, 1e-3])
    assert good.graph_stats == {"captured": 1, "replayed": 3, "failed": 0, "eager_steps": 0}
    assert good.mode_run == "graph"
    good.step([xs[0], xs[1][:3]], [1e-3, 1e-3])  # minibatches of two sizes (a pass's last): stepped apart, eagerly
    assert good.graph_stats["eager_steps"] == 1 and good.mode_run == "stacked"
    bad = fleet(lambda self, x, noise: None)
    for _ in range(3):
        bad.step(xs, [1e-3, 1e-3])
    assert bad.graph_stats == {"captured": 0, "replayed": 0, "failed": 1, "eager_steps": 3}
    assert bad.mode_run == "stacked"
