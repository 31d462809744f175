"""The batch scripts: cover-hpc renders them itself (no private submitit function), the text is pinned
by golden files, and it is the text submitit's public SlurmExecutor writes for the same options."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cover_hpc.orchestrate import sbatch
from cover_hpc.orchestrate.submit import job_step_command, slurm_parameters
from cover_hpc.spec.schema import SlurmConfig

GOLDEN = Path(__file__).resolve().parent / "golden"
SETUP = ("module load cuda/12.4", "export NCCL_DEBUG=WARN")
SLURM = SlurmConfig(partition="gpu", account="lab", gpus_per_node=4, nodes=2, cpus_per_gpu=8, mem_per_gpu_gb=80,
                    time_min=240, signal_lead_s=120, setup=SETUP)  # fmt: skip
COMMAND = "python -u -m cover_hpc.job -u -m submitit.core._submit <folder>"


def _params(stage: str, map_count: int | None = None) -> dict[str, object]:
    params = slurm_parameters(SLURM, stage, f"exp-{stage}")
    if map_count:
        params["map_count"] = map_count
    return params


@pytest.mark.parametrize(("stage", "map_count"), [("train", 3), ("validate", None), ("infer", 4)])
def test_scripts_match_the_golden_text(stage: str, map_count: int | None) -> None:
    text = sbatch.render(COMMAND, "/exp/logs/%j", _params(stage, map_count))
    golden = GOLDEN / f"sbatch_{stage}.txt"
    if os.environ.get("COVER_HPC_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text()


def test_the_rendered_script_is_what_submitit_submits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through submitit's public executor, with an sbatch that keeps the script it is given."""
    import submitit

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"
    fake.write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    folder = tmp_path / "logs" / "%j"
    params = _params("train", 2)
    count = params.pop("map_count")
    executor = submitit.SlurmExecutor(folder=folder, python=job_step_command())
    executor.update_parameters(**params)
    with executor.batch():
        for _ in range(int(count)):  # type: ignore[call-overload]
            executor.submit(print)
    submitted = (tmp_path / "submitted.sh").read_text()
    mine = sbatch.render(f"{job_step_command()} -u -m submitit.core._submit <folder>", str(folder),
                         {**params, "map_count": count})  # fmt: skip
    *head, command, end = submitted.split("\n")
    *my_head, my_command, my_end = mine.split("\n")
    assert head == my_head and end == my_end
    assert command.rsplit(" ", 1)[0] == my_command.rsplit(" ", 1)[0]  # the folder: submitit's own, or <folder>
