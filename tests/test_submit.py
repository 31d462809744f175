"""Submission without a cluster: sbatch options, profiles, pre-flight checks, dry runs, the local executor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cover_hpc.orchestrate.submit import load_profile, slurm_parameters, with_profile
from cover_hpc.spec.schema import SlurmConfig, SpecError

from .conftest import REPO


def test_resources_in_user_terms_become_sbatch_options() -> None:
    gpu = SlurmConfig(nodes=2, gpus_per_node=4, cpus_per_gpu=8, mem_per_gpu_gb=60, time_min=90, signal_lead_s=120,
                      partition="gpu", account="lab", array_parallelism=3, setup=("module load cuda",))  # fmt: skip
    train = slurm_parameters(gpu, "train", "x-train")
    assert (train["nodes"], train["ntasks_per_node"], train["gpus_per_node"], train["cpus_per_task"]) == (2, 4, 4, 8)
    assert (train["mem_per_gpu"], train["time"], train["signal_delay_s"]) == ("60G", 90, 120)
    assert (train["partition"], train["account"], train["array_parallelism"]) == ("gpu", "lab", 3)
    assert train["setup"] == ["trap : USR2", "module load cuda"] and train["additional_parameters"] == {"requeue": True}
    validate = slurm_parameters(gpu, "validate", "x-validate")
    assert (validate["nodes"], validate["ntasks_per_node"], validate["gpus_per_node"]) == (1, 1, 1)
    cpu = slurm_parameters(SlurmConfig(gpus_per_node=0, tasks_per_node=2, mem_per_gpu_gb=3), "train", "c")
    assert cpu["ntasks_per_node"] == 2 and cpu["mem"] == "6G" and "gpus_per_node" not in cpu


def test_the_local_executor_starts_every_process_of_a_multi_node_run_here() -> None:
    from cover_hpc.orchestrate.submit import local_parameters

    train = local_parameters(SlurmConfig(nodes=2, gpus_per_node=0, tasks_per_node=3), "train")
    assert (train["nodes"], train["tasks_per_node"]) == (1, 6)  # same world size as on the cluster
    gpu = local_parameters(SlurmConfig(nodes=2, gpus_per_node=4), "train")
    assert (gpu["tasks_per_node"], gpu["gpus_per_node"]) == (8, 8)
    assert local_parameters(SlurmConfig(nodes=2, gpus_per_node=4), "validate")["tasks_per_node"] == 1


def test_profiles_fill_what_the_spec_leaves_empty() -> None:
    profile = load_profile("example-gpu-cluster")
    merged = with_profile(SlurmConfig(partition="mine"), profile)
    assert merged.partition == "mine" and merged.account == "my-lab" and merged.setup[0] == "module load cuda/12.4"
    with pytest.raises(SpecError, match=r"unknown profile 'nope'.*example-gpu-cluster"):
        load_profile("nope")


def cli(*args: str, cwd: Path = REPO, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("cover-hpc") or str(Path(sys.executable).parent / "cover-hpc")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def spec_file(tmp: Path, model: Path, data_dir: Path, **extra: Any) -> Path:
    spec: dict[str, Any] = {
        "name": "sub",
        "output_dir": str(tmp / "experiments"),
        "model": {"pretrained": str(model)},
        "data": {"train_dir": str(data_dir / "train_set"), "test_dir": str(data_dir / "test_set"), "size": [64, 64],
                 "num_workers": 0, "cache_dir": str(tmp / "cache")},
        "lora": {"rank": 4, "alpha": 4},
        "train": {"batch_size": 4, "max_steps": 4, "mixed_precision": "no", "checkpoint_every": 2},
        "validate": {"num_prompts": 2, "steps": 2, "batch_size": 2, "baseline": False},
        "infer": {"books_file": str(data_dir / "books.jsonl"), "shards": 2, "steps": 2, "size": [64, 64],
                  "batch_size": 4},
        "slurm": {"gpus_per_node": 0, "cpus_per_gpu": 1, "mem_per_gpu_gb": 2, "time_min": 20, "signal_lead_s": 30},
    }  # fmt: skip
    for section, values in extra.items():
        spec.setdefault(section, {}).update(values)
    path = tmp / "spec.yaml"
    path.write_text(json.dumps(spec))
    return path


def test_missing_data_folder_is_rejected_before_anything_is_queued(tmp_path: Path, tiny_model_dir: Path,
                                                                   demo_data_dir: Path) -> None:  # fmt: skip
    path = spec_file(tmp_path, tiny_model_dir, demo_data_dir, data={"train_dir": str(tmp_path / "missing")})
    result = cli("submit", str(path), "--executor", "slurm")
    assert result.returncode == 2
    assert "data.train_dir: folder" in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "experiments" / "sub" / "experiment.json").exists()


def test_dry_run_shows_the_scripts_with_missing_data_as_warnings(tmp_path: Path, tiny_model_dir: Path,
                                                                demo_data_dir: Path) -> None:  # fmt: skip
    """On a login node before the data is staged: the sbatch scripts, and what submitting would refuse."""
    path = spec_file(tmp_path, tiny_model_dir, demo_data_dir, data={"train_dir": str(tmp_path / "not-yet")},
                     infer={"books_file": str(tmp_path / "books-later.jsonl")})  # fmt: skip
    result = cli("submit", str(path), "--executor", "slurm", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "# warning: data.train_dir: folder" in result.stdout and "not-yet" in result.stdout
    assert "# warning: infer.books_file: file" in result.stdout
    assert "#!/bin/bash" in result.stdout and "cover_hpc.job" in result.stdout
    assert not (tmp_path / "experiments").exists()


def test_dry_run_prints_the_array_and_the_dependency_graph(tmp_path: Path, tiny_model_dir: Path,
                                                           demo_data_dir: Path) -> None:  # fmt: skip
    path = spec_file(tmp_path, tiny_model_dir, demo_data_dir, sweep={"grid": {"lora.rank": [4, 8]}},
                     validate={"tasks": 3})  # fmt: skip
    result = cli("submit", str(path), "--executor", "slurm", "--dry-run", "--profile", "local")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "train: one array of 2 task(s)" in out and "#SBATCH --array=0-1%" in out
    assert out.count("train -> validate[3] -> infer[2]") == 2 and "#SBATCH --array=0-2%" in out
    assert out.count("#SBATCH --dependency='afterok:<train job of") == 2
    assert "#SBATCH --dependency='afterok:<validate job of" in out and "#SBATCH --partition=debug" in out
    assert "#SBATCH --signal=USR2@30" in out and "#SBATCH --requeue" in out
    assert not (tmp_path / "experiments" / "sub" / "experiment.json").exists()


@pytest.mark.tiny
@pytest.mark.slow
def test_local_executor_runs_every_stage_then_resubmission_does_nothing(
    tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    from cover_hpc.demo.tiny_clip import build_tiny_transformers_clip

    clip = build_tiny_transformers_clip(tmp_path / "clip")
    path = spec_file(tmp_path, tiny_model_dir, demo_data_dir, validate={"clip_model": str(clip), "every_steps": 2},
                     infer={"typeset": True, "size": [768, 576]})  # fmt: skip
    result = cli("submit", str(path), "--executor", "local")
    assert result.returncode == 0, result.stderr[-3000:]
    for line in ("train done", "validate done", "infer shard 0 done", "infer shard 1 done", "report:"):
        assert line in result.stdout
    exp = tmp_path / "experiments" / "sub"
    status = json.loads(cli("status", str(exp), "--json").stdout)
    (row,) = status
    assert {s["state"] for s in row["stages"].values()} == {"done"}
    assert row["step"] == row["total_steps"] == 4 and row["requeues"] == 0 and row["clip_score"] is not None
    for key in ("lora", "validation", "manifest", "report"):
        assert Path(row[key]).is_file(), key
    validation = json.loads(Path(row["validation"]).read_text())
    assert [p["step"] for p in validation["points"]] == [2, 4] and row["best"]["step"] in (2, 4)
    # finished covers (infer.typeset): art and typeset cover side by side, every title read back by OCR
    records = [json.loads(line) for line in Path(row["manifest"]).read_text().splitlines()]
    finished = [r for r in records if r["image"]]
    assert len(records) == 7 and len(finished) >= 6 and {r["checkpoint_step"] for r in records} == {row["best"]["step"]}
    for record in finished:
        assert (Path(row["manifest"]).parent / record["art"]).is_file() and record["contrast"] >= 4.5
        assert record["ocr"]["title"]["similarity"] >= 0.5, record["ocr"]
    assert "art" in Path(row["report"]).read_text()
    again = cli("submit", str(path), "--executor", "local")
    assert "0 of 1 runs had stages to run" in again.stdout
    assert "train done" not in again.stdout
    logs = cli("logs", str(exp), row["run_id"], "--stage", "train")
    assert logs.returncode == 0 and "log.out" in logs.stdout
    assert not any(p.name == "%j" for p in exp.rglob("*"))  # no folder literally named %j
    # training a finished run again leaves it (and its result) exactly as it was
    result_file = exp / row["run_id"] / "train" / "train_result.json"
    before = result_file.read_bytes()
    again = cli("train", str(path))
    assert again.returncode == 0 and "already finished" in again.stdout, again.stdout + again.stderr[-2000:]
    assert result_file.read_bytes() == before


def test_submitting_from_inside_a_slurm_job_drops_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from cover_hpc.orchestrate.submit import _slurm_env_cleaned

    for key, value in {"SLURM_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "2", "SBATCH_PARTITION": "x",
                       "SLURM_CONF": "/etc/slurm.conf"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    _slurm_env_cleaned()
    assert "SLURM_JOB_ID" not in os.environ and "SBATCH_PARTITION" not in os.environ
    assert os.environ["SLURM_CONF"] == "/etc/slurm.conf"


@pytest.mark.tiny
@pytest.mark.slow
def test_debug_executor_runs_the_stages_in_process(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    from cover_hpc.demo.tiny_clip import build_tiny_transformers_clip

    clip = build_tiny_transformers_clip(tmp_path / "clip")
    path = spec_file(tmp_path, tiny_model_dir, demo_data_dir, validate={"clip_model": str(clip)},
                     infer={"books_file": None})  # fmt: skip
    result = cli("submit", str(path), "--executor", "debug")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train done" in result.stdout and "validate done" in result.stdout
    (row,) = json.loads(cli("status", str(tmp_path / "experiments" / "sub"), "--json").stdout)
    assert row["stages"]["train"]["state"] == row["stages"]["validate"]["state"] == "done"


def test_a_profile_is_read_as_strictly_as_a_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Profile values reach the batch script too: no control characters, no odd names."""
    from cover_hpc.orchestrate import submit

    monkeypatch.setattr(submit, "PROFILES", tmp_path)
    (tmp_path / "evil.yaml").write_text('partition: "gpu\\ntouch /tmp/pwned"\nsetup: ["module load x", "a\\rb"]\n')
    with pytest.raises(SpecError) as error:
        load_profile("evil")
    assert "slurm.partition" in str(error.value) and "control character" in str(error.value)
    assert "slurm.setup" in str(error.value)
    (tmp_path / "twice.yaml").write_text("partition: a\npartition: b\n")
    with pytest.raises(SpecError, match="given twice"):
        load_profile("twice")
    with pytest.raises(SpecError, match="unknown profile"):
        load_profile("../twice")
