"""Experiment tracking (spec section ``track``), for real and with no network: a real MLflow tracking
server on localhost that two training processes log to at once, a SQLite database without a server,
wandb's own offline run files across a requeue, trackers that are down, and GPU-hours in ``status``.

A requeue after a kill -9 is simulated by training past a checkpoint, stopping, and deleting the
newest checkpoint: the next start re-trains steps it had already logged, which must not be logged twice.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cover_hpc.runtime.env import free_port
from cover_hpc.spec.load import load_spec
from cover_hpc.spec.schema import SpecError
from cover_hpc.spec.sweep import Run, expand
from cover_hpc.stages.validate import validate
from cover_hpc.store import checkpoint
from cover_hpc.store.paths import RunPaths
from cover_hpc.store.runs import prepare_run

from .conftest import REPO

pytestmark = [pytest.mark.tiny]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cover_hpc.demo.tiny_clip import build_tiny_transformers_clip

    return build_tiny_transformers_clip(tmp_path_factory.mktemp("clip") / "clip")


def write_spec(tmp: Path, model: Path, data: Path, clip: Path | None = None, **sections: Any) -> Path:
    spec: dict[str, Any] = {
        "name": "tracked", "output_dir": str(tmp / "experiments"),
        "model": {"pretrained": str(model)},
        "data": {"train_dir": str(data / "train_set"), "test_dir": str(data / "test_set"), "size": [64, 64],
                 "num_workers": 0, "cache_dir": str(tmp / "cache")},
        "lora": {"rank": 4, "alpha": 4},
        "optim": {"lr_unet": 1e-3, "warmup_steps": 1},
        "train": {"batch_size": 4, "max_steps": 8, "mixed_precision": "no", "checkpoint_every": 3, "seed": 1},
        "validate": {"num_prompts": 2, "steps": 2, "batch_size": 2, "every_steps": 4, "loss_images": 2,
                     "cmmd": False, "ocr": False, "clip_model": str(clip or "")},
    }  # fmt: skip
    for section, values in sections.items():
        spec.setdefault(section, {}).update(values)
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "spec.yaml"
    path.write_text(json.dumps(spec))
    return path


def runs(spec_path: Path) -> list[tuple[Run, RunPaths]]:
    spec = load_spec(spec_path)
    return [(run, prepare_run(spec, run)) for run in expand(spec)]


def train_process(run: Path, stop_after: int | None = None, **env: str) -> subprocess.Popen[str]:
    args = [sys.executable, str(REPO / "jobs" / "train.py"), str(run)]
    if stop_after is not None:
        args += ["--stop-after", str(stop_after)]
    environ = {**os.environ, "COVER_HPC_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **env}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ, cwd=REPO)


def finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, f"exit {process.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    return err


def requeue_after_a_kill(paths: RunPaths) -> None:
    """Train to step 6 (checkpoints at 3 and 6) and lose the checkpoint of step 6, as a kill -9 between
    logging step 6 and checkpointing it would; then train to the end from step 3."""
    finish(train_process(paths.root, stop_after=6))
    newest = checkpoint.latest(paths.checkpoints)
    assert newest is not None and checkpoint.read_progress(newest)[0].step == 6
    shutil.rmtree(newest)
    assert checkpoint.read_progress(checkpoint.latest(paths.checkpoints) or newest)[0].step == 3
    err = finish(train_process(paths.root))
    assert "resumed from" in err and "step 3" in err


def jsonl_steps(paths: RunPaths) -> list[int]:
    return [json.loads(line)["step"] for line in paths.metrics.read_text().splitlines()]


# --------------------------------------------------------------------------------------------
# MLflow


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on a free localhost port with a SQLite backend, as on a cluster's login node."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
            if answer.status == 200:
                break
        assert server.poll() is None, (root / "server.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "mlflow server did not answer /health in 180 s"
        time.sleep(0.5)
    yield uri
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
    log.close()


def mlflow_run(client: Any, paths: RunPaths, uri: str) -> Any:
    run_id = json.loads((paths.root / "tracking" / "mlflow.json").read_text())[uri]
    return client.get_run(run_id)


def history(client: Any, run: Any, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


def test_two_array_tasks_log_to_one_mlflow_server_at_once(
    tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path, clip: Path, mlflow_server: str
) -> None:
    from mlflow.tracking import MlflowClient

    spec = write_spec(tmp_path, tiny_model_dir, demo_data_dir, clip, track={"mlflow_uri": mlflow_server},
                      sweep={"grid": {"lora.rank": [4, 8]}})  # fmt: skip
    both = runs(spec)
    assert len(both) == 2
    processes = [train_process(paths.root) for _, paths in both]  # two array tasks, at once
    for process in processes:
        finish(process)
    for run, paths in both:
        validate(run.spec, paths)
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("tracked")  # track.project defaults to the spec's name
    assert experiment is not None
    found = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in found) == sorted(run.run_id for run, _ in both)  # one per run id
    for run, paths in both:
        tracked = mlflow_run(client, paths, mlflow_server)
        losses = client.get_metric_history(tracked.info.run_id, "loss")
        logged = [json.loads(line) for line in paths.metrics.read_text().splitlines()]
        assert [(m.step, m.value) for m in sorted(losses, key=lambda m: m.step)] == [
            (r["step"], pytest.approx(r["loss"])) for r in logged
        ]
        assert history(client, tracked, "lr/unet") == list(range(1, 9))
        points = json.loads(paths.selection.read_text())["points"]
        for point in points:
            prefix = {"base": "val_base", "ema": "val_ema"}.get(point["kind"], "val")
            (value,) = [m for m in client.get_metric_history(tracked.info.run_id, f"{prefix}/clip_score")
                        if m.step == point["step"]]  # fmt: skip
            assert value.value == pytest.approx(point["metrics"]["clip_score"])
        assert history(client, tracked, "val/clip_score") == [4, 8] and history(client, tracked, "val_base/clip_score")
        tags = tracked.data.tags
        best = json.loads(paths.selection.read_text())["best"]
        assert tags["selection/best_step"] == str(best["step"]) and tags["selection/metric"] == "clip_score"
        assert tags["cover_hpc.run_id"] == run.run_id and tags["cover_hpc.slurm_job"] == "local"
        assert tags["cover_hpc.user"] and tracked.data.params["lora.rank"] == str(run.spec.lora.rank)
        assert tracked.info.status == "FINISHED"
        images = [a.path for a in client.list_artifacts(tracked.info.run_id, "val/images/step-8")]
        assert len(images) == 2 and all(p.endswith(".png") for p in images)


def test_a_sqlite_uri_without_a_server_and_a_requeue_log_every_step_once(
    tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    (tmp_path / "db").mkdir()
    spec = write_spec(tmp_path, tiny_model_dir, demo_data_dir, track={"mlflow_uri": uri, "project": "group-covers"})
    ((_, paths),) = runs(spec)
    requeue_after_a_kill(paths)
    assert jsonl_steps(paths) == list(range(1, 9))
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("group-covers")
    (tracked,) = client.search_runs([experiment.experiment_id])  # the same run continued
    assert history(client, tracked, "loss") == list(range(1, 9))  # steps 4-6, trained twice, logged once
    assert tracked.info.status == "FINISHED"


# --------------------------------------------------------------------------------------------
# wandb


def test_wandb_offline_files_hold_one_run_continued_after_a_requeue(
    tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path, clip: Path
) -> None:
    from cover_hpc.track.remote import history_rows, read_records, run_files

    spec = write_spec(tmp_path, tiny_model_dir, demo_data_dir, clip, track={"wandb": "offline", "images": 1})
    ((run, paths),) = runs(spec)
    requeue_after_a_kill(paths)
    validate(run.spec, paths)
    root = paths.root / "tracking" / "wandb"
    folders = sorted(p.name for p in root.glob("offline-run-*"))
    ids = {name.rsplit("-", 2)[-2] + "-" + name.rsplit("-", 1)[-1] for name in folders}
    assert len(folders) == 3 and len({f.split("-", 3)[-1] for f in folders}) == 1, folders  # 2 trainings + validation
    key = folders[0].split("-", 3)[-1]
    assert key.startswith(run.run_id.replace(".", "-")[:40]) and ids
    files = run_files(root, key)
    assert len(files) == 3
    rows = [row for path in files for row in history_rows(path)]
    loss_steps = [row["trainer/step"] for row in rows if "loss" in row]
    assert loss_steps == list(range(1, 9))  # in order, none twice: steps 4-6 were re-trained, not re-logged
    logged = {json.loads(line)["step"]: json.loads(line)["loss"] for line in paths.metrics.read_text().splitlines()}
    assert {row["trainer/step"]: row["loss"] for row in rows if "loss" in row} == pytest.approx(logged)
    points = json.loads(paths.selection.read_text())["points"]
    val = {row["trainer/step"]: row["val/clip_score"] for row in rows if "val/clip_score" in row}
    assert val == pytest.approx({p["step"]: p["metrics"]["clip_score"] for p in points if p["kind"] != "base"})
    assert any("val/images" in row for row in rows)
    # TensorBoard too: validation's own event files beside its results, each point at its training step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (board,) = (paths.root / "validate").glob("*/tensorboard")
    events = [EventAccumulator(str(f.parent)) for f in board.glob("events.out.tfevents.*")]
    scalars = {e.step: e.value for acc in events for e in acc.Reload().Scalars("val/clip_score")}
    assert scalars == pytest.approx(val)
    kinds = [r.WhichOneof("record_type") for path in files for r in read_records(path)]
    runs_started = [r.run for path in files for r in read_records(path) if r.WhichOneof("record_type") == "run"]
    assert "history" in kinds and {r.run_id for r in runs_started} == {key}
    assert {r.project for r in runs_started} == {"tracked"} and "run_id:" + run.run_id in runs_started[0].tags
    summary = [r for path in files for r in read_records(path) if r.WhichOneof("record_type") == "summary"]
    keys = {item.key or "/".join(item.nested_key) for record in summary for item in record.summary.update}
    assert {"selection/best_step", "selection/metric"} <= keys
    # what the README tells to run on the login node finds every one of them (--dry-run: no network)
    wandb = Path(sys.executable).parent / "wandb"
    sync = subprocess.run([str(wandb), "sync", "--dry-run", *(str(f.parent) for f in files)], capture_output=True,
                          text=True, timeout=120, cwd=root, env={**os.environ, "WANDB_SILENT": "false"})  # fmt: skip
    assert sync.returncode == 0, sync.stderr
    assert all(f.parent.name in sync.stdout + sync.stderr for f in files) and "Would sync" in sync.stdout + sync.stderr


# --------------------------------------------------------------------------------------------
# A tracker that is down


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_trackers_that_are_down_cost_training_nothing_but_a_warning(
    tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    spec = write_spec(tmp_path, tiny_model_dir, demo_data_dir, train={"max_steps": 4},
                      track={"mlflow_uri": uri, "wandb": "online"})  # fmt: skip
    ((_, paths),) = runs(spec)
    started = time.monotonic()
    err = finish(train_process(paths.root, WANDB_BASE_URL=f"http://127.0.0.1:{closed_port()}", WANDB_API_KEY="x" * 40))
    assert time.monotonic() - started < 240
    warnings = [line for line in err.splitlines() if line.startswith("cover-hpc: warning:")]
    assert len(warnings) == 2, err[-3000:]
    mlflow, wandb = sorted(warnings)
    assert f"track.mlflow_uri={uri} cannot be used" in mlflow and "MLflow is off for this job" in mlflow
    assert "track.wandb=online" in wandb and "track.wandb=offline" in wandb and "wandb sync" in wandb
    assert jsonl_steps(paths) == [1, 2, 3, 4]  # the files hold everything
    assert list(paths.tensorboard.glob("events.out.tfevents.*"))
    assert json.loads(paths.train_result.read_text())["status"] == "finished"


def test_an_unreachable_server_is_given_up_in_seconds(tmp_path: Path) -> None:
    from cover_hpc.spec.schema import ExperimentSpec, TrackConfig
    from cover_hpc.track import open_tracker

    uri = f"http://127.0.0.1:{closed_port()}"
    spec = ExperimentSpec(name="x", track=TrackConfig(mlflow_uri=uri))
    err = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stderr(err):
        tracker = open_tracker(spec, RunPaths(tmp_path / "run"), "train")
        tracker.log({"loss": 1.0}, 1)
        tracker.close()
    assert time.monotonic() - started < 15 and not tracker.remotes
    assert err.getvalue().count("\n") == 1 and "track.mlflow_uri=" in err.getvalue()


# --------------------------------------------------------------------------------------------
# The spec


def test_track_keys_are_checked_and_described(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from cover_hpc.cli import main
    from cover_hpc.spec.checks import value_problems

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("track:\n  wandb: maybe\n")
    with pytest.raises(SpecError) as refused:
        load_spec(spec_file)
    assert "line 2: track.wandb: got 'maybe'; expected one of 'off', 'offline', 'online'" in str(refused.value)
    spec_file.write_text("track:\n  wandb: off\n  mlflow_uri: sqlite:///tmp/m.db\n")  # YAML 1.1 reads `off` as false
    spec = load_spec(spec_file)
    assert spec.track.wandb == "off" and spec.track.project == ""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    (problem,) = [p for p in value_problems(spec) if p.key.startswith("track")]
    assert problem.key == "track.mlflow_uri" and "pip install 'cover-hpc[track]'" in problem.message
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["keys", "track"]) == 0
    for key in ("track.wandb", "track.mlflow_uri", "track.project", "track.entity", "track.tags", "track.images"):
        assert key in out.getvalue()


def test_the_default_pipeline_imports_no_tracker_library() -> None:
    code = ("import sys, cover_hpc.stages.train, cover_hpc.stages.validate, cover_hpc.orchestrate.search, "
            "cover_hpc.track; print(sorted(m for m in ('wandb', 'mlflow') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]"


def test_a_search_rung_decision_reaches_the_trial_run(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from cover_hpc.orchestrate.search import Claim, track_decision

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps({"name": "searched", "output_dir": str(tmp_path / "exps"),
                                     "track": {"mlflow_uri": uri}}))  # fmt: skip
    ((run, paths),) = runs(spec_file)
    record = {"trial": 3, "step": 4, "metric": "heldout_loss", "value": 0.25, "rung_values": {"3": 0.25, "1": 0.5},
              "decision": "continue"}  # fmt: skip
    track_decision(Claim(0, 3, run), paths, record)
    track_decision(Claim(0, 3, run), paths, record)  # asked again after a requeue: logged once
    client = MlflowClient(tracking_uri=uri)
    tracked = mlflow_run(client, paths, uri)
    assert [(m.step, m.value) for m in client.get_metric_history(tracked.info.run_id, "search/heldout_loss")] == [
        (4, 0.25)
    ]
    assert history(client, tracked, "search/continue") == [4]
    assert tracked.data.tags["search/decision_step_4"] == "continue" and tracked.data.tags["search/trial"] == "3"


def test_a_tracker_failing_mid_job_is_turned_off_with_one_warning(tmp_path: Path) -> None:
    from cover_hpc.spec.schema import ExperimentSpec, TrackConfig
    from cover_hpc.track import open_tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = ExperimentSpec(name="x", track=TrackConfig(mlflow_uri=uri))
    paths = RunPaths(tmp_path / "run")
    tracker = open_tracker(spec, paths, "train", jsonl=tmp_path / "metrics.jsonl")
    tracker.log({"step": 1, "loss": 1.0}, 1)
    (remote,) = tracker.remotes

    class Down:
        def log_batch(self, *args: Any, **kwargs: Any) -> None:
            raise ConnectionError("Connection refused")

    remote.backend.client = Down()  # the server went away
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        for step in (2, 3):
            tracker.log({"step": step, "loss": 1.0 / step}, step)
        tracker.close(finished=True)
    assert err.getvalue().count("\n") == 1 and "track.mlflow_uri: MLflow" in err.getvalue()
    assert "Connection refused" in err.getvalue() and not tracker.remote
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
