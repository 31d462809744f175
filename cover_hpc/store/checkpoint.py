"""Checkpoints that are complete or ignored: atomic publish, verified resume, pruning.

A checkpoint is written into ``checkpoints/.tmp-step-<N>`` by every rank, then rank 0 writes
``progress.json`` and a ``COMPLETE`` marker that lists every file with its size and sha256, and
renames the folder to ``step-<N>``. Resume takes the newest folder whose marker verifies; a folder
without marker (half-written) or with a file that does not match (corrupt) is passed over with a
warning for the previous good one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cover_hpc.store import atomic

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
PROGRESS = "progress.json"
_NAME_RE = re.compile(r"step-(\d{8})")


@dataclass(frozen=True)
class Progress:
    """Where training stands: saved with each checkpoint, restored on resume."""

    step: int  # optimizer steps done
    epoch: int  # epoch the next batch comes from
    batch_in_epoch: int  # batches of that epoch this rank already consumed
    world_size: int
    starts: int  # how many times training started on this run (1 + resumes)
    loss_sum: float  # sum of the logged per-step losses so far (for the mean loss)
    elapsed_s: float  # training wall time accumulated over all starts

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def temporary_dir(root: Path, step: int) -> Path:
    return root / f".tmp-{step_name(step)}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _listing(folder: Path) -> dict[str, dict[str, Any]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER)
    return {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}


def publish(root: Path, step: int, progress: Progress, config: dict[str, Any]) -> Path:
    """Rank 0, after every rank finished writing ``temporary_dir``: mark it complete and rename it."""
    staging = temporary_dir(root, step)
    (staging / PROGRESS).write_text(json.dumps({**progress.to_json(), "config": config}, indent=2))
    marker = {"step": step, "files": _listing(staging)}
    with (staging / MARKER).open("w") as handle:
        json.dump(marker, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    final = root / step_name(step)
    if final.exists():  # a checkpoint of the same step from an earlier start: replace it
        shutil.rmtree(final)
    os.replace(staging, final)
    atomic.fsync_path(root)
    return final


def verify(folder: Path) -> str | None:
    """None if ``folder`` is a complete, intact checkpoint, else why not."""
    marker = folder / MARKER
    if not marker.is_file():
        return "no completion marker (half-written)"
    try:
        listing = json.loads(marker.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return "unreadable completion marker"
    for name, expected in listing.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"] or _sha256(path) != expected["sha256"]:
            return f"{name} does not match its recorded size and checksum (corrupt)"
    return None


def candidates(root: Path) -> list[Path]:
    """Checkpoint folders, newest first (by step number, never by parsing odd names)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME_RE.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def latest(root: Path) -> Path | None:
    """The newest checkpoint that verifies; others newer than it are reported and skipped."""
    for folder in candidates(root):
        problem = verify(folder)
        if problem is None:
            return folder
        log.warning("passing over checkpoint %s: %s", folder, problem)
    for stale in root.glob(".tmp-step-*") if root.is_dir() else ():
        log.warning("ignoring half-written checkpoint %s", stale)
    return None


def read_progress(folder: Path) -> tuple[Progress, dict[str, Any]]:
    data = json.loads((folder / PROGRESS).read_text())
    config = data.pop("config")
    return Progress(**data), config


def prune(root: Path, keep: int) -> None:
    """Keep the ``keep`` newest complete checkpoints; drop older ones and leftover temporaries."""
    complete = [p for p in candidates(root) if (p / MARKER).is_file()]
    for folder in complete[keep:]:
        shutil.rmtree(folder, ignore_errors=True)


def clear_staging(root: Path, step: int) -> None:
    """Remove a leftover temporary folder of ``step`` (from a start that died while saving)."""
    staging = temporary_dir(root, step)
    if staging.exists():
        shutil.rmtree(staging)
