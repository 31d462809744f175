"""Entry point of every SLURM job step that cover-hpc submits: ``python -u -m cover_hpc.job
-u -m submitit.core._submit FOLDER`` (the tail is what submitit's ``python`` option appends).

Importing ``cover_hpc`` has already made USR2 and SIGTERM only set a flag (see
:mod:`cover_hpc.preemption`). Here submitit's own handlers are kept out, since they would requeue
without a checkpoint during the seconds before a stage looks at the flag, and the pickled stage is
run as submitit runs it.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    from cover_hpc import preemption

    preemption.install()
    from submitit.core import job_environment, submission

    job_environment.JobEnvironment._handle_signals = lambda self, paths, submission: None  # type: ignore[method-assign]
    submission.process_job(argv[-1])


if __name__ == "__main__":
    main(sys.argv)
