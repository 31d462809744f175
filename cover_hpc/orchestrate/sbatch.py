"""The batch script of a job, as ``submit --dry-run`` shows it: the text submitit's SlurmExecutor
writes for the same options (its layout: sorted ``#SBATCH`` flags, the setup lines, then ``srun``
with the log paths), rendered here so that no private submitit function is called.
tests/golden/sbatch_*.txt pins the text, and a test checks it against the file submitit writes.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

#: Options that are not sbatch flags (submitit's own names).
NOT_FLAGS = ("setup", "signal_delay_s", "array_parallelism", "additional_parameters", "map_count")


def _flag(key: str, value: Any) -> str:
    key = key.replace("_", "-")
    return f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={shlex.quote(str(value))}"


def render(command: str, folder: str, params: Mapping[str, Any]) -> str:
    """The script for ``params`` (as :func:`cover_hpc.orchestrate.submit.slurm_parameters` makes them,
    plus ``map_count`` for an array), running ``command`` with its logs in ``folder``."""
    flags = {key: value for key, value in params.items() if key not in NOT_FLAGS and value is not None}
    flags["signal"] = f"USR2@{params.get('signal_delay_s', 90)}"
    flags["wckey"] = "submitit"
    stdout, stderr = f"{folder}/%j_%t_log.out", f"{folder}/%j_%t_log.err"
    if params.get("map_count"):
        count = int(params["map_count"])
        flags["array"] = f"0-{count - 1}%{min(count, int(params.get('array_parallelism', 256)))}"
        stdout, stderr = stdout.replace("%j", "%A_%a"), stderr.replace("%j", "%A_%a")
    flags["output"] = stdout.replace("%t", "0")
    flags["error"] = stderr.replace("%t", "0")
    flags["open-mode"] = "append"
    flags.update(params.get("additional_parameters") or {})
    lines = ["#!/bin/bash", "", "# Parameters", *(_flag(key, flags[key]) for key in sorted(flags))]
    if params.get("setup") is not None:
        lines += ["", "# setup", *params["setup"]]
    srun = " ".join(shlex.quote(arg) for arg in ["srun", "--unbuffered", "--output", stdout, "--error", stderr])
    lines += ["", "# command", "export SUBMITIT_EXECUTOR=slurm", f"{srun} {command}", ""]
    return "\n".join(lines)
