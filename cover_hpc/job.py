"""The jobs' public entry point: what submitit pickles, and what every job step runs.

A queued job is a pickle naming the callable it runs by import path, and it may start days later,
after cover-hpc was upgraded. So the callables live here, at a path kept across releases:
:class:`TrainTask` and :class:`StageTask`, with the same fields, import the stages only when called.
Jobs pickled by releases before 0.2.0 name ``cover_hpc.submit.TrainTask`` / ``StageTask``; the
entry point maps that module name here before loading them (:data:`LEGACY_MODULES`).

Each job step runs ``python -u -m cover_hpc.job -u -m submitit.core._submit FOLDER`` (the tail is
what submitit's ``python`` option appends). Importing ``cover_hpc`` has already made USR2 and
SIGTERM only set a flag (see :mod:`cover_hpc.runtime.preemption`); the pickled task is then run by
:func:`cover_hpc.orchestrate.worker.run_job`, which keeps submitit's own signal handlers out (they
would requeue without a checkpoint). The process ends with ``os._exit``: Python's shutdown puts the
default handlers back, and a USR2 arriving then would kill a job whose work is done and recorded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cover_hpc.runtime import env, preemption
from cover_hpc.spec.schema import spec_from_dict
from cover_hpc.store import atomic
from cover_hpc.store.paths import RunPaths

#: Module names that earlier releases pickled jobs under -> this module.
LEGACY_MODULES = ("cover_hpc.submit",)


@contextlib.contextmanager
def recorded_failure(paths: RunPaths, stage: str) -> Iterator[None]:
    """Leave ``<run>/<stage>/error.json`` when a stage fails (status and the report read it);
    clear a stale one when it starts again."""
    paths.error(stage).unlink(missing_ok=True)
    try:
        yield
    except Exception as error:
        atomic.write_json(paths.error(stage), {"message": f"{type(error).__name__}: {error}", "time": time.time()})
        raise


def _stop_and_requeue(max_requeues: int, what: str) -> None:
    """The stage stopped on SLURM's signal: requeue this job (rank 0) and wait to be ended by it."""
    job = env.slurm_job()
    preemption.requeue_and_wait(
        job.job_id if job else None, job.restarts if job else 0, max_requeues, env.dist_env().is_main, what
    )


@dataclass
class TrainTask:
    """Train one run; on a stop signal checkpoint, requeue this array task, and wait to be ended."""

    run_dir: str
    workdir: str
    max_requeues: int

    def __call__(self) -> dict[str, Any]:
        preemption.install()  # in a SLURM job already done at the first instruction (cover_hpc.job)
        os.chdir(self.workdir)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from cover_hpc.stages import train

        paths = RunPaths(Path(self.run_dir))
        with recorded_failure(paths, "train"):
            result = train.train_run(paths.root)
            if result.status in ("finished", "pruned"):
                return result.__dict__
            _stop_and_requeue(self.max_requeues, f"training of {paths.root.name} at step {result.steps}")
        raise AssertionError("unreachable: requeue_and_wait returns only by raising")


@dataclass
class StageTask:
    """Validation, one inference shard, or the report, run from the submission's directory.

    ``config`` is the run's resolved spec as submitted: validation and inference settings are not
    part of the run id, so they travel with the job rather than being read from the run folder.
    """

    stage: str
    target: str
    workdir: str
    shard: int = 0
    config: dict[str, Any] | None = None
    max_requeues: int = 10

    def __call__(self) -> Any:
        preemption.install()
        os.chdir(self.workdir)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        what = f"{self.stage} of {Path(self.target).name}" + (
            {"infer": f" shard {self.shard}", "validate": f" task {self.shard}"}.get(self.stage, "")
        )
        try:
            return self._run()
        except preemption.Stopped:
            if self.stage == "report":
                _stop_and_requeue(self.max_requeues, what)
            else:  # a requeue refused (max_requeues spent) is this stage's failure, for status and report
                with recorded_failure(RunPaths(Path(self.target)), self.stage):
                    _stop_and_requeue(self.max_requeues, what)
            raise AssertionError("unreachable: requeue_and_wait returns only by raising") from None

    def _run(self) -> Any:
        spec = spec_from_dict(self.config) if self.config is not None else None
        if self.stage == "validate":
            from cover_hpc.stages.validate import validate_run

            with recorded_failure(RunPaths(Path(self.target)), "validate"):
                result = validate_run(Path(self.target), spec, self.shard)
                return {"task": self.shard, "best": result["best"] if result else None}
        if self.stage == "infer":
            from cover_hpc.stages.infer import infer_run

            with recorded_failure(RunPaths(Path(self.target)), "infer"):
                return infer_run(Path(self.target), self.shard, spec).__dict__
        from cover_hpc.orchestrate.accounting import experiment_accounting
        from cover_hpc.stages.report import build_report

        preemption.check()  # the report's GPU-hours: sacct's, for each run's jobs (None: the local executor)
        return str(build_report(Path(self.target), experiment_accounting(Path(self.target))))


@dataclass
class SearchTask:
    """One task of a search's array: ask for its trial (the same one after a requeue), train it with
    early stopping at the rungs, validate it, and tell the search its result."""

    experiment: str
    config: dict[str, Any]  # the experiment's spec, search included
    index: int
    workdir: str
    max_requeues: int = 10

    def __call__(self) -> dict[str, Any]:
        preemption.install()
        os.chdir(self.workdir)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from cover_hpc.orchestrate import search
        from cover_hpc.stages import train
        from cover_hpc.stages.validate import validate
        from cover_hpc.store.paths import ExperimentPaths
        from cover_hpc.store.runs import prepare_run

        spec = spec_from_dict(self.config)
        exp = ExperimentPaths(Path(self.experiment))
        what = f"search task {self.index} of {exp.root.name}"
        try:
            task = search.claim(exp, spec, self.index)
            paths = prepare_run(spec, task.run)

            def judge(step: int) -> bool:
                return search.judge(exp, spec, task, paths, step)

            with recorded_failure(paths, "train"):
                result = train.train(task.run.spec, paths, judge=judge, judge_steps=search.rung_steps(spec))
                if result.status not in train.DONE:
                    _stop_and_requeue(self.max_requeues, f"{what} (run {task.run.run_id}) at step {result.steps}")
            summary = {"task": self.index, "trial": task.number, "run_id": task.run.run_id, "status": result.status}
            if not env.dist_env().is_main:
                return summary
            with recorded_failure(paths, "validate"):
                validation = validate(task.run.spec, paths)
            assert validation is not None  # every point is this process's to score (task None)
            search.finish(exp, spec, task, result.status == "pruned", validation)
            return summary
        except preemption.Stopped:
            _stop_and_requeue(self.max_requeues, what)
        raise AssertionError("unreachable: requeue_and_wait returns only by raising")


def main(argv: list[str]) -> int:
    preemption.install()
    for name in LEGACY_MODULES:  # a job queued by an earlier release unpickles to today's tasks
        sys.modules.setdefault(name, sys.modules.get("cover_hpc.job") or _this_module())
    from cover_hpc.orchestrate.worker import run_job

    try:
        run_job(argv[-1])  # pickles the result, or the error, before returning or raising
    except Exception:
        traceback.print_exc()
        return 1
    return 0


def _this_module() -> Any:
    import importlib

    return importlib.import_module("cover_hpc.job")


if __name__ == "__main__":
    status = main(sys.argv)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
