"""Entry point of every SLURM job step that cover-hpc submits: ``python -u -m cover_hpc.job
-u -m submitit.core._submit FOLDER`` (the tail is what submitit's ``python`` option appends).

Importing ``cover_hpc`` has already made USR2 and SIGTERM only set a flag (see
:mod:`cover_hpc.runtime.preemption`). Here submitit's own handlers are kept out, since they would requeue
without a checkpoint during the seconds before a stage looks at the flag, and the pickled stage is
run as submitit runs it. The process then ends with ``os._exit``: Python's shutdown puts the
default handlers back, and a USR2 arriving then would kill a job whose work is done and recorded.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback


def main(argv: list[str]) -> int:
    from cover_hpc.runtime import preemption

    preemption.install()
    from submitit.core import job_environment, submission

    job_environment.JobEnvironment._handle_signals = lambda self, paths, submission: None  # type: ignore[method-assign]
    try:
        submission.process_job(argv[-1])  # pickles the result, or the error, before returning or raising
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    status = main(sys.argv)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
