"""Submission: the only module that imports submitit.

One experiment becomes, per submission:

    train      one SLURM array, a task per run (at most ``slurm.array_parallelism`` at once)
    validate   per run, ``afterok`` on that run's array task
    infer      per run, an array of ``infer.shards`` tasks, ``afterok`` on its validation
    report     once, ``afterany`` on everything above

Resources are written in user terms in the spec (nodes, GPUs per node, CPUs per GPU, memory
per GPU, minutes) and translated to sbatch options here, in :func:`slurm_parameters` only.

Preemption and time limits: SLURM sends USR2 ``slurm.signal_lead_s`` seconds before the kill.
The training task's handler only sets :data:`cover_hpc.stages.train.STOP`; the loop sees it at the next
step, every rank takes part in the checkpoint, rank 0 requeues its own array task
(``<array_id>_<task_id>``, never the whole array) and every rank waits to be ended by the
requeue. The requeued task resumes from that checkpoint. (submitit's own handler would call
``checkpoint()`` on rank 0 inside the signal handler, mid-step and without the other ranks; it
is replaced for training.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cover_hpc.job import SearchTask, StageTask, TrainTask
from cover_hpc.model import weights
from cover_hpc.orchestrate import sbatch, search
from cover_hpc.runtime import preemption
from cover_hpc.spec.schema import ExperimentSpec, Problem, SlurmConfig, SpecError, spec_from_dict, to_dict
from cover_hpc.spec.sweep import Run, expand
from cover_hpc.store import atomic, locks
from cover_hpc.store.paths import ExperimentPaths, InferencePaths, RunPaths, ValidationPaths
from cover_hpc.store.records import StatusRow, from_json, to_json
from cover_hpc.store.runs import (
    Adopted,
    adopt_earlier_runs,
    adopted_folders,
    count_requeues,
    inference_key,
    prepare_run,
    validation_key,
)

if TYPE_CHECKING:
    from cover_hpc.stages.report import Accounting

log = logging.getLogger(__name__)

PROFILES = Path(__file__).resolve().parent / "profiles"  # package data: found by a plain pip install too
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
                 "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}  # fmt: skip


# --------------------------------------------------------------------------------------------
# What runs in the jobs


def _slurm_env_cleaned() -> None:
    """Submitting from inside a SLURM job: drop the job's variables so sbatch does not inherit them."""
    for key in list(os.environ):
        if key.startswith(("SLURM_", "SBATCH_", "SRUN_")) and key not in ("SLURM_CONF",):
            del os.environ[key]


# --------------------------------------------------------------------------------------------
# Resources


def profile_folders() -> list[Path]:
    """Where ``--profile NAME`` looks, first match wins: each folder of ``$COVER_HPC_PROFILES``
    (``:``-separated), ``slurm/profiles`` under the current folder (a checkout, or a site's own), and
    the profiles shipped inside the package (found by a plain ``pip install`` too)."""
    extra = [Path(folder) for folder in os.environ.get("COVER_HPC_PROFILES", "").split(":") if folder]
    return [*extra, Path("slurm/profiles"), PROFILES]


def load_profile(name: str | None) -> dict[str, Any]:
    if name is None:
        return {}
    folders = profile_folders()
    found = [folder / f"{name}.yaml" for folder in folders if (folder / f"{name}.yaml").is_file()]
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or not found:
        known = sorted({p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.yaml")})
        where = ", ".join(str(folder) for folder in folders)
        raise SpecError([Problem("--profile", f"unknown profile {name!r}; profiles in {where}: {', '.join(known)}")])
    path = found[0]

    from cover_hpc.spec.checks import control_character_problem
    from cover_hpc.spec.load import read_yaml

    data, _ = read_yaml(path)  # the spec loader's limits (size, depth, aliases, duplicate keys, UTF-8)
    allowed = {"partition", "account", "qos", "constraint", "setup"}
    unknown = set(data) - allowed
    if unknown:
        raise SpecError([Problem(str(path), f"unknown keys {sorted(unknown)}; a profile may set {sorted(allowed)}")])
    problems = []
    for key, value in data.items():  # these reach the batch script: one line of text each
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values) or (key != "setup" and isinstance(value, list)):
            problems.append(
                Problem(
                    f"slurm.{key}", f"got {value!r}; expected {'a list of strings' if key == 'setup' else 'a string'}"
                )
            )
            continue
        controls = (control_character_problem(f"slurm.{key}", v) for v in values)
        problems += [p for p in controls if p is not None]
    if problems:
        raise SpecError(problems, str(path))
    return data


def with_profile(slurm: SlurmConfig, profile: dict[str, Any]) -> SlurmConfig:
    """Profile values fill what the spec leaves empty."""
    import dataclasses

    changes: dict[str, Any] = {
        k: (tuple(v) if k == "setup" else v) for k, v in profile.items() if not getattr(slurm, k)
    }
    return dataclasses.replace(slurm, **changes)


#: First line of every batch script: the batch shell must not die of a USR2 that reaches it
#: (``scancel --batch/--full``), which is bash's default. The job steps have their own wrapper.
JOB_SETUP = ("trap : USR2",)


def slurm_parameters(slurm: SlurmConfig, stage: str, name: str) -> dict[str, Any]:
    """sbatch options (as submitit's SlurmExecutor names them) for one stage of a run."""
    train = stage == "train"
    gpus = slurm.gpus_per_node if train else min(slurm.gpus_per_node, 1)
    tasks = (slurm.gpus_per_node or slurm.tasks_per_node or 1) if train else 1
    params: dict[str, Any] = {
        "job_name": name,
        "nodes": slurm.nodes if train else 1,
        "ntasks_per_node": tasks,
        "cpus_per_task": slurm.cpus_per_gpu,
        "time": slurm.time_min,
        "signal_delay_s": slurm.signal_lead_s,
        "array_parallelism": slurm.array_parallelism,
        "setup": [*JOB_SETUP, *slurm.setup],
        "additional_parameters": {"requeue": True},
    }
    if gpus:
        params["gpus_per_node"] = gpus
        params["mem_per_gpu"] = f"{slurm.mem_per_gpu_gb}G"
    else:
        params["mem"] = f"{slurm.mem_per_gpu_gb * tasks}G"
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(slurm, key):
            params[key] = getattr(slurm, key)
    return params


def local_parameters(slurm: SlurmConfig, stage: str) -> dict[str, Any]:
    """The local executor's options: a multi-node run's processes all start on this machine (the same
    world size, so the same data order and results as on the cluster)."""
    tasks = (slurm.gpus_per_node or slurm.tasks_per_node or 1) * slurm.nodes if stage == "train" else 1
    return {"timeout_min": slurm.time_min, "tasks_per_node": tasks, "nodes": 1,
            "gpus_per_node": slurm.gpus_per_node * slurm.nodes if stage == "train" else min(slurm.gpus_per_node, 1),
            "cpus_per_task": slurm.cpus_per_gpu}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Experiment state


@dataclass
class RunJobs:
    train: str | None = None
    validate: list[str] = field(default_factory=list)  # one per validation task (validate.tasks)
    infer: list[str] = field(default_factory=list)


def stage_ids(value: Any) -> list[str]:
    """A stage's job ids as recorded: a list, or (validation, before it became an array) one id or none."""
    if not value:
        return []
    return [str(value)] if isinstance(value, str) else [str(v) for v in value if v]


@dataclass
class Submission:
    time: float
    executor: str
    runs: dict[str, RunJobs]
    report: str | None

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time, "executor": self.executor, "report": self.report,
                "runs": {k: v.__dict__ for k, v in self.runs.items()}}  # fmt: skip


def read_state(exp: ExperimentPaths) -> dict[str, Any]:
    if exp.state.is_file():
        state: dict[str, Any] = json.loads(exp.state.read_text())
        return state
    return {"submissions": []}


def write_state(exp: ExperimentPaths, spec: ExperimentSpec, runs: Sequence[Run], submission: Submission) -> None:
    state = read_state(exp)
    state["spec"] = to_dict(spec)
    state["runs"] = [{"run_id": r.run_id, "swept": to_dict(r.swept)} for r in runs]
    state["submissions"].append(submission.to_json())
    atomic.write_json(exp.state, state)


def stage_done(paths: RunPaths, stage: str, spec: ExperimentSpec) -> bool:
    """Whether a stage's result for these settings is on disk (validation and inference results
    live in folders named by their settings, so new settings mean new work for a trained run)."""
    if stage == "train":
        return paths.train_result.is_file()
    if stage == "validate":  # done, and chosen by the metric asked for now (else re-selected, nothing re-scored)
        result = validation_paths(paths, spec).result
        try:
            return bool(json.loads(result.read_text()).get("select_by") == spec.validate.select_by)
        except (OSError, ValueError):
            return False
    inference = inference_paths(paths, spec)
    return inference is None or inference.manifest().is_file()


def validation_paths(paths: RunPaths, spec: ExperimentSpec) -> ValidationPaths:
    return paths.validation(validation_key(spec))


def inference_paths(paths: RunPaths, spec: ExperimentSpec) -> InferencePaths | None:
    return paths.inference(inference_key(spec)) if spec.infer.books_file else None


def _searched_spec(state: dict[str, Any]) -> ExperimentSpec | None:
    """The experiment's spec when it is a search, else None."""
    try:
        spec = spec_from_dict(state["spec"])
    except (KeyError, SpecError, ValueError, TypeError):
        return None
    return spec if search.enabled(spec) else None


def _submitted_specs(state: dict[str, Any]) -> dict[str, ExperimentSpec]:
    """Each run's resolved spec as last submitted (for where its validation and inference go)."""
    try:
        return {run.run_id: run.spec for run in expand(spec_from_dict(state["spec"]))}
    except (KeyError, SpecError, ValueError):  # written by another version: fall back to the newest results
        return {}


def job_states(job_ids: Sequence[str]) -> dict[str, str]:
    """SLURM states of jobs (array tasks as ``A_T``), from squeue then sacct; missing ids are absent."""
    ids = [j for j in job_ids if j and not j.startswith("local")]
    if not ids:
        return {}
    states: dict[str, str] = {}
    arrays: dict[str, str] = {}  # tasks that never started show in sacct as one line "A_[0-3]"
    try:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(ids)],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        for line in out.stdout.splitlines():
            job, _, state = line.partition("|")
            job, state = job.strip(), (state.split()[0] if state.strip() else "UNKNOWN")
            if "_[" in job:
                arrays[job.split("_")[0]] = state
            else:
                states[job] = state
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(i.split("_")[0] for i in ids)],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        for line in out.stdout.splitlines():
            job, _, state = line.partition("|")
            states[job.strip()] = state.strip()
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("cannot ask SLURM for job states: %s", error)
    for job in ids:
        if job not in states and job.split("_")[0] in arrays:
            states[job] = arrays[job.split("_")[0]]
    return states


def job_ids(jobs: dict[str, Any]) -> list[str]:
    return [j for j in [jobs["train"], *stage_ids(jobs["validate"]), *jobs["infer"]] if j]


def latest_jobs(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per run, the jobs of the latest submission that queued any for it (a re-submission that
    queued nothing for a run does not hide the jobs still working on it)."""
    latest: dict[str, dict[str, Any]] = {}
    for submission in state["submissions"]:
        for run_id, jobs in submission["runs"].items():
            if job_ids(jobs):
                latest[run_id] = {**jobs, "executor": submission["executor"]}
    return latest


def active_jobs(exp: ExperimentPaths) -> dict[str, dict[str, str]]:
    """Per run, the stages whose latest SLURM job is still queued or running."""
    latest = {k: v for k, v in latest_jobs(read_state(exp)).items() if v["executor"] == "slurm"}
    states = job_states([j for jobs in latest.values() for j in job_ids(jobs)])
    active: dict[str, dict[str, str]] = {}
    for run_id, jobs in latest.items():
        if jobs["train"] and states.get(jobs["train"]) in ACTIVE_STATES:
            active.setdefault(run_id, {})["train"] = jobs["train"]
        for stage in ("validate", "infer"):
            ids = stage_ids(jobs[stage])
            if any(states.get(j) in ACTIVE_STATES for j in ids):
                active.setdefault(run_id, {})[stage] = ids[0].split("_")[0]
    return active


# --------------------------------------------------------------------------------------------
# Submitting


class SubmitError(RuntimeError):
    """A submission SLURM refused or that cannot start; nothing of it stays queued."""


def preflight(spec: ExperimentSpec, runs: Sequence[Run]) -> None:
    """Reject, before anything is queued, what would fail on the cluster anyway."""
    problems = preflight_problems(runs)
    if problems:
        raise SpecError(problems)


def preflight_problems(runs: Sequence[Run]) -> list[Problem]:
    """What would fail on the cluster: missing data folders, books file, and models that neither a
    folder nor the local Hugging Face cache holds (compute nodes may have no network)."""
    problems = []
    for run in runs:
        data = run.spec.data
        # the held-out covers are the prompts, and CMMD's and the held-out loss's reference
        chooser = run.spec.validate.select_by in ("cmmd", "heldout_loss")
        for key, folder in (("data.train_dir", data.train_dir), ("data.test_dir", data.test_dir)):
            if key == "data.test_dir" and run.spec.validate.prompts != "test_set" and not chooser:
                continue
            if not Path(folder).is_dir():
                why = f" (validate.select_by={run.spec.validate.select_by} is measured on it)" if chooser else ""
                problems.append(Problem(key, f"folder {folder!r} does not exist (relative to {os.getcwd()}){why}"))
        books = run.spec.infer.books_file
        if books and not Path(books).is_file():
            problems.append(Problem("infer.books_file", f"file {books!r} does not exist"))
    problems += weights.model_problems(run.spec for run in runs)
    return list({(p.key, p.message): p for p in problems}.values())


def plan_stages(spec: ExperimentSpec, runs: Sequence[Run], exp: ExperimentPaths) -> dict[str, list[str]]:
    """Per run, the stages to submit now: none for a run with queued/running jobs, else the unfinished ones."""
    active = active_jobs(exp)
    plan: dict[str, list[str]] = {}
    for run in runs:
        if run.run_id in active:
            plan[run.run_id] = []
            continue
        paths = exp.run(run.run_id)
        stages = [s for s in ("train", "validate", "infer") if not stage_done(paths, s, run.spec)]
        plan[run.run_id] = [s for s in stages if s != "infer" or run.spec.infer.books_file]
    return plan


def job_step_command() -> str:
    """The start of each job step's command (submitit appends ``-u -m submitit.core._submit FOLDER``):
    cover_hpc.runtime.preemption's signal-keeping wrapper, then this Python on cover_hpc.job."""
    import shlex
    import sys

    return f"/bin/sh -c {shlex.quote(preemption.STEP_WRAPPER)} cover-hpc-step {shlex.quote(sys.executable)} " + (
        "-u -m cover_hpc.job"
    )


def _executor(kind: str, folder: Path) -> Any:
    import submitit

    if kind == "slurm":
        return submitit.SlurmExecutor(folder=folder / "%j", python=job_step_command())
    # submitit's local executors would create a folder literally named "%j" next to the real ones
    if kind == "local":
        return submitit.LocalExecutor(folder=folder / "local")
    return submitit.DebugExecutor(folder=folder / "local")


def _submit(executor: Any, tasks: Sequence[Any]) -> list[Any]:
    """Submit callables as one array (or one job); sbatch's refusal becomes a SubmitError."""
    import submitit

    try:
        if len(tasks) == 1:
            return [executor.submit(tasks[0])]
        with executor.batch():
            jobs = [executor.submit(task) for task in tasks]
        return jobs
    except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError, OSError) as error:
        detail = getattr(error, "stderr", None) or getattr(error, "output", None) or str(error)
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        raise SubmitError(f"SLURM refused the submission: {str(detail).strip()}") from None


@dataclass
class Plan:
    """What one submission will queue, with every job's options (for --dry-run and for submitting)."""

    spec: ExperimentSpec
    runs: list[Run]
    stages: dict[str, list[str]]
    workdir: str
    exp: ExperimentPaths
    profile: dict[str, Any]
    warnings: list[Problem] = field(default_factory=list)
    adopted: list[Adopted] = field(default_factory=list)
    search_tasks: list[int] | None = None  # a search: the array tasks (trials) to run now

    def params(self, slurm: SlurmConfig, stage: str) -> dict[str, Any]:
        """sbatch options of a stage: the run's resources, the profile's cluster settings."""
        return slurm_parameters(with_profile(slurm, self.profile), stage, f"{self.spec.name}-{stage}")

    def tasks(self, stage: str, run: Run) -> list[Any]:
        run_dir = str(self.exp.run(run.run_id).root)
        requeues = run.spec.slurm.max_requeues
        if stage == "train":
            return [TrainTask(run_dir, self.workdir, requeues)]
        config = to_dict(run.spec)
        if stage == "validate":
            return [StageTask("validate", run_dir, self.workdir, k, config, requeues)
                    for k in range(run.spec.validate.tasks)]  # fmt: skip
        return [StageTask("infer", run_dir, self.workdir, k, config, requeues) for k in range(run.spec.infer.shards)]


def make_plan(spec: ExperimentSpec, runs: Sequence[Run], profile: str | None) -> Plan:
    exp = ExperimentPaths.of(spec.output_dir, spec.name)
    adopted = adopt_earlier_runs(exp, runs)  # before looking at what is done: their work counts
    return Plan(spec, list(runs), plan_stages(spec, runs, exp), os.getcwd(), exp, load_profile(profile),
                adopted=adopted)  # fmt: skip


def _run_slurm(plan: Plan) -> Submission:
    """Queue the DAG; if any sbatch fails, cancel what this submission queued and raise."""
    submitted: list[str] = []
    jobs: dict[str, RunJobs] = {}
    try:
        train_runs = [r for r in plan.runs if "train" in plan.stages[r.run_id]]
        if train_runs:
            executor = _executor("slurm", plan.exp.logs)
            executor.update_parameters(**plan.params(train_runs[0].spec.slurm, "train"))
            for run, job in zip(
                train_runs, _submit(executor, [plan.tasks("train", r)[0] for r in train_runs]), strict=True
            ):
                jobs.setdefault(run.run_id, RunJobs()).train = job.job_id
                submitted.append(job.job_id)
        for run in plan.runs:
            stages = plan.stages[run.run_id]
            entry = jobs.setdefault(run.run_id, RunJobs())
            previous = entry.train
            for stage in ("validate", "infer"):
                if stage not in stages:
                    continue
                executor = _executor("slurm", plan.exp.logs)
                params = plan.params(run.spec.slurm, stage)
                if previous:
                    params["additional_parameters"] = {"requeue": True, "dependency": f"afterok:{previous}"}
                executor.update_parameters(**params)
                stage_jobs = _submit(executor, plan.tasks(stage, run))
                submitted += [j.job_id for j in stage_jobs]
                if stage == "validate":  # inference waits for every task: the array's id, not a task's
                    entry.validate = [j.job_id for j in stage_jobs]
                    previous = stage_jobs[0].job_id.split("_")[0]
                else:
                    entry.infer = [j.job_id for j in stage_jobs]
        report = None
        if submitted:  # nothing queued (all done, or queued by another submission): no report job either
            executor = _executor("slurm", plan.exp.logs)
            params = plan.params(plan.spec.slurm, "report")
            params["additional_parameters"] = {"requeue": True, "dependency": "afterany:" + ":".join(submitted)}
            executor.update_parameters(**params)
            requeues = plan.spec.slurm.max_requeues
            (report_job,) = _submit(
                executor, [StageTask("report", str(plan.exp.root), plan.workdir, max_requeues=requeues)]
            )
            report = report_job.job_id
    except BaseException:
        if submitted:
            subprocess.run(["scancel", *{j.split("_")[0] for j in submitted}], check=False, timeout=60)
        raise
    return Submission(time.time(), "slurm", jobs, report)


def _wait(jobs: Sequence[Any]) -> list[bool]:
    ok = []
    for job in jobs:
        try:
            job.result()
            ok.append(True)
        except Exception as error:  # a failed stage is reported, the others go on
            log.error("job %s failed: %s", job.job_id, str(error).strip().splitlines()[-1] if str(error) else error)
            ok.append(False)
    return ok


def _run_local(plan: Plan, kind: str) -> Submission:
    """The same DAG with submitit's local (or in-process debug) executor, one job at a time:
    on one machine, concurrent CPU jobs only fight over the same cores."""
    jobs: dict[str, RunJobs] = {r.run_id: RunJobs() for r in plan.runs}
    ready = {r.run_id: True for r in plan.runs}
    for stage in ("train", "validate", "infer"):
        for run in [r for r in plan.runs if stage in plan.stages[r.run_id] and ready[r.run_id]]:
            executor = _executor(kind, plan.exp.logs)
            if kind == "local":
                executor.update_parameters(**local_parameters(run.spec.slurm, stage))
            for task in plan.tasks(stage, run):
                started = time.perf_counter()
                job = executor.submit(task)
                (ok,) = _wait([job])
                entry = jobs[run.run_id]
                if stage == "train":
                    entry.train = str(job.job_id)
                else:
                    getattr(entry, stage).append(str(job.job_id))
                ready[run.run_id] = ready[run.run_id] and ok
                label = f"{stage} shard {task.shard}" if stage == "infer" else stage
                if stage == "validate" and run.spec.validate.tasks > 1:
                    label = f"validate task {task.shard}"
                print(f"[{run.run_id}] {label} {'done' if ok else 'FAILED'} ({time.perf_counter() - started:.0f} s)",
                      flush=True)  # fmt: skip
    from cover_hpc.orchestrate.accounting import experiment_accounting
    from cover_hpc.stages.report import build_report

    print(f"report: {build_report(plan.exp.root, experiment_accounting(plan.exp.root))}", flush=True)
    return Submission(time.time(), kind, jobs, None)


# --------------------------------------------------------------------------------------------
# A search: one array of tasks, each asks for its trial (cover_hpc.orchestrate.search)


def search_pending(exp: ExperimentPaths, spec: ExperimentSpec) -> list[int]:
    """Search tasks to run now: not finished (its trial told) and not queued or running."""
    finished = search.finished_tasks(exp, spec)
    active = active_jobs(exp)
    return [i for i in range(spec.sweep.search.trials) if i not in finished and f"task-{i}" not in active]


def make_search_plan(spec: ExperimentSpec, profile: str | None) -> Plan:
    exp = ExperimentPaths.of(spec.output_dir, spec.name)
    runs = [claim.run for claim in search.claimed(exp, spec)]
    return Plan(spec, runs, {}, os.getcwd(), exp, load_profile(profile), search_tasks=search_pending(exp, spec))


def _search_task(plan: Plan, index: int) -> SearchTask:
    return SearchTask(str(plan.exp.root), to_dict(plan.spec), index, plan.workdir, plan.spec.slurm.max_requeues)


def _search_params(plan: Plan) -> dict[str, Any]:
    params = plan.params(plan.spec.slurm, "train")
    params["array_parallelism"] = plan.spec.sweep.search.parallelism or params["array_parallelism"]
    return params


def _run_search_slurm(plan: Plan) -> Submission:
    pending = plan.search_tasks or []
    jobs: dict[str, RunJobs] = {}
    report = None
    if not pending:
        return Submission(time.time(), "slurm", jobs, report)
    executor = _executor("slurm", plan.exp.logs)
    executor.update_parameters(**_search_params(plan))
    queued = _submit(executor, [_search_task(plan, i) for i in pending])
    try:
        for index, job in zip(pending, queued, strict=True):
            jobs[f"task-{index}"] = RunJobs(train=job.job_id)
        executor = _executor("slurm", plan.exp.logs)
        params = plan.params(plan.spec.slurm, "report")
        array = queued[0].job_id.split("_")[0]
        params["additional_parameters"] = {"requeue": True, "dependency": f"afterany:{array}"}
        executor.update_parameters(**params)
        (report_job,) = _submit(executor, [StageTask("report", str(plan.exp.root), plan.workdir,
                                                     max_requeues=plan.spec.slurm.max_requeues)])  # fmt: skip
        report = report_job.job_id
    except BaseException:
        subprocess.run(["scancel", *{j.job_id.split("_")[0] for j in queued}], check=False, timeout=60)
        raise
    return Submission(time.time(), "slurm", jobs, report)


def _run_search_local(plan: Plan, kind: str) -> Submission:
    """The search's tasks one after another (each asks the search for its trial as it starts)."""
    jobs: dict[str, RunJobs] = {}
    for index in plan.search_tasks or []:
        executor = _executor(kind, plan.exp.logs)
        if kind == "local":
            executor.update_parameters(**local_parameters(plan.spec.slurm, "train"))
        started = time.perf_counter()
        job = executor.submit(_search_task(plan, index))
        (ok,) = _wait([job])
        jobs[f"task-{index}"] = RunJobs(train=str(job.job_id))
        outcome = job.result() if ok else {}
        what = f"trial {outcome.get('trial')} {outcome.get('run_id')}: {outcome.get('status')}" if ok else "FAILED"
        print(f"[search task {index}] {what} ({time.perf_counter() - started:.0f} s)", flush=True)
    from cover_hpc.orchestrate.accounting import experiment_accounting
    from cover_hpc.stages.report import build_report

    if plan.exp.run_dirs():
        print(f"report: {build_report(plan.exp.root, experiment_accounting(plan.exp.root))}", flush=True)
    return Submission(time.time(), kind, jobs, None)


def _submit_search(
    spec: ExperimentSpec, executor: str, profile: str | None, dry_run: bool
) -> tuple[Plan, Submission | None]:
    base = expand(spec)  # the spec without its searched values: what every trial shares
    if dry_run:
        plan = make_search_plan(spec, profile)
        plan.warnings = preflight_problems(base)
        return plan, None
    exp = ExperimentPaths.of(spec.output_dir, spec.name)
    wait_s = SUBMIT_LOCK_WAIT_S if executor == "slurm" else LOCAL_LOCK_WAIT_S
    with locks.held(exp.submit_lock, f"the submission lock of experiment {exp.root}", wait_s=wait_s):
        plan = make_search_plan(spec, profile)
        preflight(spec, base)
        plan.exp.logs.mkdir(parents=True, exist_ok=True)
        submission = _run_search_slurm(plan) if executor == "slurm" else _run_search_local(plan, executor)
        write_state(plan.exp, spec, [claim.run for claim in search.claimed(exp, spec)], submission)
    return plan, submission


def submit(
    spec: ExperimentSpec, runs: Sequence[Run], executor: str = "slurm", profile: str | None = None,
    dry_run: bool = False,
) -> tuple[Plan, Submission | None]:  # fmt: skip
    """Queue (slurm) or run (local, debug) every unfinished stage of every run; see the module docstring."""
    _slurm_env_cleaned()
    if search.enabled(spec):
        return _submit_search(spec, executor, profile, dry_run)
    if dry_run:  # reads only: no lock, and what would be refused is shown as warnings
        plan = make_plan(spec, runs, profile)
        plan.warnings = preflight_problems([r for r in runs if plan.stages[r.run_id]])
        return plan, None
    exp = ExperimentPaths.of(spec.output_dir, spec.name)
    # One submission of an experiment at a time: the second sees the first one's jobs in
    # experiment.json (written before the lock is released) and queues nothing for those runs.
    wait_s = SUBMIT_LOCK_WAIT_S if executor == "slurm" else LOCAL_LOCK_WAIT_S
    with locks.held(exp.submit_lock, f"the submission lock of experiment {exp.root}", wait_s=wait_s):
        plan = make_plan(spec, runs, profile)
        preflight(spec, [r for r in runs if plan.stages[r.run_id]])
        for run in runs:
            prepare_run(spec, run)
        plan.exp.logs.mkdir(parents=True, exist_ok=True)
        submission = _run_slurm(plan) if executor == "slurm" else _run_local(plan, executor)
        write_state(plan.exp, spec, runs, submission)
    return plan, submission


#: How long a submission waits for another one of the same experiment: a SLURM submission holds
#: the lock for seconds; a local one for its whole run, after which the waiting one finds it done.
SUBMIT_LOCK_WAIT_S = 120.0
LOCAL_LOCK_WAIT_S = 6 * 3600.0


def _sbatch_text(plan: Plan, params: dict[str, Any]) -> str:
    command = f"{job_step_command()} -u -m submitit.core._submit <folder>"
    return sbatch.render(command, str(plan.exp.logs / "%j"), params)


def render_dry_run(plan: Plan) -> str:
    """The sbatch script of every job this submission would queue, and the dependency graph."""
    lines = [f"# warning: {p.render()} (submitting would refuse this)" for p in plan.warnings]
    if plan.search_tasks is not None:
        return "\n".join([*lines, *_render_search(plan)])
    lines.append("# dependency graph")
    scripts = []
    train_runs = [r for r in plan.runs if "train" in plan.stages[r.run_id]]
    if train_runs:
        params = plan.params(train_runs[0].spec.slurm, "train")
        if len(train_runs) > 1:
            params["map_count"] = len(train_runs)
        lines.append(f"train: one array of {len(train_runs)} task(s): " + ", ".join(r.run_id for r in train_runs))
        scripts.append(f"# ---- train array\n{_sbatch_text(plan, params)}")
    for run in plan.runs:
        stages = plan.stages[run.run_id]
        if not stages:
            lines.append(f"{run.run_id}: nothing to submit (done, or queued/running)")
            continue
        counts = {"infer": run.spec.infer.shards, "validate": run.spec.validate.tasks}
        chain = " -> ".join(f"{s}[{counts[s]}]" if counts.get(s, 1) > 1 else s for s in stages)
        lines.append(f"{run.run_id}: {chain}  (afterok between stages)")
        previous = f"<train job of {run.run_id}>" if "train" in stages else None
        for stage in [s for s in stages if s != "train"]:
            params = plan.params(run.spec.slurm, stage)
            if previous:
                params["additional_parameters"] = {"requeue": True, "dependency": f"afterok:{previous}"}
            if counts.get(stage, 1) > 1:
                params["map_count"] = counts[stage]
            scripts.append(f"# ---- {run.run_id} {stage}\n{_sbatch_text(plan, params)}")
            previous = f"<{stage} job of {run.run_id}>"
    lines.append("report: afterany on every job above")
    return "\n".join([*lines, "", *scripts])


def _render_search(plan: Plan) -> list[str]:
    config = plan.spec.sweep.search
    pending = plan.search_tasks or []
    rungs = search.rung_steps(plan.spec)
    at = ", ".join(map(str, rungs)) or "none"
    lines = [
        "# dependency graph",
        f"search: one array of {len(pending)} of {config.trials} task(s), {config.sampler} sampler; each task asks "
        f"for its trial, trains it (validated at the rungs: {at}), validates it and tells the search",
        "report: afterany on the array",
    ]
    if not pending:
        return [*lines, "", "# nothing to submit: every trial is finished, or queued or running"]
    params = _search_params(plan)
    if len(pending) > 1:
        params["map_count"] = len(pending)
    return [*lines, "", f"# ---- search array\n{_sbatch_text(plan, params)}"]


# --------------------------------------------------------------------------------------------
# Watching


def _last_metrics(paths: RunPaths) -> tuple[int | None, float | None]:
    if not paths.metrics.is_file():
        return None, None
    lines = paths.metrics.read_text().splitlines()
    for line in reversed(lines):
        try:
            record = json.loads(line)
            return int(record["step"]), float(record["loss"])
        except (json.JSONDecodeError, KeyError, ValueError):
            continue
    return None, None


def _stage_state(paths: RunPaths, slurm_states: dict[str, str], stage: str, done: bool, job: str | None) -> str:
    if done:
        return "done"
    if paths.error(stage).is_file():
        return "failed"
    return slurm_states.get(job or "", "not submitted" if not job else "unknown").lower()


def _adopt_submitted(exp: ExperimentPaths, state: dict[str, Any]) -> dict[str, str]:
    """Adopt the run folders of an experiment submitted by an earlier release; earlier id -> current."""
    with contextlib.suppress(SpecError, KeyError, TypeError, ValueError):
        adopt_earlier_runs(exp, expand(spec_from_dict(state["spec"])))
    return adopted_folders(exp)


def status(experiment_dir: Path) -> list[dict[str, Any]]:
    """Per run: swept values, each stage's state, SLURM states, progress, loss, CLIP score, requeues, paths."""
    exp = ExperimentPaths(Path(experiment_dir).absolute())
    state = read_state(exp)
    if not state.get("runs") and _searched_spec(state) is None:
        raise FileNotFoundError(f"{exp.state} not found or empty: was this experiment submitted?")
    latest = latest_jobs(state)
    slurm_states = job_states([j for jobs in latest.values() if jobs["executor"] == "slurm" for j in job_ids(jobs)])
    specs = _submitted_specs(state)
    rows = []
    current = _adopt_submitted(exp, state)
    from cover_hpc.orchestrate.accounting import experiment_accounting

    accounting = experiment_accounting(exp.root)  # None without SLURM jobs (each run's wall time x world size)
    entries, job_key = state["runs"], {}
    searched = _searched_spec(state)
    if searched is not None:  # a search: its trials as their tasks claimed them, which may be after submitting
        claims = search.claimed(exp, searched)
        entries = [{"run_id": c.run.run_id, "swept": to_dict(c.run.swept)} for c in claims]
        job_key = {c.run.run_id: f"task-{c.index}" for c in claims}
        specs = {c.run.run_id: c.run.spec for c in claims}
    for entry in entries:
        run_id = current.get(entry["run_id"], entry["run_id"])
        paths = exp.run(run_id)
        key = job_key.get(run_id, entry["run_id"])
        jobs = latest.get(key, latest.get(run_id, {"train": None, "validate": [], "infer": []}))
        train_result = json.loads(paths.train_result.read_text()) if paths.train_result.is_file() else None
        spec = specs.get(entry["run_id"])
        validation_dir = validation_paths(paths, spec) if spec else paths.latest_validation()
        result_file = validation_dir.result if validation_dir else None
        validation = json.loads(result_file.read_text()) if result_file and result_file.is_file() else None
        step, loss = _last_metrics(paths)
        inference = inference_paths(paths, spec) if spec else paths.latest_inference()
        manifest = inference.manifest() if inference else None
        infer_done = bool(manifest and manifest.is_file())
        infer_states = ",".join(sorted({slurm_states.get(j, "") for j in jobs["infer"]} - {""})).lower()
        train_state = _stage_state(paths, slurm_states, "train", train_result is not None, jobs["train"])
        if train_result and train_result.get("status") == "pruned":  # stopped for good by the search's rung
            train_state = f"stopped early at {train_result.get('steps')}"
        validate_ids = stage_ids(jobs["validate"])
        validate_state = _stage_state(paths, slurm_states, "validate", validation is not None, None)
        if validate_state == "not submitted" and validate_ids:
            validate_state = ",".join(sorted({slurm_states.get(j, "unknown") for j in validate_ids})).lower()
        best = (validation or {}).get("best")
        row = {
            "run_id": run_id,
            "swept": entry["swept"],
            "stages": {
                "train": {"state": train_state, "job": jobs["train"]},
                "validate": {"state": validate_state, "jobs": validate_ids},
                "infer": {"state": "done" if infer_done else (infer_states or "not submitted"), "jobs": jobs["infer"]},
            },
            "step": (train_result or {}).get("steps", step),
            "total_steps": (train_result or {}).get("total_steps"),
            "last_loss": loss,
            "clip_score": validation["scores"]["lora"]["clip_score"] if validation else None,
            "best": {"step": best["step"], "kind": best["kind"], "metric": validation["select_by"],
                     "value": best["value"]} if best and validation else None,
            "requeues": (train_result or {}).get("requeues", count_requeues(paths)),
            "lora": str(paths.lora_weights) if paths.lora_weights.is_file() else None,
            "validation": str(result_file) if validation else None,
            "manifest": str(manifest) if infer_done else None,
            "report": str(exp.report_html) if exp.report_html.is_file() else None,
            "gpu_hours": gpu_hours(accounting, run_id, train_result),
        }  # fmt: skip
        rows.append(to_json(from_json(StatusRow, row, f"the status of run {run_id}")))  # typed, versioned
    return rows


def gpu_hours(accounting: Accounting | None, run_id: str, train_result: dict[str, Any] | None) -> dict[str, Any]:
    """A run's GPU-hours as the report counts them: sacct's elapsed time x allocated GPUs of its jobs,
    else its training's wall time x world size (train_result.json; none before training finished)."""
    usage = accounting.runs.get(run_id) if accounting is not None else None
    if usage is not None:
        total = usage.gpu_hours + usage.other_gpu_hours
        return {"train": usage.gpu_hours, "other": usage.other_gpu_hours, "total": total, "source": "sacct"}
    train = train_result or {}
    wall, world = train.get("wall_time_s"), train.get("world_size")
    if isinstance(wall, int | float) and isinstance(world, int) and not isinstance(world, bool) and world >= 1:
        hours = float(wall) * world / 3600
        return {"train": hours, "other": None, "total": hours, "source": f"wall time x {world}"}
    return {"train": None, "other": None, "total": None, "source": "not known yet"}


def experiment_hours(rows: Sequence[dict[str, Any]]) -> str:
    """The experiment's GPU-hours over its runs, as one line of ``cover-hpc status``."""
    hours = [r.get("gpu_hours") or {} for r in rows]
    known = [h for h in hours if h.get("total") is not None]
    total = sum(h["total"] for h in known)
    train = sum(h.get("train") or 0.0 for h in known)
    other = sum(h.get("other") or 0.0 for h in known)
    sources = sorted({"sacct" if h["source"] == "sacct" else "wall time x world size" for h in known})
    unknown = len(hours) - len(known)
    more = f"; {unknown} run{'s' if unknown != 1 else ''} not counted yet" if unknown else ""
    star = (" (*: the training loop's wall time x its processes, no queueing, validation or inference)"
            if any(h["source"] != "sacct" for h in known) else "")  # fmt: skip
    return (f"GPU-hours: {total:.3f} (training {train:.3f}, validation and inference {other:.3f}) over "
            f"{len(known)} run{'s' if len(known) != 1 else ''}, from {' and '.join(sources) or 'nothing yet'}"
            f"{more}{star}")  # fmt: skip


def render_decisions(experiment_dir: Path) -> str:
    """A search's early-stopping decisions, each with the values of the rung it was made on."""
    made = search.decisions(ExperimentPaths(Path(experiment_dir).absolute()))
    if not made:
        return ""
    lines = ["early-stopping decisions (trial, step, value; the rung's values; top 1/reduction_factor go on):"]
    for d in made:
        peers = sorted(d["rung_values"].values(), reverse=d["direction"] == "maximize")
        lines.append(f"  trial {d['trial']} ({d['run_id']}) at step {d['step']}: {d['metric']} {_number(d['value'])}"
                     f" -> {d['decision']}  (rung: {', '.join(_number(v) for v in peers)})")  # fmt: skip
    return "\n".join(lines)


def render_status(rows: Sequence[dict[str, Any]]) -> str:
    keys = sorted({k for r in rows for k in r["swept"]})
    header = ["run_id", *keys, "train", "validate", "infer", "step", "loss", "CLIP", "best", "requeues", "GPU-h"]
    table = [header]
    for r in rows:
        loss = "" if r["last_loss"] is None else f"{r['last_loss']:.4f}"
        clip = "" if r["clip_score"] is None else f"{r['clip_score']:.2f}"
        step = f"{r['step'] or 0}/{r['total_steps'] or '?'}"
        best = r.get("best")
        chosen = f"step {best['step']}: {best['metric']} {_number(best['value'])}" if best else ""
        table.append([r["run_id"], *(str(r["swept"].get(k, "")) for k in keys), r["stages"]["train"]["state"],
                      r["stages"]["validate"]["state"], r["stages"]["infer"]["state"], step, loss, clip, chosen,
                      str(r["requeues"]), _hours(r.get("gpu_hours"))])  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    return "\n".join([*lines, "", experiment_hours(rows)])


def _hours(hours: dict[str, Any] | None) -> str:
    total = (hours or {}).get("total")
    if total is None:
        return ""
    return f"{total:.3f}" + ("" if hours and hours.get("source") == "sacct" else "*")


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def log_files(experiment_dir: Path, run_id: str, stage: str) -> list[Path]:
    exp = ExperimentPaths(Path(experiment_dir).absolute())
    state = read_state(exp)
    searched = _searched_spec(state)
    tasks = [f"task-{c.index}" for c in search.claimed(exp, searched) if c.run.run_id == run_id] if searched else []
    for submission in reversed(state["submissions"]):
        for key in [run_id, *tasks]:
            jobs = submission["runs"].get(key)
            if not jobs:
                continue
            # a search task trains and validates its trial in one job
            ids = [jobs["train"]] if stage == "train" or key in tasks else stage_ids(jobs[stage])
            found = [p for job in ids if job for p in sorted(exp.logs.glob(f"*/{job}_*_log.*"))]
            if found:
                return found
    return []


def cancel(experiment_dir: Path) -> list[str]:
    exp = ExperimentPaths(Path(experiment_dir).absolute())
    state = read_state(exp)
    ids = [j for jobs in latest_jobs(state).values() if jobs["executor"] == "slurm" for j in job_ids(jobs)]
    ids += [s["report"] for s in state["submissions"] if s["executor"] == "slurm" and s.get("report")]
    arrays = sorted({j.split("_")[0] for j in ids})
    if arrays:
        subprocess.run(["scancel", *arrays], check=False, timeout=60)
    return arrays
