"""The remote trackers, wandb and MLflow, imported only when the spec turns them on.

Each ``open_*`` probes first and returns None (after one warning naming the key and the fix) when the
tracker cannot be reached, so a tracker that is down costs a job seconds, never its training.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cover_hpc.spec.ids import dotted_leaves
from cover_hpc.store import atomic, locks
from cover_hpc.track.common import (
    MLFLOW_REQUEST_TIMEOUT_S,
    PROBE_TIMEOUT_S,
    RUN_KEY_TAG,
    STEP_KEY,
    Identity,
    short,
    warn,
)

# --------------------------------------------------------------------------------------------
# wandb

WANDB_DEFAULT_URL = "https://api.wandb.ai"
#: Seconds wandb.init may take before the job goes on without it (wandb's default is 90).
WANDB_INIT_TIMEOUT_S = 30.0


def wandb_folder(ident: Identity) -> Path:
    """WANDB_DIR of a run: ``<run>/tracking``; wandb writes ``wandb/<offline-run|run>-<time>-<id>/`` in it."""
    return ident.folder


def _reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to the URL's host opens within ``timeout``, else why not."""
    parsed = urllib.parse.urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return f"{host}:{port} unreachable: {short(error)}"


class WandbBackend:
    key = "track.wandb"

    def __init__(self, ident: Identity, run: Any, mode: str) -> None:
        self.ident = ident
        self.run = run
        self.what = f"wandb ({mode})"

    def logged(self) -> dict[str, set[int]]:
        """What every earlier start of this run wrote to its local ``.wandb`` files (offline and online
        runs alike keep them), by key: the steps, on the trainer/step axis."""
        return history_steps(wandb_folder(self.ident) / "wandb", self.ident.key, exclude=self.run.dir)

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log({**values, STEP_KEY: step})

    def images(self, key: str, files: Sequence[Path], step: int) -> None:
        import wandb

        self.run.log({key: [wandb.Image(str(f), caption=f.stem) for f in files], STEP_KEY: step})

    def summary(self, values: Mapping[str, Any]) -> None:
        self.run.summary.update(dict(values))

    def close(self, finished: bool, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0 if finished else None)


def open_wandb(ident: Identity) -> WandbBackend | None:
    mode: Any = ident.track.wandb  # offline or online here
    base = os.environ.get("WANDB_BASE_URL", WANDB_DEFAULT_URL)
    if mode == "online":
        problem = _reachable(base)
        if problem:
            warn(f"track.wandb=online but the wandb server ({base}) cannot be reached from {socket.gethostname()} "
                 f"({problem}); wandb is off for this job. Use track.wandb=offline on nodes without network and "
                 "`wandb sync` the run folders' tracking/wandb/offline-run-* from the login node.")  # fmt: skip
            return None
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    folder = wandb_folder(ident)
    folder.mkdir(parents=True, exist_ok=True)
    tags = [f"{k}:{ident.tags[k]}"[:64] for k in ("experiment", "run_id", "user", "slurm_job")]
    try:
        run = wandb.init(
            project=ident.project, entity=ident.track.entity or None, id=ident.key, resume="allow", mode=mode,
            dir=str(folder), name=ident.run_id, group=ident.experiment, job_type=ident.job,
            tags=[*tags, *ident.extra_tags], config=ident.config, allow_val_change=True,
            settings=wandb.Settings(init_timeout=WANDB_INIT_TIMEOUT_S, console="off", silent=True),
        )  # fmt: skip
    except Exception as error:
        warn(f"track.wandb={mode}: wandb could not start ({short(error)}); wandb is off for this job. Check "
             "the login (wandb login or WANDB_API_KEY) and track.entity, or use track.wandb=offline.")  # fmt: skip
        return None
    run.define_metric(STEP_KEY)
    run.define_metric("*", step_metric=STEP_KEY)
    return WandbBackend(ident, run, mode)


# wandb's run files (``run-<id>.wandb``) are a LevelDB-style log of its protobuf ``Record`` messages:
# a 7-byte header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a
# 7-byte header (CRC32C, length, type: 1 full, 2 first, 3 middle, 4 last).
_BLOCK = 32768
_HEADER = 7


def read_records(path: Path) -> Iterator[Any]:
    """The ``wandb_internal_pb2.Record`` messages of one ``.wandb`` file, decoded with wandb's own
    protobuf classes; a record cut by a kill ends the file."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb run file")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        if len(chunk) < length or kind not in (1, 2, 3, 4):
            return
        pos += _HEADER + length
        if kind == 1:
            payload = chunk
        elif kind == 2:
            pending = chunk
            continue
        elif kind == 3:
            pending += chunk
            continue
        else:
            payload, pending = pending + chunk, b""
        record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
        try:
            record.ParseFromString(payload)
        except Exception:
            return
        yield record


def history_rows(path: Path) -> list[dict[str, Any]]:
    """The history rows (logged dicts) of one ``.wandb`` file, values decoded from JSON."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in record.history.item:
            try:
                value = json.loads(item.value_json)
            except ValueError:
                value = item.value_json
            if item.key or len(item.nested_key) == 1:  # a logged key, which may hold "/"
                row[item.key or item.nested_key[0]] = value
            elif item.nested_key:  # a part of a logged object (images): under the logged key
                row.setdefault(item.nested_key[0], {})["/".join(item.nested_key[1:])] = value
        rows.append(row)
    return rows


def run_files(root: Path, key: str) -> list[Path]:
    """Every ``.wandb`` file of run ``key`` under a wandb folder, oldest start first."""

    def started(path: Path) -> str:
        found = re.search(r"\d{8}_\d{6}", path.parent.name)
        return found.group(0) if found else ""

    return sorted(root.glob(f"*run-*-{key}/run-{key}.wandb"), key=started)


def history_steps(root: Path, key: str, exclude: str | None = None) -> dict[str, set[int]]:
    """By metric key, the trainer steps the run's earlier starts logged."""
    seen: dict[str, set[int]] = {}
    for path in run_files(root, key):
        if exclude and Path(exclude).resolve().parent == path.parent.resolve():
            continue
        for row in history_rows(path):
            step = row.get(STEP_KEY)
            if not isinstance(step, (int, float)):
                continue
            for name in row:
                if name != STEP_KEY and not name.startswith("_"):
                    seen.setdefault(name, set()).add(int(step))
    return seen


# --------------------------------------------------------------------------------------------
# MLflow


def _mlflow_env() -> None:
    """Seconds, not minutes: MLflow retries a failed request 7 times with backoff by default."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(MLFLOW_REQUEST_TIMEOUT_S))


def probe_mlflow(uri: str) -> str | None:
    """None when the tracking URI can be used, else why not (a server's /health, a database's folder)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S) as answer:
                if answer.status != 200:
                    return f"{uri}/health answered {answer.status}"
        except (OSError, urllib.error.URLError, ValueError) as error:
            return f"{uri}/health: {short(error)}"
        return None
    if parsed.scheme == "sqlite":
        database = Path(uri.removeprefix("sqlite:///"))
        if not uri.startswith("sqlite:///") or not database.parent.is_dir():
            return f"the database's folder {database.parent} does not exist (write sqlite:////absolute/path.db)"
    return None


class MlflowBackend:
    key = "track.mlflow_uri"

    def __init__(self, ident: Identity, client: Any, run_id: str) -> None:
        self.ident = ident
        self.client = client
        self.run_id = run_id
        self.what = f"MLflow ({ident.track.mlflow_uri})"

    def logged(self) -> dict[str, set[int]]:
        seen: dict[str, set[int]] = {}
        for name in self.client.get_run(self.run_id).data.metrics:
            seen[name] = {m.step for m in self.client.get_metric_history(self.run_id, name)}
        return seen

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), v, now, step) for k, v in values.items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000], synchronous=True)

    def images(self, key: str, files: Sequence[Path], step: int) -> None:
        for file in files:
            self.client.log_artifact(self.run_id, str(file), artifact_path=f"{_mlflow_key(key)}/step-{step}")

    def summary(self, values: Mapping[str, Any]) -> None:
        for name, value in values.items():
            text = value if isinstance(value, str) else json.dumps(value)
            self.client.set_tag(self.run_id, _mlflow_key(name), text[:5000])

    def close(self, finished: bool, failed: bool) -> None:
        if failed or finished:
            self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


def _mlflow_key(name: str) -> str:
    """MLflow takes letters, digits, _ - . space / in a key."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


def open_mlflow(ident: Identity) -> MlflowBackend | None:
    uri = ident.track.mlflow_uri.strip()
    problem = probe_mlflow(uri)
    if problem:
        warn(f"track.mlflow_uri={uri} cannot be used ({problem}); MLflow is off for this job. Start the tracking "
             "server (mlflow server on the login node) or fix track.mlflow_uri; the run's JSONL and TensorBoard "
             "files still hold everything.")  # fmt: skip
        return None
    _mlflow_env()
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        # a new SQLite database is made (its tables migrated) by the first client: one job at a time
        database = Path(uri.removeprefix("sqlite:///") + ".lock") if uri.startswith("sqlite:///") else None
        with (
            locks.held(database, f"the MLflow database {uri}", wait_s=120.0) if database else contextlib.nullcontext(),
            locks.held(ident.folder / ".mlflow.lock", f"the MLflow run of {ident.run_id}", wait_s=120.0),
        ):
            run_id = _find_or_create(ident, client, uri)
    except Exception as error:
        warn(f"track.mlflow_uri={uri}: MLflow could not open the run ({short(error)}); MLflow is off for this job. "
             "Check the server or database at track.mlflow_uri.")  # fmt: skip
        return None
    return MlflowBackend(ident, client, run_id)


def _experiment_id(ident: Identity, client: Any, uri: str) -> str:
    found = client.get_experiment_by_name(ident.project)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if uri.startswith("sqlite:///"):  # beside the database, not in the job's working folder
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").absolute().as_uri()
    try:
        return str(client.create_experiment(ident.project, artifact_location=location))
    except Exception:  # made at the same moment by another run's job
        found = client.get_experiment_by_name(ident.project)
        if found is None:
            raise
        return str(found.experiment_id)


def _find_or_create(ident: Identity, client: Any, uri: str) -> str:
    """The run's MLflow run: the one this folder recorded for this URI, else the one tagged with its
    key, else a new one (under the run folder's lock: one run however many jobs open it at once)."""
    record = ident.folder / "mlflow.json"
    with_key = None
    if record.is_file():
        with_key = json.loads(record.read_text()).get(uri)
    experiment = _experiment_id(ident, client, uri)
    if with_key:
        try:
            client.get_run(with_key)
        except Exception:
            with_key = None
    if not with_key:
        found = client.search_runs([experiment], filter_string=f"tags.`{RUN_KEY_TAG}` = '{ident.key}'", max_results=1)
        with_key = found[0].info.run_id if found else None
    if not with_key:
        from mlflow.entities import Param

        tags = {RUN_KEY_TAG: ident.key, "mlflow.runName": ident.run_id,
                **{f"cover_hpc.{k}": str(v) for k, v in ident.tags.items() if k != "job"},
                **{tag: "" for tag in ident.extra_tags}}  # fmt: skip
        run = client.create_run(experiment, run_name=ident.run_id, tags=tags)
        with_key = str(run.info.run_id)
        params = [Param(k, str(v)[:6000]) for k, v in _leaves(ident.config).items()]
        for start in range(0, len(params), 100):
            client.log_batch(with_key, params=params[start : start + 100])
    else:
        client.set_tag(with_key, "cover_hpc.slurm_job", ident.tags["slurm_job"])
        if ident.job == "train":  # a resumed training (after a stop, or a failure marked FAILED) runs again
            client.update_run(with_key, status="RUNNING")
    known = json.loads(record.read_text()) if record.is_file() else {}
    atomic.write_json(record, {**known, uri: with_key})
    return str(with_key)


def _leaves(config: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's dotted keys as tracker parameters (the sweep left out: each run's own values are set)."""
    return {key: json.dumps(value) if isinstance(value, (list, dict)) else value
            for key, value in dotted_leaves(config).items() if key != "sweep"}  # fmt: skip
