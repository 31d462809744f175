"""What every tracker backend shares: who a run is for the trackers, the step axis, and the
one-line warning of a tracker turned off."""

from __future__ import annotations

import getpass
import hashlib
import logging
import math
import os
import re
import socket
import sys
from collections.abc import Mapping
from typing import Any

from cover_hpc.runtime import env
from cover_hpc.spec.schema import ExperimentSpec, TrackConfig, to_dict
from cover_hpc.store.paths import RunPaths

log = logging.getLogger(__name__)

#: wandb's x axis for every metric: the training step (wandb's own step only counts log calls).
STEP_KEY = "trainer/step"
#: Seconds a tracker may take to answer a probe, and MLflow an HTTP request.
PROBE_TIMEOUT_S = 5.0
MLFLOW_REQUEST_TIMEOUT_S = 10
RUN_KEY_TAG = "cover_hpc.run_key"


def warn(message: str) -> None:
    """One line on stderr (the job's log) and in the log."""
    print(f"cover-hpc: warning: {message}", file=sys.stderr, flush=True)
    log.debug(message)


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested record, keys joined by ``/``; ``step`` itself is left out."""
    flat: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and name != "step":
            if math.isfinite(float(value)):
                flat[name] = float(value)
        elif isinstance(value, bool):
            flat[name] = float(value)
    return flat


class Identity:
    """A run as the trackers name it: project, run id, a stable key, tags."""

    def __init__(self, spec: ExperimentSpec, paths: RunPaths, job: str) -> None:
        self.track: TrackConfig = spec.track
        self.project = spec.track.project or spec.name
        self.experiment = spec.name
        self.run_id = paths.root.name
        self.folder = paths.root / "tracking"
        self.job = job
        where = str(paths.root.parent.resolve())  # the same however a job names the experiment folder
        digest = hashlib.sha256(f"{where}|{self.run_id}".encode()).hexdigest()[:12]
        #: The same for every job of this run, different for a same-named run of another user or folder.
        self.key = f"{re.sub(r'[^A-Za-z0-9_-]', '-', self.run_id)[:40]}-{digest}"
        slurm = env.slurm_job()
        self.tags = {
            "experiment": spec.name,
            "run_id": self.run_id,
            "user": _user(),
            "slurm_job": slurm.job_id if slurm else "local",
            "host": socket.gethostname(),
            "job": job,
            "folder": str(paths.root.absolute()),
        }
        self.extra_tags = tuple(spec.track.tags)
        self.config = to_dict(spec)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "unknown")


def short(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."
