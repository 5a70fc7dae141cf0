"""The GPU device check (benchmarks/device/): its CPU smoke mode runs every section and passes what a CPU can
check; `prepare` copies and checks the MNIST files; missing packages that the check never uses get stand-ins."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA_DIR

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {
    "fleet_correctness", "log_likelihood_correctness", "resume_correctness", "step_times", "fleet_times",
    "protocol", "epoch_time", "ll5000_time", "compiled_correctness", "compiled_extra",
}  # fmt: skip
CUDA_ONLY = {"epoch_time", "compiled_correctness", "compiled_extra"}


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH")) if p)
    return env


@pytest.mark.slow  # every section of the device check in a process of its own: 15-40 s, more on a loaded machine
def test_quick_cpu_mode_runs_every_section_and_passes_the_cpu_checks(tmp_path):
    data = DATA_DIR or str(tmp_path / "no-data")  # without data the resume section is skipped, not failed
    cmd = [sys.executable, "-m", "benchmarks.device_check", "--out", str(tmp_path), "--device", "cpu", "--quick",
           "--data-dir", data]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "device_check.json").read_text())
    sections = results["sections"]
    assert set(sections) == SECTIONS
    assert results["meta"]["quick"] and results["meta"]["torch"] and results["meta"]["packages"]
    skipped = CUDA_ONLY | (set() if DATA_DIR else {"resume_correctness"})
    for name, s in sections.items():
        assert {"status", "checks", "rows", "values", "skipped", "errors", "seconds", "budget_s"} <= set(s), name
        assert s["status"] == ("skipped" if name in skipped else "ok"), (name, s)
        assert all(c["ok"] for c in s["checks"]), (name, s["checks"])
    for name in CUDA_ONLY:
        assert sections[name]["reason"].startswith("skipped: needs CUDA")
    names = [c["name"] for c in sections["fleet_correctness"]["checks"]]
    assert any("float32" in n for n in names) and any("float64" in n for n in names)
    assert any("needs CUDA" in k["why"] for k in sections["fleet_correctness"]["skipped"])  # the graph fleet
    assert len(sections["log_likelihood_correctness"]["checks"]) == 3  # L_k, k-hat (same noise), L_k (own streams)
    if DATA_DIR:
        resume = sections["resume_correctness"]
        assert resume["values"]["kill"]["killed"], resume
        assert len(resume["checks"]) == 3 and resume["checks"][0]["bitwise"]
    assert sections["step_times"]["rows"] and sections["fleet_times"]["rows"] and sections["ll5000_time"]["rows"]
    protocol = sections["protocol"]["values"]
    assert protocol["runs"] == 32 and protocol["sequential_hours"] > 0
    assert results["summary"]["tables_1_3"]["runs"] == 32
    report = (tmp_path / "device_check.md").read_text()
    assert report.startswith("# Device check: cpu (no GPU)") and "## Summary" in report and "QUICK MODE" in report


def _idx(count: int) -> bytes:
    return bytes([0, 0, 8, 3]) + count.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(784 * count)


def _prepare(src: Path, dest: Path) -> subprocess.CompletedProcess:
    cmd = ["bash", str(ROOT / "benchmarks" / "device" / "prepare"), str(src), str(dest)]
    return subprocess.run(cmd, cwd=ROOT, env=_env(PYTHON=sys.executable), capture_output=True, text=True, timeout=60)


def test_prepare_copies_the_mnist_files_and_the_packages(tmp_path):
    src = tmp_path / "data"
    (src / "mnist").mkdir(parents=True)  # fake files of the real sizes: 60,000 and 10,000 blank images (57 kB)
    (src / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(60_000)))
    (src / "mnist" / "t10k-images-idx3-ubyte").write_bytes(_idx(10_000))  # the uncompressed form is taken too
    (src / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(b"not needed")
    done = _prepare(src, tmp_path / "dest")
    assert done.returncode == 0, done.stderr
    copied = sorted(p.name for p in (tmp_path / "dest" / "mnist").iterdir())
    assert copied == ["t10k-images-idx3-ubyte", "train-images-idx3-ubyte.gz"]
    for name in copied:
        assert (tmp_path / "dest" / "mnist" / name).read_bytes() == (src / "mnist" / name).read_bytes()
    assert (tmp_path / "dest" / "pylib" / "tqdm" / "__init__.py").exists()
    assert (tmp_path / "dest" / "pylib" / "safetensors" / "__init__.py").exists()
    assert _prepare(src, tmp_path / "dest").returncode == 0  # again, over its own copies


@pytest.mark.parametrize("count,why", [(59_999, "holds 59999 images"), (0, "not an idx image file")])
def test_prepare_refuses_a_wrong_mnist_file(tmp_path, count, why):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(count) if count else b"x"))
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(10_000)))
    done = _prepare(tmp_path, tmp_path / "dest")
    assert done.returncode == 1 and why in done.stderr, done.stderr


def test_missing_packages_the_check_never_uses_get_stand_ins(tmp_path):
    """A machine without matplotlib, scipy, Pillow or pooch: iwae's training and command line still import, and
    anything of a stand-in raises ImportError when used."""
    hide = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in {'matplotlib', 'scipy', 'PIL', 'pooch'}:\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    (tmp_path / "sitecustomize.py").write_text(hide)
    code = (
        "from benchmarks import device_env\n"
        "report = device_env.setup()\n"
        "assert all(report[n].startswith('stand-in') for n in device_env.STAND_INS), report\n"
        "import iwae.runs.train, iwae.fleets.fleet_train, iwae.cli, iwae.plots\n"
        "from matplotlib.figure import Figure\n"
        "try:\n"
        "    Figure()\n"
        "except ImportError as err:\n"
        "    print('refused:', err)\n"
    )
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join((str(tmp_path), env["PYTHONPATH"]))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "refused: matplotlib.figure.Figure is not installed" in done.stdout


def test_the_full_check_without_data_stops_before_the_gpu_naming_prepare(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.device_check", "--out", str(tmp_path / "out"), "--device", "cpu",
           "--data-dir", str(tmp_path / "no-data")]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and "run `bash benchmarks/device/prepare DATA_DIR` first" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing ran


def test_the_compile_check_runs_second_while_the_budget_is_whole():
    sys.path.insert(0, str(ROOT))
    from benchmarks.device_check import _sections

    assert [name for name, *_ in _sections()][:2] == ["fleet_correctness", "compiled_correctness"]


def test_run_unsets_the_tf32_overrides_of_nvidia_images(tmp_path):
    fake = tmp_path / "python"  # stands in for the interpreter: reports what it was started with
    fake.write_text(
        '#!/bin/sh\necho "override=${TORCH_ALLOW_TF32_CUBLAS_OVERRIDE:-unset} ${NVIDIA_TF32_OVERRIDE:-unset}"\n'
    )
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), TORCH_ALLOW_TF32_CUBLAS_OVERRIDE="1", NVIDIA_TF32_OVERRIDE="1")
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "device" / "run"), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.stdout.count("override=unset unset") == 2, done.stdout


def test_the_one_model_verdict_is_on_what_an_iwae_command_runs():
    sys.path.insert(0, str(ROOT))
    from benchmarks.device_protocol import one_model

    row = {"layers": 2, "k": 50}
    results = {"sections": {
        "step_times": {"rows": [{**row, "impl": "eager", "ms_per_step": 4.0}, {**row, "impl": "graphed",
                                                                             "ms_per_step": 1.0}]},
        "compiled_correctness": {"rows": [{**row, "impl": "compiled", "ms_per_step": 3.0}]},
        "epoch_time": {"values": {"seconds_per_pass": 2.5}},
    }}  # fmt: skip
    verdict = one_model(results)
    assert verdict["best"] == "compiled step" and verdict["best_command"] == "iwae train --device cuda --compile"
    assert verdict["best_seconds"] == pytest.approx(9.0) and verdict["fastest_measured"].startswith("graphed pass")
