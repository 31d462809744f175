"""One training run across two nodes of a real SLURM cluster (slurm/local with two network-namespace
nodes): the same LoRA as one node, whole-job requeue after preemption, and the loss of a node."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from .conftest import REPO
from .test_slurm import held, process_state, run_rows, tiny_clip, validated, wait_signalled
from .test_submit import cli, spec_file

pytestmark = [pytest.mark.slurm, pytest.mark.tiny, pytest.mark.slow]

CPU = {"gpus_per_node": 0, "cpus_per_gpu": 1, "mem_per_gpu_gb": 2, "time_min": 20, "signal_lead_s": 30}
TWO_NODES = {**CPU, "nodes": 2}
ONE_NODE_TWO_TASKS = {**CPU, "nodes": 1, "tasks_per_node": 2}
NODE_SH = REPO / "slurm" / "local" / "node.sh"


def experiment(tmp: Path, name: str, model: Path, data: Path, clip: str, slurm: dict[str, Any],
               **extra: dict[str, Any]) -> Path:  # fmt: skip
    folder = tmp / name
    folder.mkdir()
    train = {"batch_size": 2, **extra.pop("train", {})}
    return spec_file(folder, model, data, slurm=slurm, train=train, validate={"clip_model": clip},
                     infer={"books_file": None}, **extra)  # fmt: skip


def exp_dir(spec: Path) -> Path:
    return spec.parent / "experiments" / "sub"


def submit(spec: Path) -> dict[str, Any]:
    result = cli("submit", str(spec), "--profile", "local")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    (row,) = run_rows(exp_dir(spec))
    return row


def wait_finished(spec: Path, limit_s: float = 600) -> dict[str, Any]:
    """Wait for the run's validation (the last stage), then return its training result."""
    (row,) = run_rows(exp_dir(spec))
    run = exp_dir(spec) / row["run_id"]
    deadline = time.monotonic() + limit_s
    while not validated(run):
        if time.monotonic() > deadline:
            logs = cli("logs", str(exp_dir(spec)), row["run_id"]).stdout
            pytest.fail(f"{run} did not finish in {limit_s} s:\n{logs[-4000:]}")
        time.sleep(1)
    result: dict[str, Any] = json.loads((run / "train" / "train_result.json").read_text())
    return result


def lora_and_losses(spec: Path) -> tuple[dict[str, Any], list[float]]:
    (row,) = run_rows(exp_dir(spec))
    train = exp_dir(spec) / row["run_id"] / "train"
    weights = load_file(train / "pytorch_lora_weights.safetensors")
    losses = [json.loads(line)["loss"] for line in (train / "metrics.jsonl").read_text().splitlines()]
    return weights, losses


def assert_same_training(ours: Path, theirs: Path) -> None:
    (a, a_losses), (b, b_losses) = lora_and_losses(ours), lora_and_losses(theirs)
    assert a.keys() == b.keys() and a
    different = [k for k in a if not (a[k] == b[k]).all()]
    assert not different, f"{len(different)} of {len(a)} LoRA tensors differ, e.g. {different[:3]}"
    assert a_losses == b_losses


def train_logs(spec: Path) -> str:
    (row,) = run_rows(exp_dir(spec))
    return cli("logs", str(exp_dir(spec)), row["run_id"], "--stage", "train").stdout


def wait_steps(spec: Path, steps: int, limit_s: float = 300, poll_s: float = 0.3) -> None:
    (row,) = run_rows(exp_dir(spec))
    metrics = exp_dir(spec) / row["run_id"] / "train" / "metrics.jsonl"
    deadline = time.monotonic() + limit_s
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= steps):
        assert time.monotonic() < deadline, f"training never reached step {steps}:\n{train_logs(spec)[-3000:]}"
        time.sleep(poll_s)


def squeue_state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


@pytest.mark.parametrize("backend", ["ddp", "deepspeed"])
def test_two_nodes_train_the_same_lora_as_one_node_with_two_processes(
    slurm_cluster_2nodes: str, tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path, backend: str
) -> None:
    clip = tiny_clip(tmp_path)
    setup: dict[str, Any] = {"train": {"max_steps": 6}, "distributed": {"backend": backend}}
    two = experiment(tmp_path, "two", tiny_model_dir, demo_data_dir, clip, TWO_NODES, **setup)
    one = experiment(tmp_path, "one", tiny_model_dir, demo_data_dir, clip, ONE_NODE_TWO_TASKS, **setup)
    row = submit(two)
    submit(one)
    job = row["stages"]["train"]["job"]
    result = wait_finished(two)
    assert wait_finished(one)["world_size"] == result["world_size"] == 2
    assert result["status"] == "finished" and result["steps"] == 6
    # one task on each node, each resolving its own name to its own address
    logs = train_logs(two)
    assert "rank 0 of 2 on node1" in logs and "rank 1 of 2 on node2" in logs, logs[-3000:]
    nodes = subprocess.run(["sacct", "-n", "-X", "-j", job, "-o", "NNodes,NodeList%30"], capture_output=True,
                           text=True, timeout=60).stdout.split()  # fmt: skip
    assert nodes[:2] == ["2", "node[1-2]"], nodes
    assert_same_training(two, one)


def interruptible(tmp: Path, model: Path, data: Path, max_steps: int) -> tuple[Path, Path]:
    """A 2-node run to interrupt, and the same training (uninterrupted) on one node with two processes."""
    clip = tiny_clip(tmp)
    train = {"max_steps": max_steps, "checkpoint_every": 5}
    two = experiment(tmp, "two", model, data, clip, TWO_NODES, train=train)
    return two, experiment(tmp, "reference", model, data, clip, ONE_NODE_TWO_TASKS, train=train)


def test_preempted_two_node_run_requeues_whole_and_resumes_on_both_nodes(
    slurm_cluster_2nodes: str, tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    two, reference = interruptible(tmp_path, tiny_model_dir, demo_data_dir, max_steps=30)
    row = submit(two)
    job, metrics = row["stages"]["train"]["job"], exp_dir(two) / row["run_id"] / "train" / "metrics.jsonl"
    wait_steps(two, 7, poll_s=0.05)
    with held(job) as pids:  # on both nodes: the warning lands mid-training, however fast the machine
        at = len(metrics.read_text().splitlines())
        assert at <= 30 - 3, f"training reached step {at} of 30 before it could be held: raise max_steps"
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=60)  # SLURM's warning before a kill
        wait_signalled(pids, signal.SIGUSR2)
    submit(reference)  # after the signal: the reference does not slow the run to be interrupted
    result = wait_finished(two)
    wait_finished(reference)
    assert result["status"] == "finished" and result["requeues"] == 1 and result["steps"] == 30
    show = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=60).stdout
    assert "Restarts=1" in show and "NumNodes=2" in show, show
    logs = train_logs(two)
    assert f"requeueing {job}" in logs, logs[-4000:]
    for rank, node in ((0, "node1"), (1, "node2")):  # both starts, one task per node; both ranks resumed
        assert logs.count(f"rank {rank} of 2 on {node}") == 2, logs[-4000:]
        assert f"rank {rank} resumed from" in logs
    assert_same_training(two, reference)


def test_losing_a_node_ends_the_job_and_resubmission_resumes_from_the_checkpoint(
    slurm_cluster_2nodes: str, tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    steps = 60
    two, reference = interruptible(tmp_path, tiny_model_dir, demo_data_dir, max_steps=steps)
    row = submit(two)
    job = row["stages"]["train"]["job"]
    train = exp_dir(two) / row["run_id"] / "train"
    checkpoints = train / "checkpoints"
    wait_steps(two, 11, poll_s=0.05)
    # Held from here until the job has ended, whatever the machine's speed: rank 1 (node2) is stopped, and
    # rank 0 waits for it in an all-reduce a step later at most, so the run cannot finish before the
    # controller gives node2 up. Released afterwards, rank 1 finds rank 0 gone and exits, as it would have.
    with held(job, node="node2") as rank1:
        at = len((train / "metrics.jsonl").read_text().splitlines())
        assert at <= steps - 5 and not (train / "train_result.json").exists(), (
            f"training reached step {at} of {steps} before it could be held: raise max_steps")  # fmt: skip
        subprocess.run(["bash", str(NODE_SH), "kill-slurmd", "node2"], check=True, timeout=60)
        killed = time.monotonic()
        try:
            # The controller declares node2 DOWN (SlurmdTimeout=20 s) and ends the job on node1 too; with
            # --requeue SLURM puts it back in the queue, where it waits for two nodes.
            while squeue_state(job) in ("RUNNING", "COMPLETING"):
                assert time.monotonic() - killed < 120, (
                    f"job {job} still {squeue_state(job)} 120 s after node2 was lost"
                )
                time.sleep(1)
            ended_after, state = time.monotonic() - killed, squeue_state(job) or "ended"
            assert not (train / "train_result.json").exists()
            saved = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("step-*") if (p / "COMPLETE").exists())
            assert saved and saved[-1] >= 10, saved
            print(f"job {job} held at step {at}, stopped {ended_after:.1f} s after node2's slurmd was killed, then "
                  f"{state}; last checkpoint {saved[-1]}")  # fmt: skip
            assert state == "PENDING", state  # --requeue: SLURM queued it again, to wait for two nodes
            # As if it could not be requeued (requeue disabled, max_requeues spent): it ends for good.
            assert cli("cancel", str(exp_dir(two))).returncode == 0
        finally:
            subprocess.run(["bash", str(NODE_SH), "start", "node2"], check=True, timeout=120)
    deadline = time.monotonic() + 120  # rank 1, released, finds rank 0 gone; it holds its slot of the run's lock
    while any(process_state(pid) not in ("", "Z", "X") for pid in rank1):
        assert time.monotonic() < deadline, f"rank 1 of job {job} (processes {rank1}) still runs 120 s after release"
        time.sleep(0.5)
    again = cli("submit", str(two), "--profile", "local")
    assert again.returncode == 0 and "1 of 1 runs had stages to submit" in again.stdout, again.stdout + again.stderr
    assert run_rows(exp_dir(two))[0]["stages"]["train"]["job"] != job  # a new job, not the cancelled one
    submit(reference)
    result = wait_finished(two)
    wait_finished(reference)
    assert result["status"] == "finished" and result["steps"] == steps and result["requeues"] >= 1
    logs = train_logs(two)
    for rank in (0, 1):
        assert f"rank {rank} resumed from {checkpoints}/step-{saved[-1]:08d}" in logs, logs[-4000:]
    assert_same_training(two, reference)
