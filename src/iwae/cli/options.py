"""``iwae train``'s options, generated from :class:`~iwae.runs.config.TrainConfig`'s fields: one flag per field with
its parser, choices, help and default; the config of a command line; the table of the options in the command-line
guide, docs/cli.md (``python -m iwae.cli.options`` prints it).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from iwae.runs.config import TrainConfig, choice_or_own, read_config_file

__all__ = ["add_config_options", "overrides_from_args", "options_table", "config_from_args"]


def cli_fields(names: Iterable[str] | None = None) -> list[dataclasses.Field]:
    """The config fields offered on the command line (all of them, or those named, in declaration order)."""
    wanted = None if names is None else set(names)
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata["cli"] and (wanted is None or f.name in wanted)]


RECORDED = " (default: the run's, from its config.json)"  # what `iwae resume` keeps of a setting not given


def add_config_options(
    parser: argparse.ArgumentParser, names: Iterable[str] | None = None, *, recorded: bool = False
) -> None:
    """One option per config field (or per named field): flag, parser, choices, help and default from the field.

    Options default to "not given" (``argparse.SUPPRESS``), so :func:`overrides_from_args` sees only the flags
    typed on the command line; ``--help`` shows the config's default, or with ``recorded`` (``iwae resume``) that
    the run's own recorded value is kept.
    """
    for f in cli_fields(names):
        meta = f.metadata
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "" if default is None or isinstance(default, bool) else f" (default {default})"
        text = meta["help"] + shown
        if recorded:  # the field's own defaults do not apply: the run keeps what its config.json holds
            text = (
                re.sub(r" \((default|auto)\b[^)]*\)", "", meta["help"]) + " (default: the run's, from its config.json)"
            )
        text += "".join(f" ({alias}: its former name)" for alias in meta["aliases"])
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": text}
        if isinstance(default, bool):  # a default-on flag also gets its --no- form: --eval, --no-eval
            kwargs["action"] = argparse.BooleanOptionalAction if default else "store_true"
        else:
            kwargs.update(type=meta["type"] or str, metavar=meta["metavar"])
            if meta["own"]:  # a choice, or code of one's own
                kwargs["type"] = choice_or_own(meta["choices"], meta["own"])
                kwargs["metavar"] = "{" + ",".join(meta["choices"]) + ",MODULE:NAME}"
            elif meta["choices"]:
                kwargs["choices"] = meta["choices"]
                kwargs["metavar"] = meta["metavar"] or "{" + ",".join(map(str, meta["choices"])) + "}"
        if meta["aliases"] and "action" not in kwargs:
            kwargs.update(action=_FormerNames, former=meta["aliases"])
        parser.add_argument(flag, *meta["aliases"], **kwargs)


class _FormerNames(argparse.Action):
    """Stores the value; given under a former name of the option (``--objective`` for ``--bound``), says so."""

    def __init__(self, *args: Any, former: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.former = former

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        if option_string in self.former:
            name = self.option_strings[0]
            warnings.warn(f"{option_string} is the former name of {name}; write {name}", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


def overrides_from_args(args: argparse.Namespace, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The config values given as flags (only those typed on the command line)."""
    return {f.name: getattr(args, f.name) for f in cli_fields(names) if hasattr(args, f.name)}


def options_table() -> str:
    """The Markdown table of ``iwae train``'s config options (docs/cli.md holds it between ``options`` markers)."""
    rows = ["| option | default | meaning |", "| --- | --- | --- |"]
    for f in cli_fields():
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        default = "" if f.default is None or f.default is False else f"`{f.default}`"
        flags = f"`{flag}`, `--no-{flag[2:]}`" if f.default is True else f"`{flag}`"
        flags += "".join(f" (formerly `{alias}`)" for alias in f.metadata["aliases"])
        rows.append(f"| {flags} | {default} | {f.metadata['help']} |")
    return "\n".join(rows)


def config_from_args(args: argparse.Namespace, config_file: str | Path | None = None) -> TrainConfig:
    """Defaults, then ``config_file`` (JSON), then the flags given: the config of ``iwae train``."""
    values = read_config_file(config_file) if config_file else {}
    return TrainConfig.from_dict({**values, **overrides_from_args(args)})


if __name__ == "__main__":
    print(options_table())
