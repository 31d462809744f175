"""The SLURM pipeline on a real local cluster (slurm/local): arrays, dependencies, preemption, re-submission."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from .conftest import REPO
from .test_submit import cli, spec_file

pytestmark = [pytest.mark.slurm, pytest.mark.tiny, pytest.mark.slow]


def tiny_clip(tmp: Path) -> str:
    from cover_hpc.demo.tiny_clip import build_tiny_transformers_clip

    return str(build_tiny_transformers_clip(tmp / "clip"))


def validated(run: Path) -> bool:
    """Whether a run has a finished validation (one folder per validation settings)."""
    return any((run / "validate").glob("*/validation.json"))


def run_rows(exp: Path) -> list[dict[str, Any]]:
    result = cli("status", str(exp), "--json")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def step_processes(job: str, node: str | None = None) -> list[int]:
    """The live processes of a job's steps (srun's tasks, not the batch script or srun), on ``node`` or
    on every node, found by their environment: the nodes share this machine's PIDs. ``job`` is as
    squeue shows it, "12" or an array task "12_3"."""
    array, _, task = job.partition("_")
    want = {"SLURM_ARRAY_JOB_ID": array, "SLURM_ARRAY_TASK_ID": task} if task else {"SLURM_JOB_ID": job}
    if node is not None:
        want["SLURMD_NODENAME"] = node
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            raw = (proc / "environ").read_bytes()
            alive = "\nState:\tZ" not in (proc / "status").read_text()
        except OSError:  # gone, or not ours to read
            continue
        environ = dict(item.decode(errors="replace").partition("=")[::2] for item in raw.split(b"\0") if item)
        if alive and "SLURM_STEP_ID" in environ and all(environ.get(k) == v for k, v in want.items()):
            found.append(int(proc.name))
    return sorted(found)


def process_state(pid: int) -> str:
    """The state letter of a process (R, S, T for stopped, Z...), "" if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ""
    return next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "")


def signal_pending(pid: int, signum: int) -> bool:
    """Whether ``signum`` waits to be delivered to process ``pid`` (to it or its thread group)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    masks = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(mask >> (signum - 1) & 1 for mask in masks)


def wait_signalled(pids: list[int], signum: int, limit_s: float = 60) -> None:
    """Wait until ``signum`` (sent by SLURM, which takes its time) has reached the held ``pids``: pending
    on one of them, or one running again or gone (a cancel sends SIGCONT, then SIGTERM)."""
    deadline = time.monotonic() + limit_s
    while not any(signal_pending(pid, signum) or process_state(pid) not in ("T", "t") for pid in pids):
        assert time.monotonic() < deadline, f"{signal.Signals(signum).name} never reached processes {pids}"
        time.sleep(0.02)


@contextlib.contextmanager
def held(job: str, node: str | None = None, required: bool = True) -> Iterator[list[int]]:
    """Hold a running job where it is: SIGSTOP to its steps' processes (on ``node``, else on all), SIGCONT
    on leaving. What a test must do while the job is at a known point (not finished, however fast the
    machine) it does inside; a signal sent meanwhile stays pending and is delivered on leaving. Yields
    the processes held, none if the job has none (then ``required`` fails the test)."""
    pids = step_processes(job, node)
    assert pids or not required, f"job {job} has no step processes{f' on {node}' if node else ''} to hold"
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while not all(process_state(pid) in ("T", "X", "Z", "") for pid in pids):  # stopped (or gone)
            assert time.monotonic() < deadline, f"processes {pids} of job {job} did not stop"
            time.sleep(0.01)
        yield [pid for pid in pids if process_state(pid) == "T"]
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def test_sweep_runs_as_an_array_with_dependent_stages_then_resubmits_nothing(
    slurm_cluster: str, tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    path = spec_file(tmp_path, tiny_model_dir, demo_data_dir, validate={"clip_model": tiny_clip(tmp_path)},
                     sweep={"grid": {"lora.rank": [4, 8]}})  # fmt: skip
    result = cli("submit", str(path), "--profile", "local", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    exp = tmp_path / "experiments" / "sub"
    rows = run_rows(exp)
    assert len(rows) == 2
    train_jobs = [r["stages"]["train"]["job"] for r in rows]
    assert train_jobs[0].split("_")[0] == train_jobs[1].split("_")[0]  # one array
    assert {t.split("_")[1] for t in train_jobs} == {"0", "1"}
    for row in rows:
        assert {s["state"] for s in row["stages"].values()} == {"done"}, row
        assert len(row["stages"]["infer"]["jobs"]) == 2
    assert (exp / "report" / "index.html").is_file()
    again = cli("submit", str(path), "--profile", "local")
    assert "0 of 2 runs had stages to submit" in again.stdout, again.stdout + again.stderr
    assert "train -  validate -  infer -" in again.stdout


def test_preempted_array_task_resumes_to_the_same_lora(
    slurm_cluster: str, tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    path = spec_file(tmp_path, tiny_model_dir, demo_data_dir, train={"max_steps": 40, "checkpoint_every": 100},
                     validate={"clip_model": tiny_clip(tmp_path)}, infer={"books_file": None},
                     sweep={"grid": {"lora.rank": [4, 8]}})  # fmt: skip
    result = cli("submit", str(path), "--profile", "local")
    assert result.returncode == 0, result.stderr
    again = cli("submit", str(path), "--profile", "local")  # while queued or running: never doubled
    assert "0 of 2 runs had stages to submit" in again.stdout, again.stdout + again.stderr
    exp = tmp_path / "experiments" / "sub"
    row, other = run_rows(exp)
    job = row["stages"]["train"]["job"]
    assert job.endswith("_0") and other["stages"]["train"]["job"].endswith("_1")
    metrics = exp / row["run_id"] / "train" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 5):
        assert time.monotonic() < deadline, "training never reached step 5"
        time.sleep(0.05)
    with held(job) as pids:  # the signal lands mid-training, however fast the machine
        at = len(metrics.read_text().splitlines())
        assert at <= 40 - 3, f"training reached step {at} of 40 before it could be held: raise max_steps"
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=60)  # what SLURM sends before a kill
        wait_signalled(pids, signal.SIGUSR2)
    deadline = time.monotonic() + 600
    while not all(validated(exp / r["run_id"]) for r in (row, other)):
        assert time.monotonic() < deadline, cli("logs", str(exp), row["run_id"]).stdout[-4000:]
        time.sleep(2)
    result_file = json.loads((exp / row["run_id"] / "train" / "train_result.json").read_text())
    assert result_file["requeues"] == 1 and result_file["steps"] == 40
    other_result = json.loads((exp / other["run_id"] / "train" / "train_result.json").read_text())
    assert other_result["requeues"] == 0  # only the signalled task was requeued, not the whole array
    restarts = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=60).stdout
    assert "Restarts=1" in restarts  # SLURM requeued this very array task once
    logs = cli("logs", str(exp), row["run_id"]).stdout
    assert "resumed from" in logs and f"requeueing {job}" in logs
    assert run_rows(exp)[0]["requeues"] == 1
    # the same run, never interrupted, in one process with the same thread count
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "config.json").write_text((exp / row["run_id"] / "config.json").read_text())
    env = {**os.environ, "COVER_HPC_THREADS": "1"}
    subprocess.run([sys.executable, str(REPO / "jobs" / "train.py"), str(reference)], check=True, env=env,
                   capture_output=True, timeout=600)  # fmt: skip
    ours = load_file(exp / row["run_id"] / "train" / "pytorch_lora_weights.safetensors")
    theirs = load_file(reference / "train" / "pytorch_lora_weights.safetensors")
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)
    losses = [json.loads(line)["loss"] for line in metrics.read_text().splitlines()]
    reference_losses = [json.loads(line)["loss"] for line in (reference / "train" / "metrics.jsonl").open()]
    assert losses == reference_losses


def test_a_request_slurm_refuses_is_shown_and_nothing_stays_queued(
    slurm_cluster: str, tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    path = spec_file(tmp_path, tiny_model_dir, demo_data_dir, slurm={"partition": "no-such-partition"},
                     validate={"clip_model": tiny_clip(tmp_path)})  # fmt: skip
    result = cli("submit", str(path))
    assert result.returncode == 1
    assert "SLURM refused the submission" in result.stderr and "invalid partition" in result.stderr.lower()
    assert "Traceback" not in result.stderr
    queued = subprocess.run(["squeue", "-h", "-n", "sub-train,sub-validate,sub-infer,sub-report"],
                            capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    assert queued.strip() == ""


def test_failed_run_skips_its_later_stages_and_the_report_lists_it(
    slurm_cluster: str, tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    path = spec_file(tmp_path, tiny_model_dir, demo_data_dir, validate={"clip_model": tiny_clip(tmp_path)},
                     sweep={"grid": {"train.noise_offset": [0.0, 1e38]}})  # fmt: skip
    result = cli("submit", str(path), "--profile", "local", "--wait")
    assert result.returncode == 1 and "1 run(s) failed" in result.stdout, result.stdout + result.stderr[-2000:]
    exp = tmp_path / "experiments" / "sub"
    rows = {r["swept"]["train.noise_offset"]: r for r in run_rows(exp)}
    good, bad = rows[0.0], rows[1e38]
    assert {s["state"] for s in good["stages"].values()} == {"done"}
    assert bad["stages"]["train"]["state"] == "failed"
    assert bad["stages"]["validate"]["state"] == "cancelled"  # afterok never satisfied: never ran
    assert not validated(exp / bad["run_id"])
    summary = (exp / "report" / "summary.md").read_text()
    assert "## Failures" in summary and bad["run_id"] in summary and "loss became" in summary


def test_two_tasks_on_one_node_train_one_run_together(
    slurm_cluster: str, tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    path = spec_file(tmp_path, tiny_model_dir, demo_data_dir, slurm={"tasks_per_node": 2},
                     train={"batch_size": 2}, validate={"clip_model": tiny_clip(tmp_path)},
                     infer={"books_file": None})  # fmt: skip
    result = cli("submit", str(path), "--profile", "local", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    exp = tmp_path / "experiments" / "sub"
    (row,) = run_rows(exp)
    train_result = json.loads((exp / row["run_id"] / "train" / "train_result.json").read_text())
    assert train_result["world_size"] == 2 and train_result["status"] == "finished"
    logs = cli("logs", str(exp), row["run_id"]).stdout
    assert "rank 0 of 2" in logs and "rank 1 of 2" in logs


def test_snapshot_validation_is_an_array_that_resumes_when_stopped_and_picks_the_lora_for_inference(
    slurm_cluster: str, tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    """Snapshots every 4 steps of 12 validated by a 2-task array; task 0 gets SLURM's warning signal
    once its first point is scored: it is requeued, the scored point is not scored again, and both
    tasks complete. The last one selects; inference (afterok on the whole array) uses the choice."""
    from .test_preemption import restarts, sacct_state

    path = spec_file(tmp_path, tiny_model_dir, demo_data_dir, train={"max_steps": 12, "checkpoint_every": 4},
                     validate={"clip_model": tiny_clip(tmp_path), "every_steps": 4, "tasks": 2, "num_prompts": 4,
                               "steps": 40, "batch_size": 1},
                     infer={"shards": 1, "typeset": True, "size": [768, 576]})  # fmt: skip
    result = cli("submit", str(path), "--profile", "local")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    exp = tmp_path / "experiments" / "sub"
    (row,) = run_rows(exp)
    first, second = row["stages"]["validate"]["jobs"]
    assert first.endswith("_0") and second.endswith("_1") and first.split("_")[0] == second.split("_")[0]
    run = exp / row["run_id"]
    # points: step 4, 8 and the final 12 (no base model here); task 0 has steps 4 and 12, task 1 step 8
    deadline = time.monotonic() + 900
    while not list(run.glob("validate/*/points/step-00000004/metrics.json")):
        assert time.monotonic() < deadline, cli("logs", str(exp), row["run_id"], "--stage", "validate").stdout[-4000:]
        time.sleep(0.05)
    (scored,) = run.glob("validate/*/points/step-00000004/metrics.json")
    written = scored.stat().st_mtime_ns
    with held(first) as pids:  # the signal lands before task 0's last point, however fast the machine
        assert not list(run.glob("validate/*/points/step-00000012/metrics.json")), (
            "task 0 scored its last point before it could be held: raise validate.steps")  # fmt: skip
        subprocess.run(["scancel", "--signal=USR2", first], check=True, timeout=60)
        wait_signalled(pids, signal.SIGUSR2)
    deadline = time.monotonic() + 900
    while not (validated(run) and list(run.glob("infer/*/manifest.jsonl"))):
        assert time.monotonic() < deadline, cli("logs", str(exp), row["run_id"], "--stage", "validate").stdout[-4000:]
        time.sleep(2)
    assert restarts(first) >= 1 and restarts(second) == 0
    assert sacct_state(first) == sacct_state(second) == "COMPLETED"
    assert scored.stat().st_mtime_ns == written  # the point scored before the stop was not scored again
    validation = json.loads(next(run.glob("validate/*/validation.json")).read_text())
    assert [p["step"] for p in validation["points"]] == [4, 8, 12]
    best = validation["best"]["step"]
    (status_row,) = run_rows(exp)
    assert status_row["best"]["step"] == best and status_row["stages"]["validate"]["state"] == "done"
    manifest = next(run.glob("infer/*/manifest.jsonl")).read_text().splitlines()
    assert {json.loads(line)["checkpoint_step"] for line in manifest} == {best}
    finished = [json.loads(line) for line in manifest if json.loads(line)["image"]]  # infer.typeset on SLURM
    folder = next(run.glob("infer/*/manifest.jsonl")).parent
    assert len(finished) >= 6 and all(r["contrast"] >= 4.5 and (folder / r["art"]).is_file() for r in finished)
    assert (run / "best" / "pytorch_lora_weights.safetensors").is_file()
    text = cli("status", str(exp)).stdout
    assert f"step {best}: clip_score" in text
    again = cli("submit", str(path), "--profile", "local")
    assert "0 of 1 runs had stages to submit" in again.stdout, again.stdout + again.stderr
