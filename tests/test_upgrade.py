"""An upgrade in the middle of an experiment loses nothing: the fixture tests/fixtures/legacy_9d337f9
is an experiment made by release 9d337f9 (run ids hashed the whole spec; jobs pickled as
``cover_hpc.submit.TrainTask``): one run trained to the end, one stopped at step 3 of 6 with a
checkpoint, and two queued job pickles (see its README)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cover_hpc.spec.load import load_spec
from cover_hpc.spec.sweep import expand

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "legacy_9d337f9"
OLD_FINISHED, OLD_STOPPED = "lr_unet1e-3-3f587833", "lr_unet5e-4-8fd0f8d1"
pytestmark = pytest.mark.tiny


@pytest.fixture
def legacy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fixture copied into a fresh folder, with the model and data it was made on rebuilt."""
    from cover_hpc.demo.covers import make_demo_data
    from cover_hpc.demo.tiny_clip import build_tiny_transformers_clip
    from cover_hpc.demo.tiny_model import build_tiny_sdxl

    root = tmp_path / "legacy"
    shutil.copytree(FIXTURE, root, symlinks=True)
    monkeypatch.chdir(root)
    build_tiny_sdxl("model/tiny-sdxl", seed=0)
    build_tiny_transformers_clip("model/tiny-clip")
    make_demo_data("data", num_books=24, extra_books=4)
    return root


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "cover_hpc.cli", *args], capture_output=True, text=True, env=env,
                          timeout=900)  # fmt: skip


def _starts(run: Path) -> int:
    return len((run / "train" / "starts.jsonl").read_text().splitlines())


def test_plan_adopts_the_old_run_folders_and_resubmitting_trains_only_what_did_not_finish(legacy: Path) -> None:
    exp = legacy / "experiments" / "legacy"
    new_ids = [run.run_id for run in expand(load_spec("spec.yaml"))]
    assert set(new_ids).isdisjoint({OLD_FINISHED, OLD_STOPPED}), "the id rule changed; this fixture checks adoption"
    finished_starts = _starts(exp / OLD_FINISHED)
    finished_weights = (exp / OLD_FINISHED / "train" / "pytorch_lora_weights.safetensors").read_bytes()

    planned = _cli("plan", "spec.yaml")
    assert planned.returncode == 0, planned.stderr
    for old, new in zip((OLD_FINISHED, OLD_STOPPED), new_ids, strict=True):
        assert f"adopted run folder {old} (an earlier release's id) as {new}" in planned.stderr
        assert (exp / new).is_symlink() and (exp / new).resolve() == (exp / old).resolve()
    again = _cli("plan", "spec.yaml")
    assert "adopted" not in again.stderr, "adoption happens once"

    submitted = _cli("submit", "spec.yaml", "--executor", "local")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert _starts(exp / OLD_FINISHED) == finished_starts, "a finished run was trained again"
    assert (exp / OLD_FINISHED / "train" / "pytorch_lora_weights.safetensors").read_bytes() == finished_weights
    resumed = json.loads((exp / new_ids[1] / "train" / "train_result.json").read_text())
    assert resumed["status"] == "finished" and resumed["steps"] == 6
    assert _starts(exp / OLD_STOPPED) == 2, "the stopped run resumed in its own folder (one start more)"
    assert {p.name for p in exp.iterdir() if p.is_dir() and not p.is_symlink() and "lr_unet" in p.name} == {
        OLD_FINISHED,
        OLD_STOPPED,
    }, "no run folder was made anew"
    status = _cli("status", str(exp))
    assert status.returncode == 0, status.stderr
    assert all(new in status.stdout for new in new_ids)


def test_a_job_queued_by_the_old_release_unpickles_and_runs(legacy: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "SUBMITIT_EXECUTOR": "local",
           "SUBMITIT_LOCAL_JOB_ID": "4242_1", "SUBMITIT_LOCAL_NTASKS": "1", "SUBMITIT_LOCAL_GLOBALID": "0",
           "SUBMITIT_LOCAL_LOCALID": "0", "SUBMITIT_LOCAL_NODEID": "0",
           "SUBMITIT_LOCAL_JOB_NUM_NODES": "1"}  # fmt: skip
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    command = [sys.executable, "-u", "-m", "cover_hpc.job", "-u", "-m", "submitit.core._submit", "jobs"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    outcome, result = pickle.loads((legacy / "jobs" / "4242_1_0_result.pkl").read_bytes())
    assert outcome == "success", result
    assert result["status"] == "finished" and result["steps"] == 6
    train_result = legacy / "experiments" / "legacy" / OLD_STOPPED / "train" / "train_result.json"
    assert json.loads(train_result.read_text())["steps"] == 6
