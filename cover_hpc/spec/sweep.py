"""Expansion of a spec into runs, and run ids.

A run id is a short readable name of its swept values plus a hash of its resolved config. Keys
that cannot change any result (where and how long the job is queued) are left out of the hash,
so re-submitting to another partition keeps the ids, while any result-bearing change makes a new
one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cover_hpc.spec.schema import ExperimentSpec, SweepConfig, coerce, field_type, replace_dotted, to_dict

#: Dotted keys that cannot change a run's trained weights, so they are not part of its id: where and
#: how long jobs queue, bookkeeping, and everything validation and inference read (those outputs
#: have their own folders per settings, see cover_hpc.store.runs.validation_key / inference_key).
NON_RESULT_KEYS = (
    "name",
    "output_dir",
    "sweep",
    "validate",
    "infer",
    "data.test_dir",
    "data.cache_dir",
    "data.num_workers",
    "train.checkpoint_every",
    "train.checkpoints_kept",
    "train.log_every",
    "slurm.partition",
    "slurm.account",
    "slurm.qos",
    "slurm.constraint",
    "slurm.time_min",
    "slurm.signal_lead_s",
    "slurm.max_requeues",
    "slurm.array_parallelism",
    "slurm.setup",
    "distributed.timeout_min",
)
HASH_LENGTH = 8
_LABEL_MAX = 48


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


def config_hash(spec: ExperimentSpec) -> str:
    """Hash of the result-bearing part of a resolved spec."""
    data = to_dict(spec)
    for dotted in NON_RESULT_KEYS:
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node.pop(leaf, None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]


def _format_value(value: Any) -> str:
    if isinstance(value, float) and value != 0 and abs(value) < 1e-2:
        mantissa, exponent = f"{value:.3e}".split("e")
        text = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = "x".join(_format_value(v) for v in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+-]", "", text)


def run_label(swept: Mapping[str, Any]) -> str:
    """Readable part of a run id, e.g. ``lr_unet=1e-4, rank=16`` -> ``lr_unet1e-04_rank16``."""
    if not swept:
        return "run"
    parts = [f"{key.split('.')[-1]}{_format_value(value)}" for key, value in swept.items()]
    return "_".join(parts)[:_LABEL_MAX].rstrip("_")


def expand(spec: ExperimentSpec) -> list[Run]:
    """Every run of a validated spec, in a stable order."""
    runs = []
    for swept in expand_overrides(spec):
        resolved = resolve(spec, swept)
        runs.append(Run(f"{run_label(swept)}-{config_hash(resolved)}", swept, resolved))
    return runs
