"""The tracker: one interface, fanned out to the JSONL file, TensorBoard, wandb and MLflow.

- :meth:`Tracker.log` takes a record and its training step. The JSONL file gets the record as it is
  (the format of ``train/metrics.jsonl`` is unchanged); TensorBoard, wandb and MLflow get its numbers,
  nested keys joined by ``/`` (``lr/unet``).
- :meth:`Tracker.images` logs a few image files at a step, :meth:`Tracker.summary` a run's decisions
  (the selected point, a search's rung decisions and result).
- Only the process that opens a tracker with ``main=True`` (rank 0) writes anything.

One tracker run per run id, whatever job logs to it (training, its requeues, validation, a search's
rungs): the wandb run id is made from the experiment folder and the run id (``resume="allow"``), and
the MLflow run is found by its ``cover_hpc.run_key`` tag (remembered in ``<run>/tracking/mlflow.json``)
or made once under a lock. A remote backend learns, when it opens, which (key, step) pairs the run
already holds (MLflow: the metric histories; wandb: the run's local ``.wandb`` files of every earlier
start) and skips them: a training killed between a log and its checkpoint re-trains those steps and
logs none of them twice.

A tracker that cannot be reached is probed before its library starts (a short connect, MLflow's
``/health``) and turned off for the job with one warning naming the key and the fix; any later
failure does the same. MLflow's HTTP retries are cut to seconds, so a server that goes away never
stalls training.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from cover_hpc.spec.schema import ExperimentSpec
from cover_hpc.store.paths import RunPaths
from cover_hpc.track.common import Identity, flatten, short, warn

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Backends


class Backend(Protocol):
    key: str  # the spec key that turns it on, named in warnings
    what: str

    def logged(self) -> dict[str, set[int]]: ...

    def log(self, values: dict[str, float], step: int) -> None: ...

    def images(self, key: str, files: Sequence[Path], step: int) -> None: ...

    def summary(self, values: Mapping[str, Any]) -> None: ...

    def close(self, finished: bool, failed: bool) -> None: ...


class _Shared:
    """A remote backend open in this process, shared by every tracker of its run (the training and a
    search's rung validation in one process log to one wandb run), with the (key, step) pairs its run
    holds."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.users = 0
        self.seen = backend.logged()
        self.alive = True

    def call(self, method: str, *args: Any) -> None:
        if not self.alive:
            return
        try:
            getattr(self.backend, method)(*args)
        except Exception as error:  # a tracker failing mid-job: off for the rest of the job, training goes on
            self.alive = False
            warn(f"{self.backend.key}: {self.backend.what} failed ({short(error)}); it is off for the rest of this "
                 f"job (the run's JSONL and TensorBoard files hold everything). Check {self.backend.key} and the "
                 "tracker, then resume or sync.")  # fmt: skip

    def log(self, values: dict[str, float], step: int) -> None:
        fresh = {k: v for k, v in values.items() if step not in self.seen.get(k, ())}
        if not fresh:
            return
        self.call("log", fresh, step)
        if self.alive:
            for key in fresh:
                self.seen.setdefault(key, set()).add(step)


_OPEN: dict[tuple[str, str], _Shared] = {}


def _shared(kind: str, ident: Identity, make: Any) -> _Shared | None:
    """The open backend of this kind for the run, or a new one (None where it could not start)."""
    slot = (kind, ident.key)
    if slot not in _OPEN:
        backend = make(ident)
        if backend is None:
            return None
        try:
            _OPEN[slot] = _Shared(backend)
        except Exception as error:
            warn(f"{backend.key}: reading what {backend.what} holds failed ({short(error)}); it is off for this job.")
            try:
                backend.close(False, False)
            except Exception:  # already failing: the warning above says what matters
                log.debug("closing %s failed too", backend.what, exc_info=True)
            return None
    shared = _OPEN[slot]
    shared.users += 1
    return shared


class Tracker:
    """One stage's logging (see the module docstring); a no-op where ``main`` was false."""

    def __init__(self, jsonl: Path | None = None, tensorboard: Any = None, remotes: Sequence[_Shared] = ()) -> None:
        self.jsonl = jsonl
        self.tensorboard = tensorboard
        self.remotes = list(remotes)
        self.closed = False

    @property
    def remote(self) -> bool:
        """Whether a wandb or MLflow run is open."""
        return any(r.alive for r in self.remotes)

    def log(self, record: Mapping[str, Any], step: int) -> None:
        if self.jsonl is not None:
            with self.jsonl.open("a") as handle:
                handle.write(json.dumps(dict(record)) + "\n")
        values = flatten(record)
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, step)
        for remote in self.remotes:
            remote.log(values, step)

    def images(self, key: str, files: Sequence[Path], step: int) -> None:
        files = [f for f in files if f.is_file()]
        if not files:
            return
        for remote in self.remotes:
            if step not in remote.seen.get(key, ()):
                remote.call("images", key, files, step)
                remote.seen.setdefault(key, set()).add(step)

    def summary(self, values: Mapping[str, Any]) -> None:
        for remote in self.remotes:
            remote.call("summary", dict(values))

    def close(self, finished: bool = False, failed: bool = False) -> None:
        """``finished``: the stage's work is done (MLflow: FINISHED); ``failed``: it raised (FAILED)."""
        if self.closed:
            return
        self.closed = True
        if self.tensorboard is not None:
            self.tensorboard.close()
        for remote in self.remotes:
            remote.users -= 1
            if remote.users <= 0:
                _OPEN.pop(next((k for k, v in _OPEN.items() if v is remote), ("", "")), None)
                remote.call("close", finished, failed)


def open_tracker(
    spec: ExperimentSpec,
    paths: RunPaths,
    job: str,
    main: bool = True,
    jsonl: Path | None = None,
    tensorboard: Path | None = None,
    purge_step: int | None = None,
) -> Tracker:
    """The tracker of one stage of a run: ``jsonl`` and ``tensorboard`` (a folder) where the stage has
    them, and the spec's wandb and MLflow runs. ``job`` names the stage (train, validate, search)."""
    if not main:
        return Tracker()
    writer = None
    if tensorboard is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(tensorboard), purge_step=purge_step)
    remotes = []
    if spec.track.wandb != "off" or spec.track.mlflow_uri.strip():
        ident = Identity(spec, paths, job)
        if spec.track.wandb != "off":
            from cover_hpc.track.remote import open_wandb

            shared = _shared("wandb", ident, open_wandb)
            if shared is not None:
                remotes.append(shared)
        if spec.track.mlflow_uri.strip():
            from cover_hpc.track.remote import open_mlflow

            shared = _shared("mlflow", ident, open_mlflow)
            if shared is not None:
                remotes.append(shared)
    return Tracker(jsonl, writer, remotes)


def open_runs() -> Iterator[tuple[str, str]]:
    """(backend, run key) of every remote run open in this process (for tests)."""
    yield from _OPEN
