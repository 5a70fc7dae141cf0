"""The device check's output: the machine it ran on, and its results as JSON and as a Markdown report."""

from __future__ import annotations

import json
import os
import platform
import shlex
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.device_check import Context

_SKIP_KEYS = {"name", "ok"}


def brief(info: dict[str, Any]) -> str:
    """``key=value ...`` on one line, for the console."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())


def traceback_tail(lines: int = 12) -> str:
    """The last lines of the traceback of the exception being handled."""
    return "".join(traceback.format_exc().splitlines(keepends=True)[-lines:])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    """A Markdown table of ``rows``, one column per key (in first-seen order)."""
    if not rows:
        return []
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(_fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return out + [""]


def _summary(results: dict[str, Any]) -> list[str]:
    sections = results["sections"]
    checks = [c for s in sections.values() for c in s["checks"]]
    failed = [c["name"] for c in checks if not c["ok"]]
    lines = [
        "## Summary",
        "",
        f"- Correctness: {len(checks) - len(failed)} of {len(checks)} checks passed"
        + (f"; FAILED: {'; '.join(failed)}" if failed else "")
        + ".",
    ]
    bad = [f"{n} ({s['status']})" for n, s in sections.items() if s["status"] in ("error", "partial")]
    if bad:
        lines.append(f"- Sections with errors: {', '.join(bad)} (details below).")
    protocol = results.get("summary", {}).get("tables_1_3", {})
    one = results.get("summary", {}).get("one_model_2L_k50", {})
    if one.get("best"):
        verdict = "meets" if one["meets_target"] else "misses"
        lines.append(
            f"- One model, 2-layer IWAE k=50, as `{one['best_command']}` runs it: {one['best_seconds']:.2f} s per "
            f"MNIST pass of 3,000 steps ({one['best']}); {verdict} the target of {one['target_s']} s. Every way "
            f"measured (the others run by no command): "
            + ", ".join(f"{k} {v:.2f} s" for k, v in one["seconds_per_pass"].items())
            + "."
        )
    if protocol.get("sequential_hours"):
        verdict = "meets" if protocol["meets_target"] else "misses"
        lines.append(
            f"- Tables 1-3 ({protocol['runs']} runs in {protocol['units']} fleets or single runs, one after "
            f"another, fleet mode {protocol['fleet_mode']}): {protocol['sequential_hours']:.1f} hours; "
            f"{verdict} the target of {protocol['target_hours']:g} hours. At the best measured throughput "
            f"of each configuration (a GPU kept as busy as the largest fleet timed): "
            f"{protocol['saturated_hours']:.1f} hours."
        )
    return lines + [""]


def _section(name: str, s: dict[str, Any]) -> list[str]:
    head = f"## {name}: {s['status']} ({s.get('seconds', 0):.0f} s of {s['budget_s']:g} s)"
    lines = [head, ""]
    if s.get("reason"):
        lines += [s["reason"], ""]
    if s.get("error"):
        lines += [f"Error: `{s['error']}`", "", "```", s.get("traceback", "").rstrip(), "```", ""]
    for key, value in s["values"].items():
        lines.append(f"- {key}: {_fmt(value)}")
    if s["values"]:
        lines.append("")
    checks = [
        {
            "check": c["name"],
            "ok": "yes" if c["ok"] else "**NO**",
            "details": "; ".join(f"{k} {_fmt(v)}" for k, v in c.items() if k not in _SKIP_KEYS),
        }
        for c in s["checks"]
    ]
    lines += _table(checks) + _table(s["rows"])
    lines += [f"- skipped {k['what']}: {k['why'].removeprefix('skipped: ')}" for k in s["skipped"]]
    lines += [f"- error in {e['what']}: `{e['error']}`" for e in s["errors"]]
    return lines + ([""] if s["skipped"] or s["errors"] else [])


def markdown(results: dict[str, Any]) -> str:
    """The report: the machine, the summary, then every section's checks, timings, skipped items and errors."""
    meta = results["meta"]
    title = meta.get("gpu") or f"{meta.get('device', '?')} (no GPU)"
    lines = [
        f"# Device check: {title}",
        "",
        f"torch {meta.get('torch')}, CUDA {meta.get('cuda')}, Python {meta.get('python')}, {meta.get('cpus')} "
        f"CPUs, {meta.get('platform')}; started {meta.get('started')}"
        + (f", {meta['seconds']} s" if "seconds" in meta else " (not finished)")
        + (". QUICK MODE: tiny sizes, the numbers measure nothing." if meta.get("quick") else "."),
        "",
        f"Command: `{meta.get('command')}`; data: `{meta.get('data_dir')}`; TF32 matmuls: {meta.get('tf32_matmul')}, "
        f"cuDNN TF32: {meta.get('tf32_cudnn')}, float32 matmul precision: {meta.get('float32_matmul_precision')}, "
        f"override variables: {meta.get('tf32_overrides')}.",
        "",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in meta.get("packages", {}).items()),
        "",
    ]
    lines += _summary(results)
    for name, s in results["sections"].items():
        lines += _section(name, s)
    return "\n".join(lines).rstrip() + "\n"


def meta(ctx: Context, argv: list[str]) -> dict[str, Any]:
    """The machine, the software and the run's settings."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "device": str(ctx.device),
        "gpu": torch.cuda.get_device_name(ctx.device) if ctx.cuda else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(ctx.device).total_memory / 2**30, 1)
        if ctx.cuda
        else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "tf32_overrides": {k: os.environ.get(k) for k in ("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "NVIDIA_TF32_OVERRIDE")},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "quick": ctx.quick,
        "data_dir": str(ctx.data_dir),
        "packages": ctx.env,
        "command": "python -m benchmarks.device_check " + shlex.join(argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def write(out: Path, results: dict[str, Any]) -> None:
    """``device_check.json`` and ``device_check.md`` in ``out`` (with the summary of the results so far), each
    replaced whole, never half written."""
    from benchmarks import device_protocol

    results["summary"] = device_protocol.summary(results)

    for name, text in (
        ("device_check.json", json.dumps(results, indent=2, default=str)),
        ("device_check.md", markdown(results)),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text + "\n")
        os.replace(tmp, out / name)
