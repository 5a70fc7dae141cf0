"""Code of one's own named by ``MODULE:NAME`` (a model's builder, a bound, an estimator): the name's form, the import,
and where the module lies.

A run folder records such names in its ``config.json`` and holds no code: the module comes from the import path
wherever the run trains, resumes and is scored, never from inside a folder one loads (:func:`lies_inside`).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
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
        where = (f"its import of {missing!r} failed ({err}): install that" if missing and missing !=
                 module_name.split(".")[0] else f"({type(err).__name__}: {err}); put the folder that holds it on "
                 "PYTHONPATH (`PYTHONPATH=. iwae ...`, or `python -m iwae ...` from that folder), or install it"
                 )  # fmt: skip
        raise OwnCodeError(f"{what} {spec}: cannot import {module_name!r} {where}") from None
    for part in name.split("."):
        if not hasattr(target, part):
            raise OwnCodeError(f"{what} {spec}: {module_name} has no {name!r}")
        target = getattr(target, part)
    return target


def lies_inside(spec: str, folder: str | Path) -> bool:
    """Whether the module of ``spec`` would be imported from inside ``folder`` (found there on the import path),
    without importing it."""
    top = spec.partition(":")[0].split(".")[0]
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False  # (the import itself will say)
    if found is None:
        return False
    places = [found.origin] if found.origin else []
    places += list(found.submodule_search_locations or [])
    inside = Path(folder).resolve()
    return any(Path(p).resolve().is_relative_to(inside) for p in places if p not in ("built-in", "frozen"))
