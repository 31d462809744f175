"""Expansion of a spec into runs (their ids: :mod:`cover_hpc.spec.ids`)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cover_hpc.spec.ids import run_id
from cover_hpc.spec.schema import ExperimentSpec, SweepConfig, coerce, field_type, replace_dotted, to_dict


@dataclass(frozen=True)
class Run:
    """One run of an experiment: its id, the values its sweep set, and its resolved spec."""

    run_id: str
    swept: dict[str, Any]
    spec: ExperimentSpec

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "swept": to_dict(self.swept), "config": to_dict(self.spec)}


def expand_overrides(spec: ExperimentSpec) -> list[dict[str, Any]]:
    """The swept values of each run: the grid's product times the zipped axes, in spec order."""
    grid_keys = list(spec.sweep.grid)
    grid = [dict(zip(grid_keys, values, strict=True)) for values in itertools.product(*spec.sweep.grid.values())]
    zip_keys = list(spec.sweep.zip)
    if zip_keys:
        zipped = [dict(zip(zip_keys, values, strict=True)) for values in zip(*spec.sweep.zip.values(), strict=True)]
        combos = [{**g, **z} for g in grid for z in zipped]
    else:
        combos = grid
    return [{key: coerce(value, field_type(key)) for key, value in combo.items()} for combo in combos]


def resolve(spec: ExperimentSpec, swept: Mapping[str, Any]) -> ExperimentSpec:
    """The spec of one run: swept values set, sweep cleared."""
    return dataclasses.replace(replace_dotted(spec, swept), sweep=SweepConfig())


def expand(spec: ExperimentSpec) -> list[Run]:
    """Every run of a validated spec, in a stable order."""
    runs = []
    for swept in expand_overrides(spec):
        resolved = resolve(spec, swept)
        runs.append(Run(run_id(resolved, swept), swept, resolved))
    return runs
