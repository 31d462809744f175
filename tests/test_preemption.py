"""Preemption at any moment, time limits in every stage, and two submissions at once, on the real
local SLURM cluster (slurm/local)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from .conftest import REPO
from .test_slurm import held, run_rows, tiny_clip, wait_signalled
from .test_submit import cli, spec_file

pytestmark = [pytest.mark.slurm, pytest.mark.tiny, pytest.mark.slow]

#: Seconds from a job step's first process to the USR2 (what a preemptible partition does).
DELAYS = (0.0, 0.1, 0.3, 1.0, 2.0, 5.0)


def step_started(job: str, deadline_s: float = 300) -> float:
    """Wait until the job's first step has a process; returns that moment (monotonic)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        out = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True, timeout=30).stdout
        for line in out.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "0":  # step 0 (not "batch")
                return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"job {job} never started its step")


def restarts(job: str) -> int:
    """SLURM's restart count of a job: scontrol while the controller remembers it (MinJobAge), else
    the number of its requeued instances in accounting (sacct --duplicates lists each one)."""
    show = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=60).stdout
    if "Restarts=" in show:
        return int(show.split("Restarts=")[1].split()[0])
    lines = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-o", "JobID", "-j", job], capture_output=True,
                           text=True, timeout=60).stdout.split()  # fmt: skip
    return len(lines) - 1


def sacct_state(job: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job], capture_output=True, text=True,
                         timeout=60).stdout.split()  # fmt: skip
    return out[0] if out else ""


def wait_for(predicate: Any, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def reference_lora(tmp: Path, config: Path) -> dict[str, Any]:
    """The same run, never interrupted, in one process with the jobs' thread count."""
    reference = tmp / "reference"
    reference.mkdir()
    (reference / "config.json").write_text(config.read_text())
    env = {**os.environ, "COVER_HPC_THREADS": "1"}
    subprocess.run([sys.executable, str(REPO / "jobs" / "train.py"), str(reference)], check=True, env=env,
                   capture_output=True, timeout=600)  # fmt: skip
    return load_file(reference / "train" / "pytorch_lora_weights.safetensors")


def test_a_stop_signal_at_any_moment_of_start_up_requeues_and_never_fails(
    slurm_cluster: str, tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    """USR2 at fixed delays from the step's first process: every job completes, with every requeue
    counted alike by SLURM, train_result.json and status, and the LoRA of an uninterrupted run. The
    job is held while its signal is on its way, so the signal lands where the run was at that delay
    and what the run had done then says what the signal must cause: a signal before the last steps
    one requeue; one that finds training finished (a late delay on a fast machine), none needed."""
    clip = tiny_clip(tmp_path)
    experiments = []
    for delay in DELAYS:  # one experiment per delay, all queued at once; same weights for all
        folder = tmp_path / f"delay-{delay}"
        folder.mkdir()
        path = spec_file(folder, tiny_model_dir, demo_data_dir, train={"max_steps": 12, "checkpoint_every": 4},
                         validate={"clip_model": clip}, infer={"books_file": None},
                         data={"cache_dir": str(tmp_path / "cache")})  # fmt: skip
        result = cli("submit", str(path), "--profile", "local")
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
        (row,) = run_rows(folder / "experiments" / "sub")
        experiments.append((delay, folder / "experiments" / "sub", row))

    landed: dict[float, int | None] = {}  # steps trained when the signal landed; None: training was over
    failed: list[BaseException] = []

    def signal_at(job: str, delay: float, train: Path) -> None:
        try:
            started = step_started(job)
            time.sleep(max(0.0, started + delay - time.monotonic()))
            with held(job, required=False) as pids:
                metrics = train / "metrics.jsonl"
                steps = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
                over = not pids or (train / "train_result.json").exists()
                landed[delay] = None if over else steps
                subprocess.run(["scancel", "--signal=USR2", job], check=False, timeout=60)
                if pids:
                    wait_signalled(pids, signal.SIGUSR2)
        except BaseException as error:  # reported by the test's thread
            failed.append(error)

    threads = [threading.Thread(target=signal_at, args=(row["stages"]["train"]["job"], delay,
                                                        exp / row["run_id"] / "train"))
               for delay, exp, row in experiments]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not failed, failed
    assert landed[0.0] == 0, landed  # the first signal lands in start-up, before any step
    for delay, exp, row in experiments:
        run = exp / row["run_id"]
        wait_for(lambda run=run: any((run / "validate").glob("*/validation.json")), 900,
                 f"delay {delay}: " + cli("logs", str(exp), row["run_id"]).stdout[-4000:])  # fmt: skip
    reference = reference_lora(tmp_path, experiments[0][1] / experiments[0][2]["run_id"] / "config.json")
    for delay, exp, row in experiments:
        job = row["stages"]["train"]["job"]
        assert sacct_state(job) == "COMPLETED", (delay, sacct_state(job))
        result = json.loads((exp / row["run_id"] / "train" / "train_result.json").read_text())
        assert result["status"] == "finished" and result["steps"] == 12
        assert result["requeues"] == restarts(job), (delay, result["requeues"], restarts(job))
        assert run_rows(exp)[0]["requeues"] == result["requeues"]
        # A step looks for a signal before it logs itself, so one that landed with at most 9 of the 12 steps
        # logged is seen by step 11 at the latest and honoured: one requeue. One that landed later may
        # find nothing left to stop.
        steps = landed[delay]
        expected = {1} if steps is not None and steps <= 12 - 3 else {0, 1}
        assert result["requeues"] in expected, (delay, steps, result["requeues"])
        print(f"USR2 {delay} s after the step started, at step {steps}: requeues {result['requeues']}")
        ours = load_file(exp / row["run_id"] / "train" / "pytorch_lora_weights.safetensors")
        assert ours.keys() == reference.keys() and all((ours[k] == reference[k]).all() for k in ours), delay
        logs = cli("logs", str(exp), row["run_id"]).stdout
        assert "Traceback" not in logs, (delay, logs[-3000:])


def seconds_per_step(model: Path) -> float:
    """Denoising seconds per step of the tiny model at 64 x 64 on one thread, as a job runs it,
    measured once the cluster is idle (jobs of earlier tests would slow the measurement)."""
    from cover_hpc.model.sampling import load_generator
    from cover_hpc.spec.schema import ModelConfig

    wait_for(lambda: not subprocess.run(["squeue", "-h"], capture_output=True, text=True, timeout=60).stdout.strip(),
             600, "the cluster never became idle")  # fmt: skip
    import torch

    threads, torch_threads = os.environ.get("COVER_HPC_THREADS"), torch.get_num_threads()
    os.environ["COVER_HPC_THREADS"] = "1"  # what SLURM_CPUS_PER_TASK=1 gives the jobs
    try:
        generator = load_generator(ModelConfig(pretrained=str(model)), None, 525)
        generator.generate(["warm-up"], [0], 20, 5.0, (64, 64))
        timings = []
        for _ in range(2):
            started = time.perf_counter()
            generator.generate(["a cover"], [0], 200, 5.0, (64, 64))
            timings.append((time.perf_counter() - started) / 200)
        return min(timings)
    finally:
        torch.set_num_threads(torch_threads)
        if threads is None:
            os.environ.pop("COVER_HPC_THREADS", None)
        else:
            os.environ["COVER_HPC_THREADS"] = threads


@pytest.mark.timeout(1800)
def test_time_limits_in_validation_and_inference_requeue_and_resume(
    slurm_cluster: str, tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    """A 2-minute limit with USR2 30 s before it, which slurmctld sends up to 30 s early (its check
    runs every 30 s): each start gets 60-90 s, some 15 s of it starting up. Validation (3 images) and
    inference (7) are sized to need more sampling than one start allows (90 s, as measured, and more
    as the jobs run), so both are requeued by their time limit and finish where they stopped;
    sampling stops within a denoising step of the signal. A validation image is sized at 30 s as
    measured: the job's steps ran ~45 % slower than the measurement's (14 ms against 9.7 ms here, the
    job's with the trained LoRA and the held-out captions), and an image that does not fit in a start
    is never finished (sized at 50 s, none did)."""
    per_step = seconds_per_step(tiny_model_dir)
    path = spec_file(tmp_path, tiny_model_dir, demo_data_dir,
                     slurm={"time_min": 2, "signal_lead_s": 30, "max_requeues": 8},
                     train={"max_steps": 4},
                     validate={"clip_model": tiny_clip(tmp_path), "num_prompts": 3, "steps": int(30 / per_step),
                               "batch_size": 1},
                     infer={"shards": 1, "steps": int(21 / per_step), "batch_size": 1})  # fmt: skip
    print(f"sampling: {per_step * 1000:.2f} ms per step")
    result = cli("submit", str(path), "--profile", "local")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    exp = tmp_path / "experiments" / "sub"
    (row,) = run_rows(exp)
    run = exp / row["run_id"]
    wait_for(lambda: any((run / "infer").glob("*/manifest.jsonl")), 1700, cli("logs", str(exp), row["run_id"],
             "--stage", "infer").stdout[-4000:])  # fmt: skip
    (row,) = run_rows(exp)
    assert {s["state"] for s in row["stages"].values()} == {"done"}, row["stages"]
    (validate_job,), (infer_job,) = row["stages"]["validate"]["jobs"], row["stages"]["infer"]["jobs"]
    validation = json.loads(next((run / "validate").glob("*/validation.json")).read_text())
    shard = json.loads(next((run / "infer").glob("*/shard-0.json")).read_text())
    assert restarts(validate_job) >= 1 and validation["requeues"] == restarts(validate_job)
    assert restarts(infer_job) >= 1 and shard["requeues"] == restarts(infer_job)
    assert sacct_state(validate_job) == sacct_state(infer_job) == "COMPLETED"
    # resumed, not restarted: the last start generated only what was missing
    assert 0 < shard["generated"] < shard["books"] and shard["skipped"] == shard["books"] - shard["generated"]
    logs = cli("logs", str(exp), row["run_id"], "--stage", "validate").stdout
    assert "stopped by SIGUSR2" in logs and "requeueing" in logs
    images = list((run / "validate").glob("*/points/*/images/*.png"))  # the final LoRA's (no base model here)
    assert len(images) == validation["num_prompts"] == 3  # all the test set


def test_two_submissions_at_once_queue_one_pipeline_and_a_second_training_is_turned_away(
    slurm_cluster: str, tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    path = spec_file(tmp_path, tiny_model_dir, demo_data_dir, train={"max_steps": 40, "checkpoint_every": 10},
                     validate={"clip_model": tiny_clip(tmp_path)}, infer={"books_file": None})  # fmt: skip
    path.write_text(json.dumps({**json.loads(path.read_text()), "name": "twice"}))  # its own job names
    exe = str(Path(sys.executable).parent / "cover-hpc")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    both = [subprocess.Popen([exe, "submit", str(path), "--profile", "local"], cwd=REPO, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=300) for p in both]
    assert [p.returncode for p in both] == [0, 0], outputs
    said = sorted(out for out, _ in outputs)
    assert "0 of 1 runs had stages to submit" in said[0] and "1 of 1 runs had stages to submit" in said[1], said
    exp = tmp_path / "experiments" / "twice"
    state = json.loads((exp / "experiment.json").read_text())
    queued = [jobs["train"] for s in state["submissions"] for jobs in s["runs"].values() if jobs["train"]]
    assert len(queued) == 1
    names = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%j"], capture_output=True, text=True, timeout=60
    ).stdout.split()
    assert names.count("twice-train") == 1 and names.count("twice-report") == 1, names
    (row,) = run_rows(exp)
    metrics = exp / row["run_id"] / "train" / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3, 300, "training never started")

    # a second training of the same run, by hand, while the job trains: turned away, nothing touched. The
    # job is held meanwhile, so it is still training (and holding the run) however fast the machine.
    def files() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in (exp / row["run_id"] / "train").rglob("*") if p.is_file()}

    with held(queued[0]):
        assert not (exp / row["run_id"] / "train" / "train_result.json").exists()
        before = files()
        second = cli("train", str(path))
        assert files() == before
    assert second.returncode == 3, second.stdout + second.stderr[-3000:]
    assert "is held by process" in second.stderr and "SLURM job" in second.stderr
    wait_for(lambda: any((exp / row["run_id"] / "validate").glob("*/validation.json")), 600, "never finished")
    lines = metrics.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 41))
    assert all(p.exists() or "checkpoints" in p.parts for p in before)  # only pruned checkpoints went
    assert not list((exp / row["run_id"]).glob("*/error.json"))


def test_cancel_is_not_undone_by_a_requeue_and_keeps_the_work(
    slurm_cluster: str, tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    """scancel sends SIGTERM: the run checkpoints where it is and the job ends CANCELLED (SLURM would
    accept a requeue even of a cancelled job, so SIGTERM alone must never ask for one)."""
    path = spec_file(tmp_path, tiny_model_dir, demo_data_dir, train={"max_steps": 400, "checkpoint_every": 1000},
                     validate={"clip_model": tiny_clip(tmp_path)}, infer={"books_file": None})  # fmt: skip
    assert cli("submit", str(path), "--profile", "local").returncode == 0
    exp = tmp_path / "experiments" / "sub"
    (row,) = run_rows(exp)
    job = row["stages"]["train"]["job"]
    metrics = exp / row["run_id"] / "train" / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3, 300, "training never started")
    with held(job) as pids:  # still training when the cancel lands, however fast the machine
        assert not (exp / row["run_id"] / "train" / "train_result.json").exists()
        assert cli("cancel", str(exp)).returncode == 0
        wait_signalled(pids, signal.SIGTERM)
    wait_for(lambda: sacct_state(job) == "CANCELLED", 120, f"job {job} is {sacct_state(job)}")
    time.sleep(15)  # longer than SLURM's requeue delay here: a requeued job would be back by now
    assert sacct_state(job) == "CANCELLED" and restarts(job) == 0
    checkpoints = list((exp / row["run_id"] / "train" / "checkpoints").glob("step-*/COMPLETE"))
    assert checkpoints, "the SIGTERM did not leave a checkpoint"


def test_only_usr2_asks_for_a_requeue(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit level: SIGTERM alone waits for SLURM to end the job; USR2 (caught by Python or kept by the
    step's wrapper during start-up) asks scontrol for the requeue."""
    from cover_hpc.runtime import preemption

    calls: list[list[str]] = []
    monkeypatch.setattr(preemption, "REFUSED_WAIT_S", 0)
    monkeypatch.setattr(preemption, "REQUEUE_WAIT_S", 0)
    monkeypatch.setattr(
        subprocess, "run", lambda args, **kw: calls.append(args) or subprocess.CompletedProcess(args, 0)
    )
    for received, asks in ((["SIGTERM"], False), (["SIGUSR2"], True), (["USR2 (during start-up)"], True)):
        preemption.reset()
        preemption.RECEIVED.extend(received)
        calls.clear()
        with pytest.raises((preemption.RequeueRefused, RuntimeError)):
            preemption.requeue_and_wait("7_1", 0, 3, True, "test")
        assert (calls == [["scontrol", "requeue", "7_1"]]) is asks, received
    preemption.reset()
    with pytest.raises(preemption.RequeueRefused, match="max_requeues=3"):
        preemption.requeue_and_wait("7_1", 3, 3, True, "test")


@pytest.mark.timeout(1200)
def test_a_time_limit_in_training_requeues_it_and_max_requeues_bounds_it(
    slurm_cluster: str, tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    """Training that cannot finish: its time-limit warning checkpoints and requeues it once, the
    second start resumes from that checkpoint, and its own warning then ends the run as failed
    with the reason (slurm.max_requeues=1), leaving the checkpoint for a later submission."""
    path = spec_file(tmp_path, tiny_model_dir, demo_data_dir,
                     slurm={"time_min": 2, "signal_lead_s": 30, "max_requeues": 1},
                     train={"max_steps": 100000, "checkpoint_every": 100000},
                     validate={"clip_model": tiny_clip(tmp_path)}, infer={"books_file": None})  # fmt: skip
    assert cli("submit", str(path), "--profile", "local").returncode == 0
    exp = tmp_path / "experiments" / "sub"
    (row,) = run_rows(exp)
    job = row["stages"]["train"]["job"]
    error = exp / row["run_id"] / "train" / "error.json"
    wait_for(error.is_file, 900, cli("logs", str(exp), row["run_id"]).stdout[-4000:])
    assert "max_requeues=1" in json.loads(error.read_text())["message"]
    wait_for(lambda: sacct_state(job) not in ("RUNNING", "PENDING", "REQUEUED", ""), 300, sacct_state(job))
    assert restarts(job) == 1
    starts = [json.loads(line) for line in (exp / row["run_id"] / "train" / "starts.jsonl").read_text().splitlines()]
    assert [s["restarts"] for s in starts] == [0, 1]
    steps = sorted(
        int(p.parent.name.split("-")[1]) for p in (exp / row["run_id"] / "train").glob("checkpoints/*/COMPLETE")
    )
    assert len(steps) == 2 and 0 < steps[0] < steps[1]  # one checkpoint per warning; the second start resumed
    logs = cli("logs", str(exp), row["run_id"]).stdout
    assert "resumed from" in logs and "requeueing" in logs
    (row,) = run_rows(exp)
    assert row["stages"]["train"]["state"] == "failed" and row["requeues"] == 1
