"""A search on the real local SLURM cluster (slurm/local): one array whose tasks each claim a trial,
train it with early stopping at the rungs, and tell the search. Through a preemption in the middle
of the search, two submissions at once and a re-submission once everything ended, no trial is lost
or doubled, and a finished search trains nothing more."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO
from .test_preemption import restarts, sacct_state
from .test_slurm import held, tiny_clip, wait_signalled
from .test_submit import cli, spec_file

pytestmark = [pytest.mark.slurm, pytest.mark.tiny, pytest.mark.slow]

TRIALS = 4
MAX_STEPS = 24
GRACE_STEPS = 8  # rungs at steps 8 and 16 (reduction factor 2): the preemption lands before the first
SPACE = {
    "optim.lr_unet": {"distribution": "log_uniform", "low": 1e-4, "high": 3e-2},  # JSON writes both with a dot
    "lora.rank": {"distribution": "choice", "values": [2, 4, 8]},
}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def wait_for(predicate: Any, limit_s: float, what: Any) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.05)


def job_logs(exp: Path, job: str = "", tail: int = 3000) -> str:
    """The logs of an array task ("12_3"), else of every job of the experiment, their last lines
    (`cover-hpc logs` takes a run id, which a search's jobs are not filed under)."""
    from cover_hpc.store.paths import ExperimentPaths

    found = sorted(ExperimentPaths(exp).logs.glob(f"*/{job}_*_log.*" if job else "*/*_log.*"))
    return "\n".join(f"==> {p} <==\n{p.read_text(errors='replace')[-tail:]}" for p in found)


def queued(jobs: list[str]) -> list[str]:
    """The jobs (array ids or plain ids) SLURM still has queued or running, as squeue names them."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=60).stdout
    return [line for line in out.splitlines() if line.split()[0].split("_")[0] in jobs]


def search_submit(path: Path) -> list[subprocess.Popen[str]]:
    """Two `cover-hpc submit` of the same search started at once."""
    exe = str(Path(sys.executable).parent / "cover-hpc")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    return [subprocess.Popen([exe, "submit", str(path), "--profile", "local"], cwd=REPO, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]  # fmt: skip


def submitted_spec(exp: Path) -> Any:
    from cover_hpc.spec.schema import spec_from_dict

    return spec_from_dict(json.loads((exp / "experiment.json").read_text())["spec"])


def journal_trials(exp: Path) -> list[dict[str, Any]]:
    """Every trial of the search's Optuna journal: number, state, and the task that claimed it."""
    from cover_hpc.orchestrate.search import open_study
    from cover_hpc.store.paths import ExperimentPaths

    study = open_study(ExperimentPaths(exp), submitted_spec(exp))
    return [{"number": t.number, "state": t.state.name, "task": t.user_attrs.get("task")}
            for t in study.get_trials(deepcopy=False)]  # fmt: skip


@pytest.mark.timeout(600)
def test_a_preempted_search_loses_and_doubles_no_trial_and_a_resubmit_trains_nothing(
    slurm_cluster: str, tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    started = time.monotonic()
    path = spec_file(tmp_path, tiny_model_dir, demo_data_dir,
                     train={"max_steps": MAX_STEPS, "checkpoint_every": 100},
                     validate={"clip_model": tiny_clip(tmp_path), "select_by": "heldout_loss", "cmmd": False,
                               "ocr": False, "loss_images": 2, "loss_timesteps": [300, 700]},
                     infer={"books_file": None},
                     slurm={"array_parallelism": 2},
                     sweep={"search": {"sampler": "random", "trials": TRIALS, "seed": 1, "metric": "heldout_loss",
                                       "grace_steps": GRACE_STEPS, "reduction_factor": 2, "space": SPACE}})  # fmt: skip
    exp = tmp_path / "experiments" / "sub"

    # two submissions at once: one queues the array, the other (after the submit lock) finds its tasks queued
    outputs = [p.communicate(timeout=300) for p in search_submit(path)]
    assert all("Traceback" not in err for _, err in outputs), outputs
    said = sorted(out for out, _ in outputs)
    assert said[0].startswith(f"0 of {TRIALS} search trials to submit"), outputs
    assert said[1].startswith(f"{TRIALS} of {TRIALS} search trials to submit"), outputs
    state = json.loads((exp / "experiment.json").read_text())
    jobs = {key: entry["train"] for s in state["submissions"] for key, entry in s["runs"].items()}
    assert sorted(jobs) == [f"task-{i}" for i in range(TRIALS)]
    array = {job.split("_")[0] for job in jobs.values()}
    assert len(array) == 1 and all(jobs[f"task-{i}"].endswith(f"_{i}") for i in range(TRIALS))  # one array
    reports = [s["report"] for s in state["submissions"] if s["report"]]
    assert len(reports) == 1
    names = subprocess.run(["squeue", "-h", "-r", "-o", "%j"], capture_output=True, text=True, timeout=60).stdout
    assert names.split().count("sub-report") == 1, names

    # task 0 is preempted mid-training, before its first rung: SLURM's warning signal, a requeue
    task_0 = exp / "search" / "tasks" / "00000.json"
    wait_for(task_0.is_file, 300, lambda: job_logs(exp))
    run_0 = json.loads(task_0.read_text())["run_id"]
    metrics = exp / run_0 / "train" / "metrics.jsonl"
    wait_for(lambda: len(lines(metrics)) >= 1, 300, "task 0 never trained")
    with held(jobs["task-0"]) as pids:  # the signal lands mid-training, however fast the machine
        at = len(lines(metrics))
        assert at < GRACE_STEPS - 1, f"task 0 reached step {at} before it could be held: raise grace_steps"
        subprocess.run(["scancel", "--signal=USR2", jobs["task-0"]], check=True, timeout=60)
        wait_signalled(pids, signal.SIGUSR2)

    everything = [*array, *reports]
    wait_for(lambda: not queued(everything), 480, lambda: f"still queued: {queued(everything)}\n"
             + job_logs(exp)[-8000:])  # fmt: skip
    print(f"search ended {time.monotonic() - started:.0f} s after the test started")
    for task, job in jobs.items():
        assert sacct_state(job) == "COMPLETED", (task, job, sacct_state(job))
        assert restarts(job) == (1 if task == "task-0" else 0), (task, job, restarts(job))
    assert sacct_state(reports[0]) == "COMPLETED"

    # each task has its own trial, trained once; the preempted one resumed rather than restarted
    records = [json.loads((exp / "search" / "tasks" / f"{i:05d}.json").read_text()) for i in range(TRIALS)]
    assert sorted(p.name for p in (exp / "search" / "tasks").iterdir()) == [f"{i:05d}.json" for i in range(TRIALS)]
    assert [r["task"] for r in records] == list(range(TRIALS))
    assert len({r["trial"] for r in records}) == len({r["run_id"] for r in records}) == TRIALS
    from cover_hpc.orchestrate.search import planned_trials

    planned = planned_trials(submitted_spec(exp))  # a random search: what `cover-hpc plan` showed
    assert planned is not None and [run.run_id for run in planned] == [r["run_id"] for r in records]
    starts = {r["run_id"]: lines(exp / r["run_id"] / "train" / "starts.jsonl") for r in records}
    assert [s["restarts"] for s in starts[run_0]] == [0, 1], starts[run_0]
    for record in records[1:]:
        assert [s["restarts"] for s in starts[record["run_id"]]] == [0], (record, starts[record["run_id"]])
    results = {r["run_id"]: json.loads((exp / r["run_id"] / "train" / "train_result.json").read_text())
               for r in records}  # fmt: skip
    assert results[run_0]["requeues"] == 1 and all(results[r["run_id"]]["requeues"] == 0 for r in records[1:])
    assert all(result["status"] in ("finished", "pruned") for result in results.values()), results
    for run_id, result in results.items():  # every step trained once: a resume picks up at its checkpoint
        steps = [m["step"] for m in lines(exp / run_id / "train" / "metrics.jsonl")]
        assert steps == list(range(1, result["steps"] + 1)), (run_id, steps)
    logs = job_logs(exp, jobs["task-0"], tail=10**7)
    assert "resumed from" in logs and f"requeueing {jobs['task-0']}" in logs, logs[-4000:]

    # every trial told; one decision per trial and rung, even for the one asked again after its resume
    trials = journal_trials(exp)
    assert sorted((t["task"], t["number"]) for t in trials) == sorted((r["task"], r["trial"]) for r in records)
    assert all(t["state"] in ("COMPLETE", "PRUNED") for t in trials), trials
    made = lines(exp / "search" / "decisions.jsonl")
    assert made and not [key for key, n in Counter((d["trial"], d["step"]) for d in made).items() if n > 1], made
    assert {d["step"] for d in made} <= {GRACE_STEPS, 2 * GRACE_STEPS}
    pruned = {r["run_id"] for r in records if results[r["run_id"]]["status"] == "pruned"}
    assert pruned == {d["run_id"] for d in made if d["decision"] == "stop"}
    assert all(results[run_id]["steps"] < MAX_STEPS for run_id in pruned)
    summary = json.loads((exp / "best" / "search.json").read_text())
    assert summary["finished"] == TRIALS and summary["winner"]["state"] == "complete"
    assert (exp / "best" / "pytorch_lora_weights.safetensors").is_file()
    assert (exp / "report" / "index.html").is_file()
    status = json.loads(cli("status", str(exp), "--json").stdout)
    assert sorted(row["run_id"] for row in status["runs"]) == sorted(r["run_id"] for r in records)
    assert len(status["decisions"]) == len(made)

    # the search is over: a re-submission queues nothing and trains nothing
    journal = (exp / "search" / "journal.log").read_bytes()
    again = cli("submit", str(path), "--profile", "local")
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert again.stdout.startswith(f"0 of {TRIALS} search trials to submit"), again.stdout + again.stderr
    assert "report job" not in again.stdout and not queued(everything)
    assert {r["run_id"]: lines(exp / r["run_id"] / "train" / "starts.jsonl") for r in records} == starts
    assert (exp / "search" / "journal.log").read_bytes() == journal  # no trial asked, none told again
    print(f"test took {time.monotonic() - started:.0f} s")
