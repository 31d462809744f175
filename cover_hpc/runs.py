"""Run folders: where a run's resolved config is written and read back."""

from __future__ import annotations

import json

from cover_hpc import atomic
from cover_hpc.config import ExperimentSpec, spec_from_dict, to_dict
from cover_hpc.paths import ExperimentPaths, RunPaths
from cover_hpc.sweep import Run


def prepare_run(spec: ExperimentSpec, run: Run) -> RunPaths:
    """Create the run folder and store its resolved config (idempotent; safe from every rank)."""
    paths = ExperimentPaths.of(spec.output_dir, spec.name).run(run.run_id)
    data = {"run_id": run.run_id, "swept": to_dict(run.swept), **to_dict(run.spec)}
    if not paths.config.is_file() or json.loads(paths.config.read_text()) != data:
        atomic.write_json(paths.config, data)
    return paths


def load_run_spec(paths: RunPaths) -> ExperimentSpec:
    data = json.loads(paths.config.read_text())
    data.pop("run_id", None)
    data.pop("swept", None)
    return spec_from_dict(data)
