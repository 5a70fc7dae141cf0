"""The iwae benchmark: training-step throughput against a baseline and Pyro, the matmul ceiling, L_5000 throughput
and memory, in one process on the same data. Prints markdown tables; writes JSON and a markdown report.

    python -m benchmarks.bench                      # about 3 minutes on a 2-core CPU (more the first time: compilation)
    python -m benchmarks.bench --quick              # under a minute
    python benchmarks/bench.py --out benchmarks/results/cpu.json   # also writes benchmarks/results/cpu.md

Rows: batch 20, k in {1, 5, 50}, 1 and 2 stochastic layers, the k-sample VAE bound (Eq. 7) and the IWAE bound
(Eq. 14), on fresh models; then k=50 steps on models trained for one pass of MNIST (where subnormal floats appear)
with and without flushing them, which needs MNIST (``IWAE_DATA_DIR`` or ``--data-dir``). "project" is
``iwae.make_train_step`` with ``iwae.make_optimizer`` ("project compiled": with ``compile=True``); "baseline" and
"pyro" are in ``benchmarks/peers.py``. GFLOP/s counts the minimum matmul FLOPs of a step
(``measure.step_flops``); the floor is ``measure.step_floor``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from benchmarks/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

import iwae
from benchmarks import measure, peers, report

BATCH = 20
TEST_IMAGES = 10_000
FULL = {
    "layers": (1, 2),
    "ks": (1, 5, 50),
    "kinds": ("vae", "iwae"),
    "steps": {1: 60, 5: 40, 50: 12},
    "repeats": 7,
    "ll_layers": (1, 2),
    "ll_k": 5000,
    "ll_images": 40,
    "memory": ((1, 5000, 100), (1, 50, TEST_IMAGES)),
    # steps on models trained for one pass of MNIST, where subnormal floats appear, with and without flushing
    "trained": {
        "layers": (1, 2),
        "train_steps": 3000,
        "train_k": 5,
        "k": 50,
        "steps": 8,
        "repeats": 5,
        "ll_k": 5000,
        "ll_images": 8,
    },
}
QUICK = {
    "layers": (1,),
    "ks": (1, 50),
    "kinds": ("iwae",),
    "steps": {1: 30, 5: 20, 50: 6},
    "repeats": 3,
    "ll_layers": (1,),
    "ll_k": 5000,
    "ll_images": 4,
    "memory": ((1, 5000, 20),),
    "trained": {
        "layers": (1,),
        "train_steps": 600,
        "train_k": 5,
        "k": 50,
        "steps": 4,
        "repeats": 3,
        "ll_k": 1000,
        "ll_images": 4,
    },
}


def compiled_step(layers: int, k: int, kind: str, device: torch.device, x: torch.Tensor):
    """The project's step with ``compile=True`` on a fresh model, compiled now (one step on ``x``), outside any
    timed warm-up."""
    model = iwae.IWAE.paper(layers).to(device)
    step = iwae.make_train_step(model, iwae.make_optimizer(model), k=k, bound=kind, compile=True)
    step(x)
    return step


def train_rows(
    layers: int,
    k: int,
    kind: str,
    settings: dict,
    device: torch.device,
    with_pyro: bool,
    data: torch.Tensor,
    compiled: bool = False,
) -> list[dict]:
    """Time the project (eager, and compiled if asked), the baseline and Pyro (and the Section 3.1 estimator for
    IWAE) on the same batches."""
    torch.manual_seed(0)
    model = iwae.IWAE.paper(layers).to(device)
    fns, cursor = {}, [0]

    def batches(fn):
        def run():
            cursor[0] = (cursor[0] + 1) % data.shape[0]
            return fn(data[cursor[0]])

        return run

    fns["project"] = batches(iwae.make_train_step(model, iwae.make_optimizer(model), k=k, bound=kind))
    if compiled:
        fns["project compiled"] = batches(compiled_step(layers, k, kind, device, data[0]))
    if kind == "iwae":
        other = iwae.IWAE.paper(layers).to(device)
        one = iwae.make_train_step(other, iwae.make_optimizer(other), k=k, bound=kind, estimator="sample-one")
        fns["project sample-one"] = batches(one)
    fns["baseline"] = batches(peers.baseline_step(layers, k, kind, device))
    if with_pyro:
        fns["pyro"] = batches(peers.pyro_step(layers, k, kind, device))
    steps = settings["steps"][k]
    seconds = measure.time_interleaved(fns, steps, settings["repeats"], max(3, steps // 3), device)
    rows = []
    for impl, t in seconds.items():
        estimator = "sample-one" if impl.endswith("sample-one") else "reparam"
        flops = measure.step_flops(model, k, BATCH, kind, estimator)
        rows.append(
            {
                "device": device.type,
                "layers": layers,
                "k": k,
                "kind": kind,
                "impl": impl,
                "ms_per_step": t * 1e3,
                "examples_per_s": BATCH / t,
                "gflops": flops / t / 1e9 if impl.startswith("project") else None,
                "vs_project": t / seconds["project"],
            }
        )
    return rows


def trained_model(layers: int, x: torch.Tensor, steps: int, k: int, device: torch.device) -> iwae.IWAE:
    """The paper's model trained ``steps`` steps of IWAE k on MNIST (shuffled, dynamically binarized, flushing)."""
    gen = torch.Generator().manual_seed(0)
    model = iwae.IWAE.paper(layers, output_bias=x.mean(0), generator=gen).to(device)
    step = iwae.make_train_step(model, iwae.make_optimizer(model), k=k, generator=gen)
    perm = torch.cat([torch.randperm(x.shape[0], generator=gen) for _ in range(-(-steps * BATCH // x.shape[0]))])
    for t in range(steps):
        step(iwae.data.binarize(x[perm[t * BATCH : (t + 1) * BATCH]], generator=gen).to(device))
    return model


def _cycling(step, batches: torch.Tensor):
    """``step`` on the batches in turn, one per call."""
    cursor = [0]

    def run():
        cursor[0] = (cursor[0] + 1) % batches.shape[0]
        return step(batches[cursor[0]])

    return run


def subnormal_rows(settings: dict, data_dir: str | None, device: torch.device, log=print) -> dict | None:
    """VAE and IWAE steps at k on a fresh model and on one trained for ``train_steps`` steps of MNIST, with and
    without flushing subnormal floats (``flush_denormal``), beside the step's floor; and L_k on the trained model
    with and without flushing. None (with a line saying why) without the MNIST training set."""
    import copy

    s = settings["trained"]
    try:
        x = iwae.data.load("mnist", "train", data_dir)
    except (OSError, ValueError) as err:
        log(f"trained-model section skipped: no MNIST ({err}); set IWAE_DATA_DIR or --data-dir")
        return None
    test = iwae.data.binarize(x[: 8 * BATCH], generator=torch.Generator().manual_seed(1)).view(8, BATCH, -1)
    test = test.to(device)
    out = {"train_steps": s["train_steps"], "train_k": s["train_k"], "k": s["k"], "steps": [], "floor": [], "ll": []}
    for layers in s["layers"]:
        models = {
            "fresh": iwae.IWAE.paper(layers, output_bias=x.mean(0), generator=torch.Generator().manual_seed(0)),
            "trained": trained_model(layers, x, s["train_steps"], s["train_k"], device),
        }
        fns = {}
        for state, model in models.items():
            for kind in ("vae", "iwae"):
                for flush in (True, False):
                    own = copy.deepcopy(model).to(device)
                    step = iwae.make_train_step(
                        own, iwae.make_optimizer(own), k=s["k"], bound=kind, flush_denormal=flush
                    )

                    fns[(state, kind, flush)] = _cycling(step, test)
        seconds = measure.time_interleaved(fns, s["steps"], s["repeats"], 2, device)
        floor = measure.step_floor(models["trained"], s["k"], BATCH, device)
        out["floor"].append({"layers": layers, "k": s["k"], **floor})
        for (state, kind, flush), t in seconds.items():
            row = {"layers": layers, "model": state, "kind": kind, "flush": flush, "ms_per_step": t * 1e3}
            out["steps"].append(row | {"vs_floor": t * 1e3 / floor["floor_ms"]})
        model, x_ll = models["trained"].eval(), test.view(-1, test.shape[-1])[: s["ll_images"]]
        runs = {f: partial(iwae.log_likelihood, model, x_ll, s["ll_k"], flush_denormal=f) for f in (True, False)}
        for flush, t in measure.time_interleaved(runs, 1, 3, 1, device).items():
            row = {"layers": layers, "k": s["ll_k"], "images": x_ll.shape[0], "flush": flush}
            out["ll"].append(row | {"images_per_s": x_ll.shape[0] / t})
        log(
            f"{layers}L k={s['k']}: "
            + " | ".join(f"{st} {kd} {'flush' if f else 'keep'} {t * 1e3:.1f} ms" for (st, kd, f), t in seconds.items())
        )
    return out


def run(
    settings: dict,
    device: torch.device,
    with_pyro: bool,
    memory: bool = True,
    compiled: bool = False,
    log=print,
    data_dir: str | None = None,
) -> dict:
    """Run every measurement in ``settings``; return the results as a JSON-ready dict."""
    result = {"meta": report.machine(device), "settings": _jsonable(settings)}
    log(f"# {result['meta']['cpu']} | torch {torch.__version__} | {torch.get_num_threads()} threads | {device}")
    result["ceiling"] = measure.matmul_ceiling(device)
    log(f"matmul ceiling: {result['ceiling']['gflops']:.0f} GFLOP/s")
    data = measure.synthetic_binary(8 * BATCH, device=device).view(8, BATCH, -1)
    result["train"], result["floor"] = [], []
    for layers in settings["layers"]:
        for k in settings["ks"]:
            floor = measure.step_floor(iwae.IWAE.paper(layers), k, BATCH, device)
            result["floor"].append({"layers": layers, "k": k, **floor})
            log(f"floor {layers}L k={k}: GEMMs {floor['gemm_ms']:.2f} ms + Adam {floor['adam_ms']:.2f} ms")
            for kind in settings["kinds"]:
                rows = train_rows(layers, k, kind, settings, device, with_pyro, data, compiled)
                result["train"] += rows
                log(" | ".join(f"{r['impl']} {r['ms_per_step']:.2f} ms" for r in rows) + f"  ({layers}L k={k} {kind})")
    result["log_likelihood"] = []
    for layers in settings["ll_layers"]:
        ll = measure.log_likelihood_throughput(layers, settings["ll_k"], settings["ll_images"], TEST_IMAGES, device)
        result["log_likelihood"].append(ll)
        log(f"L_{ll['k']} {layers}L: {ll['images_per_s']:.1f} images/s, {ll['gflops']:.0f} GFLOP/s")
    result["memory"] = []
    if memory and device.type == "cpu":
        for layers, k, n in settings["memory"]:
            mem = measure.log_likelihood_memory(layers, k, n, torch.get_num_threads())
            result["memory"].append(mem)
            log(f"memory L_{k} on {n} images: +{mem['added_peak_mib']:.0f} MiB (process {mem['process_peak_mib']:.0f})")
    result["subnormals"] = subnormal_rows(settings, data_dir, device, log) if "trained" in settings else None
    result["targets"] = report.targets(result)
    result["meta"]["load_after"] = report.load_average()
    return result


def _jsonable(settings: dict) -> dict:
    return {k: ({str(a): b for a, b in v.items()} if isinstance(v, dict) else v) for k, v in settings.items()}


def cuda_results(settings: dict, with_pyro: bool, log=print) -> dict:
    """The CUDA section: graph-captured project steps against the eager peers, and the MNIST epoch time."""
    from benchmarks import gpu

    device = torch.device("cuda")
    out = {"ceiling": measure.matmul_ceiling(device), "train": []}
    data = measure.synthetic_binary(8 * BATCH, device=device).view(8, BATCH, -1)
    for layers in settings["layers"]:
        for k in settings["ks"]:
            replay, captured = gpu.project_step_cuda(layers, k, "iwae", "reparam", data[0])
            fns = {"project (graph)" if captured else "project": lambda r=replay: r(data[1])}
            compiled = compiled_step(layers, k, "iwae", device, data[0])  # reduce-overhead mode on CUDA
            fns["project compiled"] = lambda c=compiled: c(data[1])
            baseline = peers.baseline_step(layers, k, "iwae", device)
            fns["baseline"] = lambda b=baseline: b(data[2])
            if with_pyro:
                p = peers.pyro_step(layers, k, "iwae", device)
                fns["pyro"] = lambda p=p: p(data[3])
            seconds = measure.time_interleaved(fns, settings["steps"][k], settings["repeats"], 5, device)
            for impl, t in seconds.items():
                out["train"].append({"device": "cuda", "layers": layers, "k": k, "kind": "iwae", "impl": impl,
                                     "ms_per_step": t * 1e3, "examples_per_s": BATCH / t})  # fmt: skip
            log(" | ".join(f"{i} {t * 1e3:.2f} ms" for i, t in seconds.items()) + f"  (cuda {layers}L k={k})")
    out["epoch"] = gpu.epoch_seconds(layers=2, k=50)
    log(f"MNIST epoch, 2 layers, IWAE k=50: {out['epoch']['seconds_per_pass']:.2f} s")
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows and repeats (under a minute)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu.json"), help="JSON path; .md beside")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--no-pyro", action="store_true", help="skip Pyro even if it is installed")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA section even if a GPU is present")
    parser.add_argument("--note", default=None, help="a line for the report (e.g. why the thread count was set)")
    parser.add_argument("--data-dir", default=None, help="MNIST for the trained-model rows (default $IWAE_DATA_DIR)")
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="skip the `project compiled` rows (torch.compile, needs a C++ compiler)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else FULL
    with_pyro = peers.pyro_available() and not args.no_pyro
    result = run(settings, torch.device("cpu"), with_pyro, compiled=not args.no_compile, data_dir=args.data_dir)
    result["meta"]["command"] = "python -m benchmarks.bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    result["meta"]["pyro"] = report.pyro_version() if with_pyro else None
    result["meta"]["note"] = args.note
    result["cuda"] = cuda_results(settings, with_pyro) if torch.cuda.is_available() and not args.no_cuda else None
    text = report.markdown(result)
    print(text)
    report.write(result, text, args.out)
    return result


if __name__ == "__main__":
    main()
