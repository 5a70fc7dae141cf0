"""Code of one's own named by ``MODULE:NAME`` (a model's builder, a bound, an estimator): the name's form, the import,
and where the module lies.

A run folder records such names in its ``config.json`` and holds no code: the module comes from the import path
wherever the run trains, resumes and is scored, never from inside a folder one loads (:func:`lies_inside`).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["SPEC", "OwnCodeError", "is_spec", "import_named", "lies_inside"]

SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class OwnCodeError(ValueError):
    """What a ``MODULE:NAME`` names cannot be used: its module does not import, it has no such name, or it is not
    what the name must name."""


def is_spec(value: object) -> bool:
    """Whether ``value`` is a ``MODULE:NAME`` (dotted module, dotted name: a class's attribute)."""
    return isinstance(value, str) and SPEC.fullmatch(value) is not None


def import_named(spec: str, what: str) -> Any:
    """The object ``MODULE:NAME`` names, imported from the import path.

    :param what: how messages name it ("model", "bound", ...).
    :raises OwnCodeError: the module does not import (naming the import that failed, or where to put the module),
        or it has no such name.
    """
    module_name, _, name = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        missing = getattr(err, "name", None)
        where = (f": its import of {missing!r} failed ({err}); install that" if missing and missing !=
                 module_name.split(".")[0] else f" ({type(err).__name__}: {err}); put the folder that holds it on "
                 "PYTHONPATH (`PYTHONPATH=. iwae ...`, or `python -m iwae ...` from that folder), or install it"
                 )  # fmt: skip
        raise OwnCodeError(f"{what} {spec}: cannot import {module_name!r}{where}") from None
    for part in name.split("."):
        if not hasattr(target, part):
            raise OwnCodeError(f"{what} {spec}: {module_name} has no {name!r}")
        target = getattr(target, part)
    return target


def lies_inside(spec: str, folder: str | Path) -> bool:
    """Whether the module of ``spec``, or a package on its dotted path, could be imported from inside ``folder``:
    found there by any entry of the import path (``sys.path``; the working folder for its empty entry), or being
    already imported from there. Decided without importing anything, so conservatively: a folder that holds a module
    or package of such a name is refused whichever entry the import would take first (a namespace folder, where no
    entry holds a module of that name)."""
    inside = Path(folder).resolve()
    parts = spec.partition(":")[0].split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        module = sys.modules.get(name)
        where = [getattr(module, "__file__", None), *list(getattr(module, "__path__", None) or [])]
        if any(w and Path(w).resolve().is_relative_to(inside) for w in where):
            return True
    for i in range(1, len(parts) + 1):  # each package on the dotted path, then the module, on every entry
        found = [_found(Path(entry or os.getcwd()).resolve().joinpath(*parts[:i])) for entry in sys.path]
        modules = [p for kind, p in found if kind == "module"]
        # (a folder without __init__.py is a namespace package only where no entry holds a module of that name)
        places = modules or [p for kind, p in found if kind == "namespace"]
        if any(p.resolve().is_relative_to(inside) for p in places):
            return True
    return False


def _found(stem: Path) -> tuple[str, Path]:
    """What the import system finds for ``stem`` (a path entry joined with a dotted name's parts): a "module" (a
    package with ``__init__``, or a file of a module suffix), a "namespace" folder, or "none"."""
    if (stem / "__init__.py").is_file() or any((stem / f"__init__{s}").is_file() for s in _SUFFIXES):
        return "module", stem
    for suffix in _SUFFIXES:
        if (file := stem.parent / (stem.name + suffix)).is_file():
            return "module", file
    return ("namespace", stem) if stem.is_dir() else ("none", stem)


_SUFFIXES = tuple(importlib.machinery.all_suffixes())
