"""Running one pickled job in a job step: the piece of submitit's ``process_job`` that cover-hpc
owns, because submitit's installs its own USR2/SIGTERM handlers (a private method), which would
requeue the job without a checkpoint. It speaks submitit's public file protocol: the job folder
from ``JobEnvironment().paths``, ``DelayedSubmission.load``, and a result pickle of
``("success", result)`` or ``("error", traceback)`` that ``Job.result()`` reads on the login node.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

#: How long a job step waits for its pickle to appear on a shared filesystem (as submitit does).
PICKLE_WAIT_S = 60


def run_job(folder: str | Path) -> None:
    from submitit.core import job_environment, utils

    os.environ["SUBMITIT_FOLDER"] = str(folder)
    paths = job_environment.JobEnvironment().paths
    for _ in range(PICKLE_WAIT_S):
        if paths.submitted_pickle.exists():
            break
        time.sleep(1)
    if not paths.submitted_pickle.exists():
        raise RuntimeError(
            f"waited {PICKLE_WAIT_S} s for the job's pickle and it is not there: {paths.submitted_pickle}"
        )
    try:
        delayed = utils.DelayedSubmission.load(paths.submitted_pickle)
        result = delayed.result()
        with utils.temporary_save_path(paths.result_pickle) as saving:
            utils.cloudpickle_dump(("success", result), saving)
    except Exception:
        with utils.temporary_save_path(paths.result_pickle) as saving:
            utils.cloudpickle_dump(("error", traceback.format_exc()), saving)
        raise
