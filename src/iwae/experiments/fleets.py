"""Packing a plan's runs into fleets (:mod:`iwae.fleets.fleet_train`): the units of work of ``iwae reproduce``.

Runs that can share a step (same architecture, sample count, estimator, batch size and schedule; any seed, data set
and, between the VAE and IWAE bounds, objective) are trained as one fleet, in one child process, with its manifest
in ``DIR/runs/fleets/``. ``auto`` packs on a GPU only: on a CPU a fleet is no faster than its runs one by one
(``benchmarks/results/fleet.md``), and single runs in parallel jobs use every core. A fleet interrupted earlier is
resumed as the fleet it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from iwae.experiments.plan import RunSpec
from iwae.runs.config import TrainConfig

__all__ = ["FLEETS_DIR", "MAX_FLEET", "PACKINGS", "Unit", "pack", "with_seeds"]

FLEETS_DIR = "fleets"  # DIR/runs/fleets/<unit>.json: the manifests of the reproduction's fleets
MAX_FLEET = 64  # runs per fleet at most
PACKINGS = ("auto", "stacked", "graph", "loop", "off")  # off: every run on its own; else the fleets' mode


@dataclass(frozen=True)
class Unit:
    """One child process's work: a single run (``manifest`` None) or a fleet of runs."""

    name: str
    specs: tuple[RunSpec, ...]
    manifest: Path | None = None
    members: tuple[str, ...] = ()  # every run of the fleet's manifest (some may be done already)

    @property
    def after(self) -> tuple[str, ...]:
        inside = {s.name for s in self.specs}
        return tuple(dict.fromkeys(d for s in self.specs for d in s.after if d not in inside))


def with_seeds(specs: list[RunSpec], seeds: list[int]) -> list[RunSpec]:
    """Each run once per seed, as ``<run>/seed-<S>``, its ``init_from`` and dependencies those of the same seed."""
    out = []
    for seed in seeds:
        for spec in specs:
            source = spec.config.init_from
            config = spec.config.replace(seed=seed, init_from=f"{source}/seed-{seed}" if source else None)
            out.append(RunSpec(f"{spec.name}/seed-{seed}", config, tuple(f"{d}/seed-{seed}" for d in spec.after)))
    return out


def _key(config: TrainConfig) -> tuple:
    """What the runs of one fleet share."""
    # what a fleet can share is a property of the objective, not of its name: a looping fleet steps any runs, a
    # stacked one any whose losses are functions of their log-weights alone (iwae.fleets.fleet.stackable), so runs
    # of one sample count and estimator, whatever their bounds, can share one
    from iwae.objectives import Objective  # torch: not at import (the command line parses without it)

    objective = Objective.from_config(config)
    samples, stackable = objective.samples_per_example, objective.compilable  # never a stackable with an unstackable
    return (
        config.layers, repr(config.latent_dims), repr(config.q_hidden), repr(config.p_hidden), samples, stackable,
        config.estimator, config.batch_size, config.stages, config.pass_scale, repr(config.custom_schedule),
        config.lr_variant, config.device, config.checkpoint_minutes, config.flush_denormal,
    )  # fmt: skip


def _worth_packing(packing: str, on_gpu: bool) -> bool:
    """Whether runs should join fleets: always when asked for a mode; with ``auto`` only on a GPU (on a CPU a fleet
    steps no faster than its runs alone, and one process for many runs would leave the other jobs' cores idle)."""
    return packing != "auto" or on_gpu


def _resumed(pending: dict[str, RunSpec], root: Path) -> list[Unit]:
    """The fleets of earlier invocations that still have runs to finish."""
    units = []
    for manifest in sorted((root / FLEETS_DIR).glob("*.json")):
        members = tuple(str((manifest.parent / name).resolve().relative_to(root.resolve()))
                        for name in json.loads(manifest.read_text())["runs"])  # fmt: skip
        specs = tuple(pending.pop(name) for name in members if name in pending)
        if specs:
            units.append(Unit(manifest.stem, specs, manifest, members))
    return units


def pack(specs: list[RunSpec], root: Path, packing: str = "auto", on_gpu: bool = False) -> list[Unit]:
    """The units that bring ``specs`` (the runs not done yet) to done: fleets begun earlier, new fleets of
    compatible new runs without dependencies, single runs for the rest (partial runs of no fleet included)."""
    if packing == "off":
        return [Unit(s.name, (s,)) for s in specs]
    pending = {s.name: s for s in specs}
    units = _resumed(pending, root)
    groups: dict[tuple, list[RunSpec]] = {}
    for spec in list(pending.values()):
        is_new = not (root / spec.name / "config.json").exists()
        if is_new and not spec.after and spec.config.init_from is None and _worth_packing(packing, on_gpu):
            groups.setdefault(_key(spec.config), []).append(pending.pop(spec.name))
    for group in groups.values():
        for start in range(0, len(group), MAX_FLEET):
            chunk = tuple(group[start : start + MAX_FLEET])
            if len(chunk) == 1:
                pending[chunk[0].name] = chunk[0]
                continue
            name = chunk[0].name.replace("/", "_")
            units.append(Unit(name, chunk, root / FLEETS_DIR / f"{name}.json", tuple(s.name for s in chunk)))
    return units + [Unit(s.name, (s,)) for s in pending.values()]
