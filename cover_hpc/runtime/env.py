"""The process environment: ranks and rendezvous from torchrun or SLURM, threads, offline mode.

Nothing else in cover-hpc reads RANK, WORLD_SIZE, SLURM_* and the like.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in its job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _first_host(nodelist: str) -> str:
    """First host of a SLURM node list (``node[01-04],gpu7`` -> ``node01``), via scontrol when present."""
    try:
        result = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30, check=True
        )
        return result.stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        head = nodelist.split(",")[0]
        if "[" in head:
            prefix, ranges = head.split("[", 1)
            return prefix + ranges.split("-")[0].split(",")[0].rstrip("]")
        return head


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def dist_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """The distributed environment: torchrun's variables, else submitit's local tasks', else SLURM's
    (srun tasks), else one process."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", "29500")),
        )
    if "SUBMITIT_LOCAL_GLOBALID" in env and int(env.get("SUBMITIT_LOCAL_NTASKS", "1")) > 1:
        tasks = int(env["SUBMITIT_LOCAL_NTASKS"])
        return DistEnv(
            rank=int(env["SUBMITIT_LOCAL_GLOBALID"]),
            world_size=tasks,
            local_rank=int(env.get("SUBMITIT_LOCAL_LOCALID", "0")),
            local_world_size=tasks,
            master_port=20000 + int(env.get("SUBMITIT_LOCAL_JOB_ID", "0")) % 20000,
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        job = int(env.get("SLURM_ARRAY_JOB_ID", env.get("SLURM_JOB_ID", "0")))
        task = int(env.get("SLURM_ARRAY_TASK_ID", "0"))
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", "0")),
            local_world_size=int(env.get("SLURM_NTASKS_PER_NODE", env["SLURM_NTASKS"]).split("(")[0]),
            master_addr=_first_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")),
            master_port=20000 + (job * 7 + task) % 20000,  # same on every task of the job
        )
    return DistEnv(master_port=free_port())


def export_torch_env(dist: DistEnv) -> None:
    """Set the variables torch.distributed, accelerate and DeepSpeed read (DeepSpeed needs them
    even for one process, or it looks for mpi4py)."""
    os.environ.update(
        {
            "RANK": str(dist.rank),
            "WORLD_SIZE": str(dist.world_size),
            "LOCAL_RANK": str(dist.local_rank),
            "LOCAL_WORLD_SIZE": str(dist.local_world_size),
            "MASTER_ADDR": dist.master_addr,
            "MASTER_PORT": str(dist.master_port),
        }
    )


def cpu_threads(dist: DistEnv) -> int:
    """Threads per process: the SLURM allocation's, else the machine's cores shared by local ranks.

    Kept fixed for a run: a different thread count changes float summation order, which breaks
    bit-exact resume on CPU.
    """
    if "SLURM_CPUS_PER_TASK" in os.environ:
        return max(1, int(os.environ["SLURM_CPUS_PER_TASK"]))
    if "COVER_HPC_THREADS" in os.environ:
        return max(1, int(os.environ["COVER_HPC_THREADS"]))
    return max(1, (os.cpu_count() or 1) // dist.local_world_size)


def set_offline_defaults() -> None:
    """Never reach for the Hugging Face Hub unless the user asked for it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def is_interactive() -> bool:
    import sys

    return sys.stderr.isatty()


@dataclass(frozen=True)
class SlurmJob:
    """The SLURM job this process runs in: its id as scontrol takes it, and how often it was requeued."""

    job_id: str  # "<array>_<task>" for an array task, else the job id
    restarts: int  # SLURM_RESTART_COUNT: requeues of this job so far


def slurm_job(environ: Mapping[str, str] | None = None) -> SlurmJob | None:
    """This process's SLURM job, or None outside SLURM (a local or in-process run)."""
    env = os.environ if environ is None else environ
    if "SLURM_JOB_ID" not in env or env.get("SUBMITIT_EXECUTOR") == "local":
        return None
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    else:
        job_id = env["SLURM_JOB_ID"]
    return SlurmJob(job_id, int(env.get("SLURM_RESTART_COUNT", "0") or 0))
