"""Run folders: where a run's resolved config is written and read back."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

from cover_hpc.runtime import env
from cover_hpc.spec.schema import ExperimentSpec, spec_from_dict, to_dict
from cover_hpc.spec.sweep import Run
from cover_hpc.store import atomic
from cover_hpc.store.paths import ExperimentPaths, RunPaths


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


def _key(label: str, settings: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", label)[:40].strip("._") or "x"
    return f"{readable}-{digest}"


#: Validation settings that change no image and no metric, only which point is chosen (select_by) or
#: how the work is split (tasks): a new value re-selects from the points already scored.
CHOICE_ONLY = ("select_by", "tasks")


def validation_key(spec: ExperimentSpec) -> str:
    """The folder of one validation of a run: its prompt source and a hash of every setting it reads
    (validation settings are not part of the run id, so one trained run can be validated many ways)."""
    data = spec.data
    settings = {
        "validate": {k: v for k, v in to_dict(spec.validate).items() if k not in CHOICE_ONLY},
        "data": {"test_dir": data.test_dir, "size": list(data.size), "max_caption_tokens": data.max_caption_tokens,
                 "caption_column": data.caption_column, "image_column": data.image_column,
                 "caption_template": data.caption_template},
        "typeset": [spec.infer.typeset, spec.infer.typeset_font],  # finished covers scored beside the raw art
    }  # fmt: skip
    source = spec.validate.prompts
    return _key("test_set" if source == "test_set" else Path(source).stem, settings)


def inference_key(spec: ExperimentSpec) -> str:
    """The folder of one inference of a run: its books file's name and a hash of the settings (a new
    books file or new sampling settings get new covers from the same trained run)."""
    if not spec.infer.books_file:
        raise ValueError(
            "infer.books_file is not set; give a JSONL of books (id, title, publisher, genres, description)"
        )
    settings: dict[str, Any] = {"infer": to_dict(spec.infer), "max_caption_tokens": spec.data.max_caption_tokens}
    if spec.infer.checkpoint.strip().lower() == "best":  # which LoRA is best depends on how validation scores
        settings["validation"] = [validation_key(spec), spec.validate.select_by]
    return _key(Path(spec.infer.books_file).stem, settings)


def record_start(paths: RunPaths) -> None:
    """Append this start (SLURM job and restart count, host, time) to ``train/starts.jsonl``."""
    job = env.slurm_job()
    record = {"time": time.time(), "host": socket.gethostname(), "job": job.job_id if job else None,
              "restarts": job.restarts if job else 0}  # fmt: skip
    paths.train.mkdir(parents=True, exist_ok=True)
    with paths.starts.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def count_requeues(paths: RunPaths) -> int:
    """Restarts of a run's training: every start but the first. A SLURM job started at least
    ``SLURM_RESTART_COUNT + 1`` times, even if a start died before it could write its line."""
    if not paths.starts.is_file():
        return 0
    starts_by_job: dict[str, list[int]] = {}
    local = 0
    for line in paths.starts.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if record.get("job"):
            starts_by_job.setdefault(str(record["job"]), []).append(int(record.get("restarts", 0)))
        else:
            local += 1
    starts = local + sum(max(len(counts), max(counts) + 1) for counts in starts_by_job.values())
    return max(starts - 1, 0)
