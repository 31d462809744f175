"""Run folders: where a run's resolved config is written and read back."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cover_hpc.runtime import env
from cover_hpc.spec.ids import run_id
from cover_hpc.spec.schema import ExperimentSpec, SpecError, spec_from_dict, to_dict
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


@dataclass(frozen=True)
class Adopted:
    """A run folder written under an earlier release's id, now reached by its current id too."""

    run_id: str  # the id this release gives the run: ``<exp>/<run_id>`` is a link to the folder
    folder: str  # the folder's own name: the id the release that wrote it gave the run

    def describe(self) -> str:
        return f"adopted run folder {self.folder} (an earlier release's id) as {self.run_id}"


def _stored_run(folder: Path) -> tuple[ExperimentSpec, dict[str, Any]] | None:
    """The resolved spec and swept values a run folder stored, or None where it holds no run."""
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("run_id"), str):
        return None
    swept = data.pop("swept", None) or {}
    data.pop("run_id")
    try:  # keys an older release did not have take their defaults, which keep its behaviour
        return spec_from_dict(data), swept
    except SpecError:  # a key this release no longer knows: not a run it can continue
        return None


def adopt_earlier_runs(exp: ExperimentPaths, runs: Sequence[Run]) -> list[Adopted]:
    """Adopt run folders that an earlier release named by its own id rule (before 0.2.0 the id hashed
    the whole resolved spec): where a folder's stored spec makes one of ``runs`` today, and that run
    has no folder yet, ``<exp>/<run_id>`` becomes a relative symbolic link to it. Nothing moves, so a
    job the earlier release queued, which names the folder by its old id, still finds its work; and
    re-submitting trains nothing that finished and resumes what did not. Idempotent; a link is made
    atomically (made aside, then renamed into place), so two submissions at once cannot clash."""
    missing = {run.run_id for run in runs if not os.path.lexists(exp.run(run.run_id).root)}
    if not missing or not exp.root.is_dir():
        return []
    planned = {run.run_id for run in runs}
    adopted = []
    for folder in sorted(exp.root.iterdir()):
        if folder.is_symlink() or not folder.is_dir() or folder.name in planned or folder.name.startswith("."):
            continue
        stored = _stored_run(folder)
        if stored is None:
            continue
        current = run_id(*stored)
        if current not in missing:
            continue
        aside = exp.root / f".{current}.adopting-{os.getpid()}"
        aside.unlink(missing_ok=True)
        os.symlink(folder.name, aside)
        try:
            if os.path.lexists(exp.root / current):  # made meanwhile by another submission
                raise FileExistsError(current)
            os.rename(aside, exp.root / current)
        except OSError:
            aside.unlink(missing_ok=True)
            continue
        missing.discard(current)
        adopted.append(Adopted(current, folder.name))
    return adopted


def adopted_folders(exp: ExperimentPaths) -> dict[str, str]:
    """Earlier id -> current id of every run folder adopted in ``exp``."""
    if not exp.root.is_dir():
        return {}
    return {
        os.readlink(link): link.name
        for link in exp.root.iterdir()
        if link.is_symlink() and "/" not in os.readlink(link) and (exp.root / os.readlink(link)).is_dir()
    }


def load_run_spec(paths: RunPaths) -> ExperimentSpec:
    """The resolved spec a run folder stored; a file that is not one is a ValueError naming it."""
    try:
        data = json.loads(paths.config.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{paths.config}: not a run's config.json ({error}); run cover-hpc train again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{paths.config}: not a run's config.json (a JSON object is expected)")
    data.pop("run_id", None)
    data.pop("swept", None)
    try:
        return spec_from_dict(data)
    except SpecError as error:
        raise ValueError(f"{paths.config}: {error}") from None


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


#: Inference keys added after 0.2.0, with the default that keeps the earlier behaviour: left out of the hash
#: at that default, so an upgrade moves no inference folder (the run-id rule of cover_hpc.spec.ids).
ADDED_INFER_KEYS: dict[str, Any] = {"cover_size": None}


def inference_key(spec: ExperimentSpec) -> str:
    """The folder of one inference of a run: its books file's name and a hash of the settings (a new
    books file or new sampling settings get new covers from the same trained run)."""
    if not spec.infer.books_file:
        raise ValueError(
            "infer.books_file is not set; give a JSONL of books (id, title, publisher, genres, description)"
        )
    infer = to_dict(spec.infer)
    for key, default in ADDED_INFER_KEYS.items():  # keys added since 0.2.0 move no folder while at their default
        if infer.get(key) == default:
            infer.pop(key, None)
    settings: dict[str, Any] = {"infer": infer, "max_caption_tokens": spec.data.max_caption_tokens}
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
