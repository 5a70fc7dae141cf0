"""The GPU device check: the CUDA code paths against their references, step and fleet timings, L_5000, and the
cost of the paper's protocol from those timings.

    bash benchmarks/device/run OUT                                     # on a GPU machine: benchmarks/device/README.md
    python -m benchmarks.device_check --out DIR --device cpu --quick   # the CPU smoke test of this script

Each section runs isolated (an exception is recorded with the tail of its traceback, and the next section runs) and
within a budget of seconds (what no longer fits is recorded as skipped; a global deadline caps them all);
``OUT/device_check.json`` and ``OUT/device_check.md`` are rewritten after every section, so a run cut short by a
time limit still leaves what it measured. Sections and settings: :data:`FULL`, :data:`QUICK`, :func:`_sections`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks import device_env
from benchmarks.device_report import brief, traceback_tail

NEEDS_CUDA = "skipped: needs CUDA"
QUICK_BUDGET_SCALE = 10  # the smoke test's section budgets, in multiples of the full check's

# Settings of the full check (a GPU, about 4 minutes) and of the CPU smoke test (--quick).
FULL: dict[str, Any] = {
    "fleet": {"runs": 3, "layers": 2, "k": 5, "batch": 20, "steps": 20},
    "ll": {"images": 200, "k": 500},
    "compiled": {"layers": 2, "k": 50, "steps": 6, "calls": 100, "repeats": 3},
    "compiled_extra": {"layers": 1, "k": 1, "steps": 6, "calls": 200, "repeats": 3},
    "resume": {"pass_scale": 0.1, "k": 5},
    "steps": {"layers": (1, 2), "ks": (1, 5, 50), "calls": 200, "repeats": 3, "warmup": 10},
    "fleets": {
        "configs": ((2, 50), (1, 1)),
        "Ms": (1, 8, 32, 64),
        "modes": ("graph", "stacked"),
        "steps": 40,
        "repeats": 3,
        "warmup": 3,
        "images": 4000,
    },
    "ll5000": {"k": 5000, "images": 10_000, "probe": 500, "chunks": (2048, 65536)},
    "protocol": {"measure": True},
}
QUICK: dict[str, Any] = {
    "fleet": {"runs": 2, "layers": 2, "k": 3, "batch": 10, "steps": 4},
    "ll": {"images": 20, "k": 50},
    "compiled": FULL["compiled"],
    "compiled_extra": FULL["compiled_extra"],
    "resume": {"pass_scale": 0.02, "k": 3},
    "steps": {"layers": (1, 2), "ks": (1, 5), "calls": 3, "repeats": 1, "warmup": 1},
    "fleets": {
        "configs": ((1, 1),),
        "Ms": (1, 2),
        "modes": ("graph", "stacked"),
        "steps": 3,
        "repeats": 1,
        "warmup": 1,
        "images": 200,
    },
    "ll5000": {"k": 20, "images": 100, "probe": 50, "chunks": (2048,)},
    "protocol": {"measure": False},
}


class Skip(Exception):
    """Ends a section early as skipped, with the reason."""


class _Terminated(BaseException):
    """SIGTERM (the time limit of ``timeout``): record where it struck, then stop."""


@dataclass
class Context:
    """What every section reads: the device, the settings, the data and the results so far."""

    device: Any  # torch.device
    quick: bool
    settings: dict[str, Any]
    data_dir: Path
    out: Path
    env: dict[str, str]
    results: dict[str, Any]
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


class Section:
    """One section's record, its budget and its helpers: checks, rows of timings, values, skipped items."""

    def __init__(self, name: str, budget_s: float, deadline: float) -> None:
        self.name, self.start = name, time.monotonic()
        self.end = min(self.start + budget_s, deadline)
        self.record: dict[str, Any] = {"status": "running", "budget_s": round(budget_s, 1), "values": {}}
        self.record |= {key: [] for key in ("checks", "rows", "skipped", "errors")}

    def left(self) -> float:
        return self.end - time.monotonic()

    def fits(self, what: str, seconds: float = 0.0) -> bool:
        """Whether ``what`` (about ``seconds``) fits in what is left of the budget; recorded as skipped if not."""
        if self.left() >= seconds:
            return True
        self.skip(what, f"skipped: the section's budget ({self.record['budget_s']} s) is spent")
        return False

    def skip(self, what: str, why: str) -> None:
        self.record["skipped"].append({"what": what, "why": why})

    def check(self, name: str, ok: bool, **info: Any) -> None:
        self.record["checks"].append({"name": name, "ok": bool(ok), **info})
        print(f"  [{'ok' if ok else 'FAILED'}] {name} {brief(info)}", flush=True)

    def row(self, **row: Any) -> None:
        self.record["rows"].append(row)
        print(f"  {brief(row)}", flush=True)

    def attempt(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, or None with the error recorded (the section goes on)."""
        try:
            return fn()
        except Exception as err:
            self.record["errors"].append(
                {"what": what, "error": f"{type(err).__name__}: {err}", "traceback": traceback_tail()}
            )
            print(f"  [ERROR] {what}: {type(err).__name__}: {err}", flush=True)
            return None


def _status(record: dict[str, Any]) -> str:
    if any(not c["ok"] for c in record["checks"]):
        return "failed"
    if record["errors"]:
        return "partial"
    if record["skipped"] and not (record["checks"] or record["rows"] or record["values"]):
        return "skipped"
    return "ok"


def run_section(
    name: str,
    fn: Callable[[Section, Context], None],
    budget: float,
    ctx: Context,
    deadline: float,
    needs: tuple[str, ...],
) -> dict[str, Any]:
    """One section, isolated and time-guarded; its record (in ``ctx.results`` from the start)."""
    sec = Section(name, budget, deadline)
    ctx.results["sections"][name] = sec.record
    print(f"== {name} (budget {sec.left():.0f} s)", flush=True)
    absent = device_env.missing(ctx.env, tuple(n for n in needs if n != "cuda"))
    try:
        if "cuda" in needs and not ctx.cuda:
            raise Skip(NEEDS_CUDA)
        if absent:
            raise Skip(f"skipped: missing Python package {', '.join(absent)} (install it, or carry it: README)")
        if sec.left() <= 0:
            raise Skip("skipped: the check's deadline has passed")
        fn(sec, ctx)
        sec.record["status"] = _status(sec.record)
    except Skip as why:
        sec.record["status"], sec.record["reason"] = "skipped", str(why)
        print(f"  {why}", flush=True)
    except _Terminated:
        sec.record.update(status="error", error="terminated (the time limit of the run)")
        raise
    except Exception as err:
        sec.record.update(status="error", error=f"{type(err).__name__}: {err}", traceback=traceback_tail())
        print(f"  [ERROR] {type(err).__name__}: {err}", flush=True)
    finally:
        sec.record["seconds"] = round(time.monotonic() - sec.start, 2)
    return sec.record


def _sections() -> list[tuple[str, Callable[[Section, Context], None], float, tuple[str, ...]]]:
    """(name, function, budget in seconds of the full check, what it needs), in the order they run."""
    from benchmarks import device_correct, device_protocol, device_resume, device_timing

    data = ("numpy", "tqdm", "safetensors")
    return [
        ("fleet_correctness", device_correct.fleet_section, 25, ()),
        # second: a first compile on a bare machine takes 30-90 s, which the sections after it can spare
        ("compiled_correctness", device_correct.compiled_section, 60, ("cuda",)),
        ("log_likelihood_correctness", device_correct.ll_section, 15, ("tqdm",)),
        ("resume_correctness", device_resume.resume_section, 50, data),
        ("step_times", device_timing.steps_section, 25, ()),
        ("fleet_times", device_timing.fleets_section, 40, ()),
        ("protocol", device_protocol.protocol_section, 20, ()),
        ("epoch_time", device_timing.epoch_section, 12, ("cuda",)),
        ("ll5000_time", device_timing.ll5000_section, 25, ("tqdm",)),
        ("compiled_extra", device_correct.compiled_extra_section, 60, ("cuda",)),
    ]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for device_check.json and device_check.md")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (with --quick: the smoke test)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs, measures nothing")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data directory holding mnist/ (default $IWAE_DATA_DIR, else device-data)",
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds from the start after which no section starts (default 230; --quick 900)",
    )
    p.add_argument("--only", nargs="+", default=None, help="run only these sections (names as in the JSON)")
    return p


def _on_term(signum: int, frame: Any) -> None:
    raise _Terminated()


def _preflight(env: dict[str, str], data_dir: Path, quick: bool) -> bool:
    """Say first what is missing: packages (the sections that need them are skipped) and the data. Without the data
    the full check stops here, before the GPU is touched (its resume section, the only test of a fleet of CUDA
    graphs in training, needs MNIST); the CPU smoke test goes on without them. Whether the check may go on."""
    lacking = device_env.missing(env, tuple(device_env.NEEDED))
    if lacking:
        print(f"device_check: MISSING Python packages {', '.join(lacking)}: the sections that need them are skipped "
              "(see benchmarks/device/README.md)", file=sys.stderr)  # fmt: skip
    if not (data_dir / "mnist").is_dir():
        if not quick:
            print(f"device_check: no {data_dir / 'mnist'}: run `bash benchmarks/device/prepare DATA_DIR` first (it "
                  "copies MNIST into device-data/), then carry device-data; stopped before touching the GPU",
                  file=sys.stderr)  # fmt: skip
            return False
        print(f"device_check: no {data_dir / 'mnist'}: the sections that read MNIST use synthetic images or are "
              "skipped (run benchmarks/device/prepare first)", file=sys.stderr)  # fmt: skip
    return True


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    start = time.monotonic()
    env = device_env.setup()
    try:
        import torch
    except ImportError as err:
        print(f"device_check: PyTorch cannot be imported ({err}); the check needs PyTorch >= 2.4", file=sys.stderr)
        return 2
    from benchmarks import device_report

    if tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 4):
        print(f"device_check: torch {torch.__version__} is older than 2.4, which the check assumes", file=sys.stderr)

    data_dir = (args.data_dir or Path(os.environ.get("IWAE_DATA_DIR") or device_env.ROOT / "device-data")).resolve()
    if not _preflight(env, data_dir, args.quick):
        return 3
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"device_check: {args.device} requested but torch {torch.__version__} sees no GPU "
            "(torch.cuda.is_available() is False); use --device cpu --quick for the smoke test",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"meta": {}, "sections": {}}
    ctx = Context(device, args.quick, QUICK if args.quick else FULL, data_dir, args.out, env, results)
    results["meta"] = device_report.meta(ctx, argv)
    deadline = start + (args.deadline or (900 if args.quick else 230))
    signal.signal(signal.SIGTERM, _on_term)
    try:
        for name, fn, budget, needs in _sections():
            if args.only and name not in args.only:
                continue
            # The smoke test checks that every section runs, not how fast: on a loaded CPU its sections take
            # many times their GPU budgets, so it gives them ten times as long (within its 900 s deadline).
            run_section(name, fn, budget * (QUICK_BUDGET_SCALE if args.quick else 1), ctx, deadline, needs)
            device_report.write(args.out, results)
    except _Terminated:
        device_report.write(args.out, results)
        return 124
    results["meta"]["seconds"] = round(time.monotonic() - start, 1)
    device_report.write(args.out, results)
    bad = [n for n, r in results["sections"].items() if r["status"] in ("failed", "error", "partial")]
    print(
        f"device_check: {len(results['sections'])} sections in {results['meta']['seconds']} s; "
        + (f"NOT OK: {', '.join(bad)}" if bad else "no failure")
        + f"; results in {args.out}"
    )
    return 1 if bad else 0


if __name__ == "__main__":  # run this module's main as benchmarks.device_check, the module the sections import
    from benchmarks.device_check import main as _main

    sys.exit(_main())
