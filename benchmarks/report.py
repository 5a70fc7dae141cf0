"""The benchmark's report: machine description, the project's speed targets, markdown tables, JSON and markdown."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path

import numpy
import torch

from iwae.runs.evaluate_run import code_version
from iwae.util.atomic import write_json, write_text
from iwae.util.machine import cpu_model

# The project's reparam training steps: iwae.make_train_step eager, and with compile=True.
PROJECT_REPARAM = ("project", "project compiled")

# (name, what is compared, threshold, "<=" or ">="): the project's speed targets, on a 2-core CPU.
TARGETS = (
    ("k=50 1L IWAE step vs baseline", "project / baseline step time", 0.45, "<="),
    ("k=50 1L IWAE step vs Pyro", "project / pyro step time", 0.60, "<="),
    ("k=50 1L IWAE fraction of matmul ceiling", "project GFLOP/s / ceiling", 0.65, ">="),
    ("k=1 step vs baseline (worst row)", "project / baseline step time", 0.40, "<="),
    ("L_5000 fraction of matmul ceiling (1L)", "GFLOP/s / ceiling", 0.60, ">="),
    ("L_5000 peak memory added (MiB)", "largest over the memory runs", 1024, "<="),
    ("sample-one speed-up over IWAE at k=50 (1L)", "reparam / sample-one step time", 2.0, ">="),
    ("k=50 2L IWAE step vs VAE step, trained model", "IWAE / VAE step time, flushing", 1.1, "<="),
    ("k=50 1L IWAE step vs its floor, trained model", "IWAE step time / floor, flushing", 1.3, "<="),
)


def ais_runs(steps: str, prior_steps: str) -> list[tuple[str, int]]:
    """The (start, steps) annealing runs that comma-separated ``--steps`` (from q) and ``--prior-steps`` (from the
    prior; ``''`` for none) ask for, from q first."""
    return [("q", int(s)) for s in steps.split(",") if s] + [("prior", int(s)) for s in prior_steps.split(",") if s]


def ais_row(method: str, anneal_from: str, steps: int, chains: int) -> str:
    """A table row's name: ``"AIS, 500 steps x 8 chains"``, ``"BDMC from the prior, 2000 steps x 8 chains"``."""
    return f"{method}{'' if anneal_from == 'q' else ' from the prior'}, {steps} steps x {chains} chains"


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine(device: torch.device) -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_before": load_average(),
        "code": code_version(),
    }


def code_text(meta: dict) -> str:
    """The code a result measured, as read: 'iwae 0.3.0, commit abc1234 with uncommitted changes' (a result written
    before it was recorded: 'not recorded')."""
    code = meta.get("code")
    if not code:
        return "not recorded"
    commit = f"commit {code['commit'][:12]}" if code.get("commit") else "no git checkout"
    return f"iwae {code['version']}, {commit}" + (" with uncommitted changes" if code.get("dirty") else "")


def pyro_version() -> str:
    import pyro

    return pyro.__version__


def _row(result: dict, layers: int, k: int, kind: str, impl: str) -> dict | None:
    for r in result["train"]:
        if (r["device"], r["layers"], r["k"], r["kind"], r["impl"]) == ("cpu", layers, k, kind, impl):
            return r
    return None


def _fastest_project(result: dict, layers: int, k: int, kind: str) -> dict | None:
    """The faster of the project's reparam steps (eager, compiled) for a row of the table."""
    rows = [r for r in (_row(result, layers, k, kind, i) for i in PROJECT_REPARAM) if r]
    return min(rows, key=lambda r: r["ms_per_step"]) if rows else None


def targets(result: dict) -> list[dict]:
    """Each target's measured value (None where this run did not measure it) and whether it is met.

    The step-time targets take the faster of the project's eager and compiled steps, and say which.
    """
    ceiling = result["ceiling"]["gflops"]
    proj = _fastest_project(result, 1, 50, "iwae")
    eager, base, pyro, one = (
        _row(result, 1, 50, "iwae", i) for i in ("project", "baseline", "pyro", "project sample-one")
    )
    k1 = []
    for b in (r for r in result["train"] if r["k"] == 1 and r["impl"] == "baseline"):
        fast = _fastest_project(result, b["layers"], 1, b["kind"])
        if fast:
            k1.append((fast["ms_per_step"] / b["ms_per_step"], fast["impl"]))
    ll = [x for x in result["log_likelihood"] if x["layers"] == 1]
    values = [
        proj["ms_per_step"] / base["ms_per_step"] if proj and base else None,
        proj["ms_per_step"] / pyro["ms_per_step"] if proj and pyro else None,
        proj["gflops"] / ceiling if proj else None,
        max(k1)[0] if k1 else None,
        ll[0]["gflops"] / ceiling if ll else None,
        max(m["added_peak_mib"] for m in result["memory"]) if result["memory"] else None,
        eager["ms_per_step"] / one["ms_per_step"] if eager and one else None,
        _trained_ratio(result, 2, "vae"),
        _trained_ratio(result, 1, "floor"),
    ]
    used = [proj["impl"] if proj else "project"] * 3 + [max(k1)[1] if k1 else "project"] + ["project"] * 5
    out = []
    for (name, what, threshold, op), value, impl in zip(TARGETS, values, used):
        met = None if value is None else (value <= threshold if op == "<=" else value >= threshold)
        what = what.replace("project", impl, 1) if what.startswith("project") else what
        out.append({"target": name, "measure": what, "value": value, "threshold": f"{op} {threshold}", "met": met})
    return out


def _trained_step(result: dict, layers: int, kind: str, flush: bool, model: str = "trained") -> dict | None:
    rows = (result.get("subnormals") or {}).get("steps", [])
    match = (layers, model, kind, flush)
    return next((r for r in rows if (r["layers"], r["model"], r["kind"], r["flush"]) == match), None)


def _trained_ratio(result: dict, layers: int, over: str) -> float | None:
    """The flushed IWAE step on the trained model over the flushed VAE step (``over="vae"``) or over the floor."""
    iwae_row = _trained_step(result, layers, "iwae", True)
    if iwae_row is None:
        return None
    if over == "floor":
        return iwae_row["vs_floor"]
    vae_row = _trained_step(result, layers, "vae", True)
    return iwae_row["ms_per_step"] / vae_row["ms_per_step"] if vae_row else None


def subnormal_lines(result: dict) -> list[str]:
    """The steps of fresh and trained models with and without flushing subnormal floats, and L_k on the latter."""
    sub = result.get("subnormals")
    if not sub:
        return ["## Subnormal floats", "", "Not measured in this run (it needs MNIST: set IWAE_DATA_DIR).", ""]
    lines = [
        "## Subnormal floats: trained models, with and without flushing",
        "",
        f"Steps at batch 20, k={sub['k']}, on the paper's model fresh and after {sub['train_steps']:,} steps of IWAE "
        f"k={sub['train_k']} on MNIST (one pass is 2,980 steps), where IWAE's normalised weights and the "
        "saturating decoder's gradients underflow into subnormal floats; `flush` is the library's default "
        "(`flush_denormal`), `keep` leaves them. Median ms per step; `/ floor` is the step over the measured floor "
        "of its GEMMs and Adam.",
        "",
        "| layers | model | VAE flush | VAE keep | IWAE flush | IWAE keep | IWAE keep / flush | IWAE flush / VAE flush "
        "| floor (ms) | IWAE flush / floor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in sub["floor"]:
        for model in ("fresh", "trained"):
            vf, vk, i_f, i_k = (
                _trained_step(result, f["layers"], kind, flush, model)["ms_per_step"]
                for kind, flush in (("vae", True), ("vae", False), ("iwae", True), ("iwae", False))
            )
            lines.append(
                f"| {f['layers']} | {model} | {vf:.2f} | {vk:.2f} | {i_f:.2f} | {i_k:.2f} | {i_k / i_f:.2f} | "
                f"{i_f / vf:.2f} | {f['floor_ms']:.2f} | {i_f / f['floor_ms']:.2f} |"
            )
    lines += ["", "| layers | L_k on the trained model | images | images/s flush | images/s keep | gain |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for layers in sorted({r["layers"] for r in sub["ll"]}):
        fl, kp = (next(r for r in sub["ll"] if r["layers"] == layers and r["flush"] == f) for f in (True, False))
        lines.append(
            f"| {layers} | L_{fl['k']} | {fl['images']} | {fl['images_per_s']:.1f} | {kp['images_per_s']:.1f} | "
            f"{fl['images_per_s'] / kp['images_per_s']:.2f}x |"
        )
    return [*lines, ""]


def floor_table(result: dict) -> list[str]:
    """The measured floor of a step (its GEMMs and one Adam update) beside the IWAE rows, and the ratios it allows."""
    lines = [
        "| layers | k | GEMMs (ms) | Adam (ms) | floor (ms) | project | project compiled | baseline | pyro | "
        "floor / baseline | floor / pyro | project compiled - floor (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in result.get("floor", []):
        ms = {
            i: _row(result, f["layers"], f["k"], "iwae", i) for i in ("project", "project compiled", "baseline", "pyro")
        }
        ms = {i: r["ms_per_step"] if r else None for i, r in ms.items()}
        ratio = {i: f["floor_ms"] / ms[i] if ms[i] else None for i in ("baseline", "pyro")}
        gap = ms["project compiled"] - f["floor_ms"] if ms["project compiled"] else None
        lines.append(
            f"| {f['layers']} | {f['k']} | {f['gemm_ms']:.2f} | {f['adam_ms']:.2f} | {f['floor_ms']:.2f} | "
            f"{_fmt(ms['project'])} | {_fmt(ms['project compiled'])} | {_fmt(ms['baseline'])} | {_fmt(ms['pyro'])} | "
            f"{_fmt(ratio['baseline'])} | {_fmt(ratio['pyro'])} | {_fmt(gap)} |"
        )
    return lines


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def train_table(rows: list[dict]) -> list[str]:
    lines = [
        "| device | layers | k | bound | implementation | ms/step | examples/s | GFLOP/s | x project |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['device']} | {r['layers']} | {r['k']} | {r['kind']} | {r['impl']} | {_fmt(r['ms_per_step'])} | "
            f"{_fmt(r['examples_per_s'], 0)} | {_fmt(r.get('gflops'), 0)} | {_fmt(r.get('vs_project'))} |"
        )
    return lines


def _meta_lines(result: dict) -> list[str]:
    """The title and the bullet list: command, date, machine, versions, load, matmul ceiling."""
    meta = result["meta"]
    return [
        "# iwae benchmark",
        "",
        f"- command: `{meta.get('command', 'python -m benchmarks.bench')}`",
        f"- date: {meta['date']}",
        f"- machine: {meta['cpu']}, {meta['cores']} cores, torch threads {meta['torch_threads']}, "
        f"ATen CPU capability {meta['cpu_capability']}" + (f", GPU {meta['gpu']}" if meta["gpu"] else ", no GPU"),
        f"- versions: torch {meta['torch']}, numpy {meta['numpy']}, Python {meta['python']}, "
        f"pyro-ppl {meta.get('pyro') or 'not installed'}; code {code_text(meta)}",
        f"- load average (1, 5, 15 min) before: {meta['load_before']}, after: {meta.get('load_after')}",
        *([f"- note: {meta['note']}"] if meta.get("note") else []),
        f"- float32 matmul ceiling: {result['ceiling']['gflops']:.0f} GFLOP/s (best of "
        + ", ".join(f"{s}: {g:.0f}" for s, g in result["ceiling"]["per_shape_gflops"].items())
        + ")",
    ]


def _likelihood_lines(result: dict) -> list[str]:
    """The L_k throughput table, then the peak-memory table when memory was measured."""
    lines = [
        "## Log-likelihood L_k (iwae.log_likelihood)",
        "",
        "| layers | k | images timed | images/s | samples/s | GFLOP/s | 10,000 test images (s, extrapolated) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["log_likelihood"]:
        lines.append(
            f"| {r['layers']} | {r['k']} | {r['images_timed']} | {r['images_per_s']:.1f} | {r['samples_per_s']:.0f} | "
            f"{r['gflops']:.0f} | {r['extrapolated_seconds']:.0f} |"
        )
    if result["memory"]:
        lines += ["", "Peak memory: " + result["memory"][0]["method"] + ".", ""]
        lines += ["| layers | k | images | added peak (MiB) | process peak (MiB) |", "|---|---|---|---|---|"]
        for m in result["memory"]:
            added, total = m["added_peak_mib"], m["process_peak_mib"]
            lines.append(f"| {m['layers']} | {m['k']} | {m['images']} | {added:.0f} | {total:.0f} |")
    return lines


def _targets_and_cuda_lines(result: dict) -> list[str]:
    """The speed targets met or not, then the CUDA section (or why there is none)."""
    lines = ["", "## Targets", "", "| target | measure | value | threshold | met |", "|---|---|---|---|---|"]
    for t in result["targets"]:
        met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['measure']} | {_fmt(t['value'])} | {t['threshold']} | {met} |")
    cuda = result.get("cuda")
    if cuda:
        epoch = cuda["epoch"]
        lines += ["", "## CUDA", "", *train_table(cuda["train"]), ""]
        lines.append(
            f"MNIST pass (60,000 images, batch 20), {epoch['layers']} layers, IWAE k={epoch['k']}: "
            f"{epoch['seconds_per_pass']:.2f} s (CUDA graph: {epoch['cuda_graph']}, {epoch['device']})."
        )
    else:
        lines += ["", "## CUDA", "", "No GPU in this run: the CUDA section (benchmarks/gpu.py) did not run."]
    return lines


def markdown(result: dict) -> str:
    """The whole report as markdown: machine, training step, floor, L_k, memory, targets, CUDA."""
    lines = [
        *_meta_lines(result),
        "",
        "## Training step, batch 20",
        "",
        "Median over interleaved repeats. GFLOP/s counts the minimum matmul FLOPs of a step: q(h1|x) once per "
        "example, every other conditional once per sample, backward twice forward. `x project` is the row's step "
        "time over the project's (reparam) step time.",
        "",
        *train_table(result["train"]),
        "",
        "## What the hardware allows: the floor of a step",
        "",
        "The floor is the step's GEMMs alone at their exact shapes (forward with bias, weight and input gradients; "
        "q(h1|x) at batch rows, every other layer at k x batch rows) plus one fused Adam update, timed back to back "
        "(`measure.step_floor`). No implementation that uses these GEMMs and Adam can step faster, so `floor / "
        "baseline` and `floor / pyro` are the smallest ratios any implementation could reach here; the last column is "
        "what the compiled step spends beyond the floor (elementwise work, noise, autograd, Python). IWAE rows.",
        "",
        *floor_table(result),
        "",
        *subnormal_lines(result),
        *_likelihood_lines(result),
        *_targets_and_cuda_lines(result),
    ]
    return "\n".join(lines) + "\n"


def write(result: dict, text: str, out: Path) -> None:
    """Write the JSON to ``out`` and the markdown beside it (same name, .md)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(text)


OUT_HELP = "JSON file to write (and .md beside it)"


def provenance(result: dict) -> list[str]:
    """The closing lines of a result's markdown: the command that wrote it, the machine and the date."""
    return [f"- Command: `{result['command']}`", f"- Machine: {result['machine']}; date {result['date']}.", ""]


def check_out(parser: argparse.ArgumentParser, out: Path | None) -> None:
    """Refuse, before any work, an ``--out`` whose folder does not exist or cannot be written."""
    if out is not None and not (out.parent.is_dir() and os.access(out.parent, os.W_OK)):
        parser.error(f"--out {out}: the folder {out.parent} does not exist or cannot be written; create it first")


def publish(result: dict, text: str, out: Path | None) -> None:
    """Print a result's markdown; with ``out``, write the JSON there and the markdown beside it, atomically."""
    print(text)
    if out:
        write_json(out, result)
        write_text(out.with_suffix(".md"), text)
