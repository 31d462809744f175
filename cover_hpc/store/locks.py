"""Locks that keep two cover-hpc processes off the same files: one submission of an experiment at a
time, one holder of each stage of a run (per rank, per inference shard).

They are POSIX record locks (``fcntl.lockf``) on a file in the folder they guard: the kernel (and,
on a shared filesystem, its lock manager: NFSv3 NLM, NFSv4, Lustre mounted with ``flock``, GPFS,
BeeGFS) releases them when the holder dies, even by ``kill -9`` or a lost node's lease, so a crash
never leaves a stale lock behind. Each holder also writes who it is next to the lock, so that the
one that is turned away can say by whom.

POSIX locks belong to a process and an inode: one process must open a lock file once (closing any
descriptor of it drops all its locks), which :class:`Lock` does.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path


class Busy(RuntimeError):
    """Another process holds the lock."""


def _owner_file(path: Path, slot: int) -> Path:
    return path.with_name(f"{path.name}.{slot}.owner")


def owner(path: Path, slot: int = 0) -> str:
    """Who holds (or last held) a lock, in words."""
    try:
        data = json.loads(_owner_file(path, slot).read_text())
    except (OSError, ValueError):
        return "another process"
    job = f", SLURM job {data['job']}" if data.get("job") else ""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data.get("time", 0)))
    return f"process {data.get('pid')} on {data.get('host')}{job} (since {since})"


@contextlib.contextmanager
def held(
    path: Path, what: str, slot: int = 0, wait_s: float = 0.0, while_waiting: Callable[[], None] | None = None
) -> Iterator[None]:
    """Hold byte ``slot`` of lock file ``path`` exclusively; raise :class:`Busy` naming the holder if
    another process keeps it longer than ``wait_s`` seconds (saying once that it waits).
    ``while_waiting`` is called between tries (e.g. :func:`cover_hpc.runtime.preemption.check`, so that a
    job waiting for another one still stops when asked)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + wait_s
        waiting = False
        while True:
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot, os.SEEK_SET)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    raise Busy(f"{what} is held by {owner(path, slot)}") from None
                if not waiting:
                    print(f"cover-hpc: waiting up to {wait_s:.0f} s: {what} is held by {owner(path, slot)}",
                          file=sys.stderr, flush=True)  # fmt: skip
                    waiting = True
                if while_waiting is not None:
                    while_waiting()
                time.sleep(0.2)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
                "job": os.environ.get("SLURM_JOB_ID")}  # fmt: skip
        with contextlib.suppress(OSError):
            _owner_file(path, slot).write_text(json.dumps(info))
        yield
    finally:
        os.close(handle)  # releases the lock
