"""Stop requests from SLURM: one flag, set by a handler installed at the first instruction of a job.

SLURM warns a job before its time limit or a preemption with ``USR2`` (``--signal``), and ends it
with ``SIGTERM`` (preemption grace time, ``scancel``, the requeue itself). Only USR2 leads to a
requeue: after SIGTERM alone the stage saves its work and lets SLURM end the job, since SLURM
would accept a requeue even of a cancelled job. Python's default action
for both is to die, and submitit's own ``USR2`` handler requeues without a checkpoint. So every
cover-hpc job step installs :func:`install` before anything else runs: ``cover_hpc/__init__``
calls it when ``COVER_HPC_JOB=1`` (exported by the batch script), and :mod:`cover_hpc.job`, the
step's entry point, keeps submitit's handlers out. From then on a signal only sets :data:`STOP`;
each stage looks at it between units of work (a training step, a validation or inference image
batch) and ends with :func:`requeue_and_wait`. A signal during start-up is kept in the flag and
honoured as soon as the stage looks.

This module imports only the standard library: it runs before anything else is imported.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType

# logging and subprocess are imported where used: this module is on the path of a job's first
# instruction, and every millisecond before install() is one in which a signal kills the step.

#: Set by a stop signal (or anything else): checkpoint or finish the unit of work, then stop.
STOP = threading.Event()
#: The signals received, by name, in order (for the log).
RECEIVED: list[str] = []
_requeued = threading.Event()
_installed = False

#: How long after install() the wrapper's notes are still looked at: the wrapper shell may run its
#: trap after Python read the file once (both got the signal; the scheduler picks who goes first).
KEPT_WATCH_S = 5.0
#: How long a job that asked for its requeue waits to be ended by it before it fails.
REQUEUE_WAIT_S = 300
#: How long a job whose requeue SLURM refused waits to be ended by SLURM (a preemption) before it fails.
REFUSED_WAIT_S = 60


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if signum == signal.SIGTERM and _requeued.is_set():
        os._exit(0)  # the requeue we asked for ends this job: the checkpoint is already sealed
    RECEIVED.append(name)
    STOP.set()


def install() -> None:
    """Make USR2 and SIGTERM set :data:`STOP` (idempotent; main thread only)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGUSR2, signal.SIGTERM):
        signal.signal(signum, _on_stop_signal)
    _installed = True
    # Children (user tools started by the job) start with Python's defaults again.
    os.environ.pop("COVER_HPC_JOB", None)
    # Signals that reached the step before this process could catch them, kept by its wrapper
    # (STEP_WRAPPER); read after the handlers are in place, so none falls between the two.
    kept = os.environ.pop(SIGNAL_FILE_VARIABLE, None)
    if kept and not _read_kept(kept):
        threading.Thread(target=_watch_kept, args=(kept,), name="cover-hpc-start-signals", daemon=True).start()


def _read_kept(path: str) -> bool:
    """Take the signals the step's wrapper noted before this process had its handlers."""
    try:
        with open(path) as handle:
            names = handle.read().split()
    except OSError:
        return False
    if names:
        RECEIVED.extend(f"{name} (during start-up)" for name in names)
        STOP.set()
    return bool(names)


def _watch_kept(path: str, seconds: float = KEPT_WATCH_S) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not STOP.is_set():
        time.sleep(0.05)
        if _read_kept(path):
            return


#: Where a job step's wrapper appends the names of the stop signals it caught.
SIGNAL_FILE_VARIABLE = "COVER_HPC_SIGNAL_FILE"

#: The shell that starts each job step's Python (``sh -c STEP_WRAPPER name python args...``). Python
#: needs tens of milliseconds before it can run a line, and until then USR2 and SIGTERM kill it;
#: sh sets its traps within a millisecond. It notes every such signal in a file, starts Python with
#: both ignored (only the fork itself is not covered), keeps noting them until Python has its own
#: handlers (install() watches the notes for a few seconds: sh may write them after Python looked
#: once), and returns Python's status.
STEP_WRAPPER = """trap 'early="$early USR2"' USR2; trap 'early="$early TERM"' TERM
export COVER_HPC_JOB=1 COVER_HPC_SIGNAL_FILE="${TMPDIR:-/tmp}/cover-hpc-signals.\
${SLURM_JOB_ID:-0}.${SLURM_RESTART_COUNT:-0}.${SLURM_PROCID:-0}.$$"
trap 'echo USR2 >> "$COVER_HPC_SIGNAL_FILE"' USR2
trap 'echo TERM >> "$COVER_HPC_SIGNAL_FILE"' TERM
for name in $early; do echo "$name" >> "$COVER_HPC_SIGNAL_FILE"; done
trap '' USR2 TERM; "$@" & child=$!
trap 'echo USR2 >> "$COVER_HPC_SIGNAL_FILE"' USR2
trap 'echo TERM >> "$COVER_HPC_SIGNAL_FILE"' TERM
while :; do
    wait "$child"
    status=$?
    kill -0 "$child" 2>/dev/null || break
done
rm -f "$COVER_HPC_SIGNAL_FILE"
exit "$status"
"""


def installed() -> bool:
    return _installed


class Stopped(BaseException):
    """Raised by a stage between units of work once :data:`STOP` is set. A BaseException, so that
    no ``except Exception`` of a stage (or a library) mistakes it for a failure."""


def check() -> None:
    """Raise :class:`Stopped` if a stop was requested (call between units of work)."""
    if STOP.is_set():
        raise Stopped(received())


def received() -> str:
    return ", ".join(RECEIVED) or "a stop request"


class RequeueRefused(RuntimeError):
    """The job was asked to stop but cannot be requeued (no SLURM job, or max_requeues spent)."""


def requeue_and_wait(job_id: str | None, restarts: int, max_requeues: int, is_main: bool, what: str) -> None:
    """Requeue this SLURM job (one array task, never the whole array) and wait to be ended by it.

    Rank 0 asks; every rank waits (the requeue's SIGTERM ends them). Raises when this job cannot be
    requeued: then it fails, and nothing that depends on it with ``afterok`` starts.
    """
    if not job_id:
        raise RequeueRefused(f"{what}: stopped by {received()} outside a SLURM job; run it again to continue")
    if restarts >= max_requeues:
        raise RequeueRefused(
            f"{what}: stopped by {received()} after {restarts} requeues (slurm.max_requeues={max_requeues}); "
            "submit the experiment again to continue where it stopped"
        )
    import logging
    import subprocess

    log = logging.getLogger(__name__)
    if not any("USR2" in name for name in RECEIVED):
        # SIGTERM alone is scancel (a requeue would undo it: SLURM accepts one even then) or a
        # preemption, which requeues the job itself. The work is saved; let SLURM end the job.
        log.warning("%s: stopped by %s; not requeueing, waiting for SLURM to end the job", what, received())
        time.sleep(REFUSED_WAIT_S)
        raise RequeueRefused(f"{what}: stopped by {received()} and SLURM did not end the job")
    _requeued.set()
    if is_main:
        log.warning("%s: stopped by %s; requeueing %s (restart %d)", what, received(), job_id, restarts + 1)
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            # A preemption requeues (or cancels) the job itself, and SLURM may refuse our request
            # meanwhile: give SLURM time to end the job; fail only if it does not, so that no afterok
            # dependency ever starts on unfinished work.
            reason = (result.stderr or result.stdout).strip()
            log.warning("scontrol requeue %s: %s; waiting %d s for SLURM to end the job", job_id, reason,
                        REFUSED_WAIT_S)  # fmt: skip
            time.sleep(REFUSED_WAIT_S)
            raise RequeueRefused(f"scontrol requeue {job_id} failed ({reason}) and SLURM did not end the job")
    deadline = time.monotonic() + REQUEUE_WAIT_S
    while time.monotonic() < deadline:  # the requeue ends this job; exiting first would fail it
        time.sleep(1)
    raise RuntimeError(f"the requeue of {job_id} did not end the job within {REQUEUE_WAIT_S} s")


def reset() -> None:
    """Forget stop requests (tests, and in-process runs of several stages)."""
    STOP.clear()
    RECEIVED.clear()
    _requeued.clear()
