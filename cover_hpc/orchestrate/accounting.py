"""The GPU time SLURM accounted to an experiment's runs, for the report's compute section.

The report stage does not call SLURM (stages sit below orchestrate): the report job
(:class:`cover_hpc.job.StageTask`), ``cover-hpc report`` and a local submission read the accounting
here and pass it to :func:`cover_hpc.stages.report.build_report`.

A run's jobs are those ``<exp>/experiment.json`` records for it in every SLURM submission:
``"runs"[key]`` = ``{"train": id, "validate": [ids], "infer": [ids]}``, where ``key`` is the run id,
or ``task-<i>`` for a search's array task (``search/tasks/<i>.json`` names the run it trains; a task
without it yet stays ``task-<i>``). A job's GPU time is sacct's elapsed seconds x the GPUs of its
allocation (``AllocTRES`` ``gres/gpu``), with every start of a requeued job counted (``--duplicates``
lists each start as a record of its own) and a running job's time so far. Jobs of the local executor
(process ids, no GPUs) are not asked about: without SLURM jobs there is no accounting (None), and the
report falls back to the training's wall time x world size.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cover_hpc.stages.report import Accounting, RunUsage
from cover_hpc.store.paths import ExperimentPaths

log = logging.getLogger(__name__)

SACCT_FIELDS = ("JobID", "State", "ElapsedRaw", "AllocTRES", "Start")
SACCT_TIMEOUT_S = 60
#: A record of a job id that started this long before the submission that queued it was recorded is
#: another job of that number (after the cluster's job ids were reset), which --duplicates also lists.
EARLIER_SLACK_S = 3600.0

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class JobRecord:
    """One start of a job, as sacct lists it."""

    job_id: str
    state: str
    elapsed_s: float
    gpus: int
    start: float | None  # epoch seconds; None before it started

    @property
    def gpu_hours(self) -> float:
        return self.elapsed_s * self.gpus / 3600


def gpus_of(tres: str) -> int:
    """The GPUs of an AllocTRES value (``billing=8,cpu=8,gres/gpu=2,mem=64G,node=1``); typed counts
    (``gres/gpu:a100=2``) are summed where the untyped total is missing."""
    total, typed = None, 0
    for item in tres.split(","):
        key, _, value = item.strip().partition("=")
        if not value.isdigit():
            continue
        if key == "gres/gpu":
            total = int(value)
        elif key.startswith("gres/gpu:"):
            typed += int(value)
    return total if total is not None else typed


def _start(text: str) -> float | None:
    """sacct's Start: epoch seconds (SLURM_TIME_FORMAT=%s), or its ISO form; None for Unknown/None."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def parse_sacct(text: str) -> list[JobRecord]:
    """The records of ``sacct -n -X -D -P -o JobID,State,ElapsedRaw,AllocTRES,Start``; job steps and
    the one line of an array's tasks that never started (``A_[2-5]``) are left out."""
    records = []
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) != len(SACCT_FIELDS):
            continue
        job_id, state, elapsed, tres, start = (f.strip() for f in fields)
        if not job_id or "." in job_id or "[" in job_id or not elapsed.isdigit():
            continue
        records.append(
            JobRecord(job_id, state.split()[0] if state else "", float(elapsed), gpus_of(tres), _start(start))
        )
    return records


def sacct(job_ids: Sequence[str], runner: Runner | None = None) -> list[JobRecord]:
    """Every start of these jobs (array tasks as ``A_T``); raises when sacct cannot be run or fails.
    ``runner``: what runs the command (subprocess.run; a test's fake)."""
    if not job_ids:
        return []
    runner = runner or subprocess.run
    command = ["sacct", "-n", "-X", "-D", "-P", "-o", ",".join(SACCT_FIELDS), "-j", ",".join(job_ids)]
    out = runner(command, capture_output=True, text=True, timeout=SACCT_TIMEOUT_S, check=False,
                 env={**os.environ, "SLURM_TIME_FORMAT": "%s"})  # fmt: skip
    if out.returncode != 0:
        last = (out.stderr or "").strip().splitlines()
        raise RuntimeError(f"sacct exited with {out.returncode}: {last[-1] if last else 'no message'}")
    return parse_sacct(out.stdout)


def _ids(value: Any) -> list[str]:
    """A stage's job ids as recorded: one id, a list, or none."""
    if not value:
        return []
    return [str(value)] if isinstance(value, str | int) else [str(v) for v in value if v]


def _run_of(exp: ExperimentPaths, key: str) -> str:
    """The run a submission's key names: itself, or for ``task-<i>`` the run its search task trains."""
    index = key.removeprefix("task-")
    if key.startswith("task-") and index.isdigit():
        try:
            record = json.loads(exp.search_task(int(index)).read_text())
        except (OSError, ValueError):
            return key
        if isinstance(record, dict) and isinstance(record.get("run_id"), str):
            return str(record["run_id"])
    return key


@dataclass
class _Jobs:
    train: dict[str, float]  # job id -> when the submission that queued it was recorded
    other: dict[str, float]


def slurm_jobs(exp: ExperimentPaths, state: dict[str, Any]) -> dict[str, _Jobs]:
    """Per run, its SLURM jobs of every submission (training; validation and inference)."""
    found: dict[str, _Jobs] = {}
    for submission in state.get("submissions") or []:
        if not isinstance(submission, dict) or submission.get("executor") != "slurm":
            continue
        when = submission.get("time")
        when = float(when) if isinstance(when, int | float) else 0.0
        for key, jobs in (submission.get("runs") or {}).items():
            if not isinstance(jobs, dict):
                continue
            entry = found.setdefault(_run_of(exp, str(key)), _Jobs({}, {}))
            for job in _ids(jobs.get("train")):
                entry.train.setdefault(job, when)
            for job in _ids(jobs.get("validate")) + _ids(jobs.get("infer")):
                entry.other.setdefault(job, when)
    return found


def experiment_accounting(experiment_dir: Path, runner: Runner | None = None) -> Accounting | None:
    """The GPU-hours of each run's SLURM jobs; None where the experiment has none (the local
    executor, or never submitted). Never raises: what cannot be read is named in ``problems``."""
    exp = ExperimentPaths(Path(experiment_dir).absolute())
    try:
        state = json.loads(exp.state.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    jobs = slurm_jobs(exp, state)
    if not jobs:
        return None
    ids = sorted({j for entry in jobs.values() for j in (*entry.train, *entry.other)})
    try:
        records = sacct(ids, runner)
    except (OSError, subprocess.SubprocessError, RuntimeError) as error:
        log.warning("report: no GPU accounting: %s", error)
        return Accounting({}, "sacct", (f"sacct could not be read ({error}); every run falls back",))
    by_id: dict[str, list[JobRecord]] = {}
    for record in records:
        by_id.setdefault(record.job_id, []).append(record)

    def hours(submitted: dict[str, float]) -> float:
        return sum((r.gpu_hours for job, when in submitted.items() for r in by_id.get(job, [])
                    if r.start is None or r.start >= when - EARLIER_SLACK_S), 0.0)  # fmt: skip

    runs = {}
    for run_id, entry in jobs.items():
        if any(job in by_id for job in entry.train):  # else the run falls back to its wall time
            runs[run_id] = RunUsage(hours(entry.train), hours(entry.other), tuple([*entry.train, *entry.other]))
    problems = []
    unknown = [job for job in ids if job not in by_id]
    if unknown:
        problems.append(f"sacct knows nothing of {_some(unknown)} (purged from its database, or of another cluster)")
    no_gpu = [job for job in ids if by_id.get(job) and all(r.gpus == 0 for r in by_id[job])
              and any(r.elapsed_s > 0 for r in by_id[job])]  # fmt: skip
    if no_gpu:
        problems.append(f"{_some(no_gpu)} ran without a GPU in its allocation (no gres/gpu in AllocTRES): 0 GPU-hours")
    return Accounting(runs, "sacct", tuple(problems))


def _some(jobs: list[str], shown: int = 10) -> str:
    """``job 12`` / ``jobs 12, 13`` / ``jobs 12, ... and 40 more``."""
    more = f" and {len(jobs) - shown} more" if len(jobs) > shown else ""
    return f"job{'s' if len(jobs) > 1 else ''} {', '.join(jobs[:shown])}{more}"
