"""The command line: `iwae` and its commands (argparse front ends over the layers below)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """The ``iwae`` command (:func:`iwae.cli.commands.main`), imported when called, so that ``python -m
    iwae.cli.options`` runs its module without the package having imported it first."""
    try:
        from iwae.cli.commands import main as run
    except KeyboardInterrupt:  # (the imports take a moment on a cold start)
        print("iwae: interrupted while starting; nothing was done", file=sys.stderr)
        return 130
    return run(argv)
