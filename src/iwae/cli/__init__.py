"""The command line: `iwae` and its commands (argparse front ends over the layers below)."""

from iwae.cli.commands import main

__all__ = ["main"]
