"""SLURM latencies on a real cluster: from `cover-hpc submit` to the first training step, and from a
preemption signal to the first step after the requeue.

    source "$(slurm/local/up.sh)"          # or any cluster: pass --profile and --partition-free spec
    python benchmarks/slurm_latency.py [--repeat 2] [--json out.json]

Trains the tiny model (one run, 192x128, batch 4) through the real pipeline. Times are wall-clock,
polled every 50 ms, with their parts:
  submit:   the `cover-hpc submit` command (Python start, spec, sbatch calls) -> the training job
            RUNNING in squeue -> the first line in metrics.jsonl (job start, imports, model load,
            latent cache, first step).
  requeue:  `scancel --signal=USR2` (what SLURM sends before a preemption kill) -> the checkpoint
            sealed -> the job PENDING again -> RUNNING -> the first new step. The wait between
            PENDING and RUNNING is SLURM's: a requeued job may start only after AuthInfo's
            cred_expire (10 s on slurm/local, 120 s by default) plus the scheduler's next pass.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import demo_assets, header, spec_dict, summary, table, write_json

POLL = 0.05


def wait_until(what: str, check: Callable[[], bool], limit: float = 600) -> float:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {limit} s waiting for {what}")
        time.sleep(POLL)
    return time.perf_counter()


def job_state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


def lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def cli() -> list[str]:
    exe = shutil.which("cover-hpc") or str(Path(sys.executable).parent / "cover-hpc")
    return [exe]


def one_round(root: Path, model: Path, data: Path, clip: Path, profile: str | None, index: int) -> dict[str, Any]:
    out = root / f"latency-{index}-{time.time_ns()}"
    spec = spec_dict(model, data, out, train={"max_steps": 60}, validate={"clip_model": str(clip), "num_prompts": 1,
                     "steps": 2, "baseline": False}, infer={"books_file": None})  # fmt: skip
    spec_path = out / "spec.yaml"
    out.mkdir(parents=True)
    spec_path.write_text(json.dumps(spec))
    exp = out / "experiments" / "bench"
    command = [*cli(), "submit", str(spec_path)] + (["--profile", profile] if profile else [])
    t0 = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    t_submitted = time.perf_counter()
    state = json.loads((exp / "experiment.json").read_text())
    (jobs,) = state["submissions"][-1]["runs"].values()
    job = jobs["train"]
    (run_id,) = state["submissions"][-1]["runs"]
    metrics = exp / run_id / "train" / "metrics.jsonl"
    checkpoints = exp / run_id / "train" / "checkpoints"
    try:
        t_running = wait_until("the job to run", lambda: job_state(job) == "RUNNING")
        t_first = wait_until("the first step", lambda: lines(metrics) >= 1)
        wait_until("step 5", lambda: lines(metrics) >= 5)
        t_signal = time.perf_counter()
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=60)
        t_sealed = wait_until("the stop checkpoint", lambda: any(checkpoints.glob("step-*/COMPLETE")))
        stopped_at = max(int(p.parent.name.split("-")[1]) for p in checkpoints.glob("step-*/COMPLETE"))
        t_pending = wait_until("the requeue", lambda: job_state(job) in ("PENDING", "REQUEUED"))
        t_rerun = wait_until("the job to run again", lambda: job_state(job) == "RUNNING")
        t_resumed = wait_until("the first step after the requeue", lambda: lines(metrics) > stopped_at)
    finally:
        subprocess.run([*cli(), "cancel", str(exp)], capture_output=True, timeout=120)
    return {
        "submit_cmd_s": t_submitted - t0, "queued_to_running_s": t_running - t_submitted,
        "running_to_first_step_s": t_first - t_running, "submit_to_first_step_s": t_first - t0,
        "signal_to_checkpoint_s": t_sealed - t_signal, "checkpoint_to_pending_s": t_pending - t_sealed,
        "pending_to_running_s": t_rerun - t_pending, "running_to_first_step_after_s": t_resumed - t_rerun,
        "signal_to_first_step_after_requeue_s": t_resumed - t_signal, "stopped_at_step": stopped_at,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--profile", default="local", help="cluster profile (default: local, for slurm/local)")
    parser.add_argument("--workdir", type=Path, default=None, help="a folder every node sees (default: a temp folder)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not os.environ.get("SLURM_CONF") and not Path("/etc/slurm/slurm.conf").is_file():
        sys.exit('no SLURM cluster: start one with  source "$(slurm/local/up.sh)"  or set SLURM_CONF')
    info = header("SLURM latencies: submit -> first step, preemption -> first step after requeue")
    from cover_hpc.demo.tiny_clip import build_tiny_transformers_clip

    with tempfile.TemporaryDirectory() as scratch:
        root = args.workdir or Path(scratch)
        model, data = demo_assets(root)
        clip = root / "tiny-clip"
        if not clip.is_dir():
            build_tiny_transformers_clip(clip)
        rounds = [one_round(root, model, data, clip, args.profile, i) for i in range(args.repeat)]
    rows = [{"interval": key, **summary([r[key] for r in rounds])} for key in rounds[0] if key.endswith("_s")]
    print(table(rows, ["interval", "median", "min", "max", "n"]))
    write_json(args.json, {**info, "rounds": rounds, "rows": rows})


if __name__ == "__main__":
    main()
