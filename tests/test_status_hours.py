"""GPU-hours per run and per experiment in ``cover-hpc status`` (issue 23 item 8): sacct's elapsed
time x allocated GPUs of a run's SLURM jobs, else its training's wall time x world size, as the
report counts them (cover_hpc.orchestrate.accounting)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from cover_hpc.spec.load import load_spec
from cover_hpc.spec.sweep import expand
from cover_hpc.store.runs import prepare_run


def test_status_shows_gpu_hours_per_run_and_per_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run 1's jobs are in sacct (training 1 h on 2 GPUs, validation 30 min on 1); run 2's training job
    is unknown to sacct, so its hours are its training's wall time x world size."""
    from cover_hpc.cli import main
    from cover_hpc.orchestrate.submit import status
    from cover_hpc.spec.schema import to_dict
    from cover_hpc.store.records import TrainResult, write_record

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps({"name": "hours", "output_dir": str(tmp_path / "exps"),
                                     "sweep": {"grid": {"lora.rank": [4, 8]}}}))  # fmt: skip
    spec = load_spec(spec_file)
    made = [(run, prepare_run(spec, run)) for run in expand(spec)]
    exp = made[0][1].root.parent
    jobs = {made[0][0].run_id: {"train": "300", "validate": ["301"], "infer": []},
            made[1][0].run_id: {"train": "400", "validate": [], "infer": []}}  # fmt: skip
    submission = {"time": time.time() - 100, "executor": "slurm", "report": None, "runs": jobs}
    state = {"spec": to_dict(spec), "runs": [{"run_id": r.run_id, "swept": to_dict(r.swept)} for r, _ in made],
             "submissions": [submission]}  # fmt: skip
    (exp / "experiment.json").write_text(json.dumps(state))
    for _, paths in made:
        write_record(paths.train_result, TrainResult(
            status="finished", steps=8, total_steps=8, epochs=1.0, final_loss=0.1, mean_loss=0.2, wall_time_s=5400.0,
            samples_per_s=1.0, peak_memory_mb=1.0, requeues=0, world_size=2))  # fmt: skip
    start = f"{time.time() - 50:.0f}"
    accounted = f"300|COMPLETED|3600|cpu=8,gres/gpu=2,node=1|{start}\n301|COMPLETED|1800|cpu=1,gres/gpu=1|{start}\n"

    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if command[0] == "sacct" and any("ElapsedRaw" in c for c in command):
            return subprocess.CompletedProcess(command, 0, accounted, "")
        return subprocess.CompletedProcess(command, 0, "", "")  # job states: none known

    monkeypatch.setattr(subprocess, "run", fake_run)
    rows = {r["run_id"]: r["gpu_hours"] for r in status(exp)}
    assert rows[made[0][0].run_id] == {"train": 2.0, "other": 0.5, "total": 2.5, "source": "sacct"}
    assert rows[made[1][0].run_id] == {"train": 3.0, "other": None, "total": 3.0, "source": "wall time x 2"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["status", str(exp)]) == 0
    text = out.getvalue()
    header = text.splitlines()[0].split()
    assert header[-1] == "GPU-h" and "2.500" in text and "3.000*" in text
    assert ("GPU-hours: 5.500 (training 5.000, validation and inference 0.500) over 2 runs, from sacct and wall time "
            "x world size") in text  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()) as as_json:
        assert main(["status", str(exp), "--json"]) == 0
    assert [r["gpu_hours"]["total"] for r in json.loads(as_json.getvalue())] == [2.5, 3.0]
