"""The random streams (iwae.util.streams): one per seed and purpose, no two alike; scheme 1 keeps the old formulas;
every generator of the library comes from it; run folders made before scheme 2 resume and evaluate to their numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import iwae
from iwae.analysis.distributed import BLOCK
from iwae.util import streams
from iwae.util.streams import PURPOSES, generator, seed_of

SRC = Path(iwae.__file__).parent


def _every_purpose(blocks: int) -> list[tuple]:
    """Every purpose of the library, with the blocks of a sharded evaluation of up to ``blocks`` x BLOCK images and
    the noise of ``iwae snr``'s default sample counts."""
    evals = [p for p in PURPOSES if p[0] == "eval"]
    blocked = [(*p, "block", b) for p in evals for b in range(blocks)]
    return [*PURPOSES, *blocked, *(("snr", "k", k) for k in (1, 5, 50, 500, 5000))]


def test_no_two_purposes_seeds_or_blocks_share_a_stream():
    purposes = _every_purpose(blocks=-(-10_000 // BLOCK))  # the blocks of 10,000 images (a test set)
    seen: dict[int, tuple] = {}
    for seed in range(1000):
        for purpose in purposes:
            s = seed_of(seed, *purpose)
            assert s not in seen, f"{(seed, *purpose)} and {seen[s]} share a stream"
            seen[s] = (seed, *purpose)
    assert all(0 <= s < 2**63 for s in seen)


def test_scheme_1_is_the_formulas_of_runs_made_before_it_and_shows_why_it_was_replaced():
    seed = 4
    assert seed_of(seed, "init", scheme=1) == seed_of(seed, "shuffle", scheme=1) == seed
    assert seed_of(seed, "noise", scheme=1) == seed + 1
    assert seed_of(seed, "eval", "test", "nll", scheme=1) == 10_000 * seed + 99
    assert seed_of(seed, "eval", "test", "nll", "block", 3, scheme=1) == (10_000 * seed + 99) * 2**20 + 3
    # the coincidences of scheme 1 at seed 0, gone in scheme 2
    assert seed_of(0, "noise", scheme=1) == seed_of(0, "eval", "train", "binarize", scheme=1)
    assert seed_of(0, "init", scheme=1) == seed_of(0, "eval", "test", "binarize", scheme=1)
    assert seed_of(0, "noise") != seed_of(0, "eval", "train", "binarize")
    assert seed_of(0, "init") != seed_of(0, "eval", "test", "binarize")


def test_generator_is_seeded_by_seed_of_and_bad_requests_are_refused():
    g = generator(7, "eval", "test", "nll")
    assert g.initial_seed() == seed_of(7, "eval", "test", "nll") and g.device.type == "cpu"
    assert torch.equal(torch.rand(5, generator=g), torch.rand(5, generator=generator(7, "eval", "test", "nll")))
    with pytest.raises(ValueError, match="scheme"):
        seed_of(0, "init", scheme=3)
    with pytest.raises(ValueError, match="an integer"):
        seed_of(1.5, "init")
    assert seed_of(-1, "init", scheme=1) == -1 and 0 <= seed_of(-1, "init") < 2**63  # old runs of seed -1 too
    with pytest.raises(ValueError, match="scheme 1"):
        seed_of(0, "fleet", 3, scheme=1)


def test_every_generator_of_the_library_comes_from_the_stream_function():
    """No module seeds a generator itself; the one fixed permutation of a data set's definition (Omniglot's
    validation split) is data, not a stream, and a model card's snippet is text for its reader."""
    pattern = re.compile(r"manual_seed\(|torch\.Generator\(|default_rng\(|torch\.seed\(|random\.seed\(")
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for line in path.read_text().splitlines():
            if pattern.search(line.split("#")[0]) and path.name != "streams.py" and "``" not in line:
                found.append(f"{path.relative_to(SRC)}: {line.strip()}")
    assert found == [
        "data/omniglot.py: shuffled = pool[np.random.default_rng(SEED).permutation(len(pool))]",
        'runs/sharing.py: "samples = model.sample(16, generator=torch.Generator(next(model.parameters()).device)'
        '.manual_seed(0))"',
    ]


def test_a_model_built_from_a_stream_and_a_run_trained_and_evaluated_leave_torchs_global_generator_alone(
    tiny_config, tmp_path
):
    """torch's layers draw their default initialisation from the global generator; a model given a generator of
    its own (as every run's is) takes none of those draws from the caller's stream, and neither does a run."""
    from iwae.runs.train import train_and_evaluate

    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    iwae.IWAE.paper(layers=2, generator=generator(0, "init"))
    iwae.IWAE.from_latent_dims([2], 784, generator=generator(0, "init"))
    assert torch.equal(torch.random.get_rng_state(), state)
    train_and_evaluate(tmp_path / "run", tiny_config.replace(stages=1), progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    iwae.IWAE.paper(layers=1)  # no generator given: the global generator's, as torch's layers are
    assert not torch.equal(torch.random.get_rng_state(), state)


def test_a_run_records_its_scheme_and_an_old_run_folder_reads_as_scheme_1(tmp_path):
    from iwae.runs.config import TrainConfig
    from iwae.runs.rundir import read_config

    assert json.loads(TrainConfig().to_json())["streams"] == streams.SCHEME == 2
    values = json.loads(TrainConfig(seed=2).to_json())
    del values["streams"], values["flush_denormal"]  # a config.json written before either existed
    (tmp_path / "config.json").write_text(json.dumps(values))
    old = read_config(tmp_path)
    assert old.streams == 1 and old.flush_denormal is False and old.seed == 2
    with pytest.raises(ValueError, match="streams"):
        TrainConfig(streams=3)


OLD_RUN = Path(__file__).parent / "data" / "scheme1-run"  # trained by the code before scheme 2 (no streams key)
TIMINGS = {"seconds", "examples_per_s", "train_seconds", "curve_seconds", "pass_seconds", "eval_seconds"}


def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the old run was evaluated on one thread, and recorded no eval_threads
    return before


def _tensor_digests(path: Path) -> dict[str, list]:
    """Each tensor of a checkpoint: dtype, shape and the sha256 of its bytes (the fixture keeps these, not the file)."""
    import hashlib

    from safetensors.torch import load_file

    tensors = load_file(str(path))
    return {name: [str(t.dtype), list(t.shape),
                   hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()]
            for name, t in sorted(tensors.items())}  # fmt: skip


def _arithmetic_digest() -> str:
    """sha256 of a probe of the float32 kernels a run's numbers go through (a matrix product, tanh, exp, softplus,
    log-sum-exp), on the current threads: machines where it differs round a run's last bits otherwise (another
    vector width, another BLAS path). Where it agrees, a run's log and metrics replay bit for bit; its final weights
    too on the recording machine's kernels (its ATen CPU capability), but not always on others: an AMD EPYC with
    AVX2 kernels passes the probe and differs in a few decoder weights' last bits."""
    import hashlib

    g = torch.Generator().manual_seed(0)
    h = torch.tanh(torch.randn(40, 784, generator=g) @ torch.randn(784, 200, generator=g) / 28)
    probe = [h, torch.exp(h), torch.nn.functional.softplus(4 * h), torch.logsumexp(8 * h, 0)]
    return hashlib.sha256(b"".join(t.contiguous().numpy().tobytes() for t in probe)).hexdigest()


def _close(a: object, b: object) -> bool:
    """Equal, but for floats within 1e-3 of each other, through lists and dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_close, a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, abs=1e-3)
    return a == b


def test_an_old_run_folder_trains_again_and_evaluates_to_exactly_its_numbers(data_dir, tmp_path):
    """The folder of a run the old code trained (its config.json, stopped before its first checkpoint) trains to the
    old run's log, final checkpoint (tensor by tensor) and metrics.json, and `iwae evaluate` replays them: bit for
    bit on a CPU whose kernels round as the recording machine's did (``arithmetic.json``; the weights and Adam's
    moments only on its ATen CPU capability, :func:`_arithmetic_digest`), within 1e-3 nats on another (other random
    streams would differ by tenths of a nat)."""
    from iwae.runs.evaluate_run import evaluate_run
    from iwae.runs.rundir import read_log
    from iwae.runs.train import train_and_evaluate

    run = tmp_path / "old"
    run.mkdir()
    (run / "config.json").write_text((OLD_RUN / "config.json").read_text())
    recorded = json.loads((OLD_RUN / "metrics.json").read_text())
    recorded["bound"] = recorded.pop("objective")  # the key's name since 0.2.0 (TrainConfig's field, renamed)
    before = _one_thread()
    try:
        exact = _arithmetic_digest() == json.loads((OLD_RUN / "arithmetic.json").read_text())["probe"]
        metrics = train_and_evaluate(run, progress=False, changes={"data_dir": data_dir})
        test = evaluate_run(run, split="test", pruned=True, progress=False, data_dir=data_dir)
        train = evaluate_run(run, split="train", progress=False, data_dir=data_dir)
    finally:
        torch.set_num_threads(before)
    # (and the keys the old code did not write: the machines, each unit's A_u)
    other = TIMINGS | {"eval_threads", "data_files", "code", "train_machines", "eval_machine", "activity"}
    strip = lambda d: {k: v for k, v in d.items() if k not in other}  # noqa: E731
    same = (lambda a, b: a == b) if exact else _close  # noqa: E731
    assert same([strip(r) for r in read_log(run)], [strip(r) for r in read_log(OLD_RUN)])
    assert same(strip(metrics), strip(recorded))
    if exact:
        got, want = (
            _tensor_digests(run / "checkpoint.safetensors"),
            json.loads((OLD_RUN / "checkpoint-tensors.json").read_text()),
        )
        assert {k: v[:2] for k, v in got.items()} == {k: v[:2] for k, v in want.items()}  # names, dtypes, shapes
        # Bit for bit on any such CPU: the random streams' states, the unit masks and Adam's step counts; the weights
        # and Adam's moments where the vector kernels are the recording machine's too (_arithmetic_digest).
        recorded_on = json.loads((OLD_RUN / "arithmetic.json").read_text())["recorded_on"]
        same_kernels = f"ATen CPU capability {torch.backends.cpu.get_cpu_capability()}," in recorded_on
        weights = set() if same_kernels else {k for k, (dtype, _, _) in want.items() if dtype.startswith(
            "torch.float") and (k.startswith("model.") or ".exp_avg" in k)}  # fmt: skip
        assert {k: v for k, v in got.items() if k not in weights} == {k: v for k, v in want.items() if k not in weights}
    assert same([test["nll"], test["nll_sem"], test["nll_pruned"]],
                [recorded["test_nll"], recorded["test_nll_sem"], recorded["test_nll_pruned"]])  # fmt: skip
    assert same([train["nll"], train["nll_sem"]], [recorded["train_nll"], recorded["train_nll_sem"]])
    assert test["active_units"] == recorded["active_units"]


def test_a_reproduction_continues_its_old_partial_runs(tmp_path):
    """A partial run folder made before streams and flush_denormal existed is the run the plan asks for."""
    from iwae.experiments.plan import RunSpec
    from iwae.experiments.runner import check_compatible
    from iwae.runs.config import TrainConfig

    values = json.loads((OLD_RUN / "config.json").read_text())
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(values))  # no metrics.json: partial
    check_compatible(RunSpec("run", TrainConfig.from_dict(values)), tmp_path / "run")  # the plan's config: new defaults
    with pytest.raises(ValueError, match="another config"):
        check_compatible(RunSpec("run", TrainConfig.from_dict({**values, "k": 4})), tmp_path / "run")
