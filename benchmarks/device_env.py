"""The device check's Python environment: which packages the project imports are there, carried, or stood in for.

A GPU machine may have PyTorch and little else, and no network. :func:`setup` prepares the interpreter before
anything of ``iwae`` is imported:

* ``device-data/pylib`` (filled by ``benchmarks/device/prepare`` with pure-Python or abi3 packages: tqdm,
  safetensors) is appended to ``sys.path``, so the machine's own packages win and the carried ones only fill gaps;
* packages that ``iwae`` imports at module level but that the check never uses (pooch: downloads; scipy and
  Pillow: Omniglot and image files; matplotlib: figures) are replaced, where missing, by stand-ins that raise
  ImportError when anything of them is used;
* numpy (reading the data files), tqdm (progress bars of training and evaluation) and safetensors (checkpoints)
  cannot be stood in for: :func:`missing` names those absent, and the sections that need them are skipped.

``python -m benchmarks.device_env ARGS`` is the ``iwae`` command (``iwae ARGS``) in such an interpreter: the device
check trains and resumes runs through it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from pathlib import Path
from typing import Any

__all__ = ["PYLIB", "STAND_INS", "NEEDED", "setup", "missing"]

ROOT = Path(__file__).resolve().parents[1]
PYLIB = ROOT / "device-data" / "pylib"
STAND_INS = ("pooch", "scipy", "PIL", "matplotlib")  # imported by iwae, never used by the check
NEEDED = {"numpy": "reading the MNIST files", "tqdm": "training and evaluation", "safetensors": "checkpoints"}


class _Missing:
    """Stands for anything of a package that is not installed: calling it raises ImportError."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> _Missing:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Missing(f"{self._name}.{attr}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise ImportError(f"{self._name} is not installed here (a stand-in of the device check): pip install it")


class _StandInModule(types.ModuleType):
    def __getattr__(self, attr: str) -> _Missing:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Missing(f"{self.__name__}.{attr}")


class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds a stand-in module for every module of the named top-level packages."""

    def __init__(self, names: list[str]) -> None:
        self.names = set(names)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] not in self.names:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StandInModule(spec.name)
        module.__path__ = []  # a package: its submodules come from this finder too
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the stand-in is empty."""


def _describe(name: str) -> str:
    """The installed version of ``name`` (and where it comes from), or why it cannot be imported."""
    try:
        module = importlib.import_module(name)
    except Exception as err:  # a broken install counts as missing, whatever it raises
        return f"missing ({type(err).__name__}: {err})"
    version = getattr(module, "__version__", "?")
    carried = str(PYLIB) in str(getattr(module, "__file__", "") or "")
    return f"{version} (carried in device-data/pylib)" if carried else str(version)


def setup(pylib: Path = PYLIB) -> dict[str, str]:
    """Prepare this interpreter (see the module docstring); each package -> its version, 'stand-in' or 'missing'."""
    if pylib.is_dir() and str(pylib) not in sys.path:
        sys.path.append(str(pylib))
    report = {name: _describe(name) for name in (*NEEDED, *STAND_INS)}
    absent = [name for name in STAND_INS if report[name].startswith("missing")]
    if absent and not any(isinstance(f, _StandIns) for f in sys.meta_path):
        sys.meta_path.insert(0, _StandIns(absent))
        for name in absent:
            report[name] = "stand-in (not installed; the check does not use it)"
    return report


def missing(report: dict[str, str], names: tuple[str, ...]) -> list[str]:
    """Those of ``names`` that the report of :func:`setup` found missing."""
    return [name for name in names if report.get(name, "missing").startswith("missing")]


def main(argv: list[str]) -> int:
    """``iwae ARGS`` with the environment of :func:`setup`."""
    setup()
    from iwae.cli import main as iwae_main

    return iwae_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
