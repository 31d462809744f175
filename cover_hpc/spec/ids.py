"""Run ids: stable across upgrades of cover-hpc.

A run id is a readable label of its swept values plus a hash of how its resolved spec differs from
the defaults, over the keys that can change its trained weights (dora's rule). A key that is left at
its default is not hashed, so a new key whose default keeps today's behaviour (an EMA switch, DoRA,
caption dropout) moves no id, and neither does re-submitting to another partition. Any
weight-bearing change away from the defaults makes a new id.

The canonical form: the differing keys by dotted name, numbers normalised (an integral float is
the int; -0.0 is 0), lists as lists, strings (paths too) as the spec resolved them; JSON with
sorted keys. ``tests/golden/run_ids.json`` pins the ids of the shipped configs: a change to it is a
deliberate act, written in CHANGELOG.md with its migration.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from cover_hpc.spec.schema import to_dict

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
    "track",
)
HASH_LENGTH = 8
_LABEL_MAX = 48


def dotted_leaves(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf (a list is a value, not a branch)."""
    leaves: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping) and dotted != "sweep" and not dotted.startswith("sweep."):
            leaves.update(dotted_leaves(value, dotted))
        else:
            leaves[dotted] = value
    return leaves


def canonical(value: Any) -> Any:
    """One form for equal values: 1.0 and 1 hash alike, and so do 0.0 and -0.0."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    return value


def _excluded(dotted: str) -> bool:
    return any(dotted == key or dotted.startswith(f"{key}.") for key in NON_RESULT_KEYS)


def weight_diff(spec: Any) -> dict[str, Any]:
    """The weight-bearing keys of a resolved spec whose value differs from its class's default."""
    current = dotted_leaves(to_dict(spec))
    defaults = dotted_leaves(to_dict(type(spec)()))
    missing = object()
    return {
        key: canonical(value)
        for key, value in sorted(current.items())
        if not _excluded(key) and canonical(value) != canonical(defaults.get(key, missing))
    }


def config_hash(spec: Any) -> str:
    """Hash of the weight-bearing difference of a resolved spec to the defaults."""
    canonical_json = json.dumps(weight_diff(spec), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical_json.encode()).hexdigest()[:HASH_LENGTH]


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


def run_id(spec: Any, swept: Mapping[str, Any]) -> str:
    """The id of the run with resolved ``spec``, made by setting ``swept`` on the experiment's spec."""
    return f"{run_label(swept)}-{config_hash(spec)}"
