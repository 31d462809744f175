"""A search (``sweep.search``): Optuna's samplers and its successive-halving pruner, with the state
in Optuna's journal file storage inside the experiment folder (no database server; an append-only
file with a lock that works on shared filesystems).

- Each array task asks for its trial when it first starts (:func:`claim`): task ``i`` is bound to
  one trial, written in ``search/tasks/<i>.json`` under the search lock, so a requeued or
  re-submitted task trains the same trial and no trial is lost or doubled. A random sampler is
  seeded per task, so its trials are known at plan time (:func:`planned_trials`); TPE learns from
  the trials that finished before it asks.
- During training, rank 0 scores the snapshot at each rung (``grace_steps x reduction_factor^k``)
  with the run's own validation (:func:`judge`), reports it to the trial and asks the pruner; each
  decision is logged with the values of the rung it was made on (``search/decisions.jsonl``).
- After the trial's validation, :func:`finish` tells Optuna its value (or that it was pruned) and
  publishes the experiment's best run in ``<exp>/best/``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cover_hpc.runtime import preemption
from cover_hpc.spec.ids import run_id
from cover_hpc.spec.schema import ExperimentSpec, SearchConfig, coerce, field_type, to_dict
from cover_hpc.spec.sweep import Run, resolve
from cover_hpc.spec.vocab import METRICS
from cover_hpc.store import atomic, locks
from cover_hpc.store.paths import KOHYA_WEIGHTS, LORA_WEIGHTS, ExperimentPaths, RunPaths

log = logging.getLogger(__name__)

#: How long a task waits for another one that holds the search lock (asking, telling, publishing).
LOCK_WAIT_S = 600.0


def enabled(spec: ExperimentSpec) -> bool:
    return spec.sweep.search.sampler != "none"


def rung_steps(spec: ExperimentSpec) -> list[int]:
    """The training steps where a trial is validated and may be stopped: grace x eta^k before the end."""
    search, last = spec.sweep.search, spec.train.max_steps
    if not search.grace_steps or last is None:
        return []
    steps, step = [], search.grace_steps
    while step < last:
        steps.append(step)
        step *= search.reduction_factor
    return steps


def direction(metric: str) -> Literal["maximize", "minimize"]:
    return "maximize" if METRICS[metric][0] == "max" else "minimize"


def _distributions(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    made: dict[str, Any] = {}
    for key, dist in space.items():
        kind = dist["distribution"]
        if kind == "choice":
            made[key] = CategoricalDistribution([json.dumps(v) if isinstance(v, (list, dict)) else v
                                                 for v in dist["values"]])  # fmt: skip
        elif kind == "int":
            low, high = int(float(dist["low"])), int(float(dist["high"]))
            made[key] = IntDistribution(low, high, step=int(float(dist.get("step", 1))))
        else:
            step = dist.get("step")
            made[key] = FloatDistribution(float(dist["low"]), float(dist["high"]), log=kind == "log_uniform",
                                          step=float(step) if step and kind == "uniform" else None)  # fmt: skip
    return made


def _sampler(search: SearchConfig, index: int) -> Any:
    """Seeded per task: a random trial depends only on (seed, task), whatever order tasks start in."""
    import optuna

    seed = search.seed * 1_000_003 + index
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = max(2, min(10, search.trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def _pruner(search: SearchConfig) -> Any:
    import optuna

    if not search.grace_steps:
        return optuna.pruners.NopPruner()
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=search.grace_steps, reduction_factor=search.reduction_factor, min_early_stopping_rate=0
    )


def open_study(exp: ExperimentPaths, spec: ExperimentSpec, index: int = 0) -> Any:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    exp.search.mkdir(parents=True, exist_ok=True)
    path = str(exp.search_journal)
    storage = JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    search = spec.sweep.search
    with contextlib.suppress(KeyError):  # loaded, not created again: that appends to the journal at every open
        return optuna.load_study(storage=storage, study_name=spec.name, sampler=_sampler(search, index),
                                 pruner=_pruner(search))  # fmt: skip
    return optuna.create_study(
        storage=storage, study_name=spec.name, direction=direction(search.metric), load_if_exists=True,
        sampler=_sampler(search, index), pruner=_pruner(search),
    )  # fmt: skip


def _swept(spec: ExperimentSpec, params: dict[str, Any]) -> dict[str, Any]:
    swept = {}
    for key in spec.sweep.search.space:  # in the spec's order: the run's label reads as the space does
        value = params[key]
        if isinstance(value, str) and spec.sweep.search.space[key]["distribution"] == "choice":
            with contextlib.suppress(ValueError):  # a list or mapping value was offered as its JSON text
                value = json.loads(value) if value[:1] in "[{" else value
        swept[key] = coerce(value, field_type(key))
    return swept


def trial_run(spec: ExperimentSpec, params: dict[str, Any]) -> Run:
    swept = _swept(spec, params)
    resolved = resolve(spec, swept)
    return Run(run_id(resolved, swept), swept, resolved)


@dataclass(frozen=True)
class Claim:
    """Array task ``index`` trains trial ``number`` as ``run``."""

    index: int
    number: int
    run: Run


def _task_record(exp: ExperimentPaths, index: int) -> dict[str, Any] | None:
    path = exp.search_task(index)
    if not path.is_file():
        return None
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path}: not a search task record ({error})") from None
    return record


def claim(exp: ExperimentPaths, spec: ExperimentSpec, index: int) -> Claim:
    """The trial of array task ``index``: the one it was given before, else a new one asked now."""
    if not 0 <= index < spec.sweep.search.trials:
        raise ValueError(f"search task {index} is outside 0..{spec.sweep.search.trials - 1} (sweep.search.trials)")
    with locks.held(exp.search_lock, f"the search of experiment {exp.root}", wait_s=LOCK_WAIT_S,
                    while_waiting=preemption.check):  # fmt: skip
        record = _task_record(exp, index)
        if record is not None:
            return Claim(index, int(record["trial"]), _recorded_run(exp, spec, index, record))
        study = open_study(exp, spec, index)
        from optuna.trial import TrialState

        trial = None
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.user_attrs.get("task") == index:  # asked, but killed before its record was written
                trial = frozen
            elif "task" not in frozen.user_attrs:  # asked by a task killed before it could name itself
                study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)
        if trial is None:
            asked = study.ask(_distributions(spec.sweep.search.space))
            study._storage.set_trial_user_attr(asked._trial_id, "task", index)
            params, number = asked.params, asked.number
        else:
            params, number = trial.params, trial.number
        run = trial_run(spec, params)
        study._storage.set_trial_user_attr(_trial_id(study, number), "run_id", run.run_id)
        atomic.write_json(exp.search_task(index), {"task": index, "trial": number, "run_id": run.run_id,
                                                   "params": params, "swept": to_dict(run.swept)})  # fmt: skip
        log.info("search task %d trains trial %d as run %s", index, number, run.run_id)
        return Claim(index, number, run)


def _trial_id(study: Any, number: int) -> int:
    return int(study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number))


class SearchChanged(ValueError):
    """The spec no longer makes the trials a search's tasks already train."""


def _recorded_run(exp: ExperimentPaths, spec: ExperimentSpec, index: int, record: dict[str, Any]) -> Run:
    """The run of a task's recorded trial under ``spec``: refused where ``spec`` changed what the
    trial trains (the space, or a key every trial shares), since its trials would not compare."""
    try:
        run = trial_run(spec, record["params"])
    except (KeyError, TypeError, ValueError):
        run = None
    if run is None or run.run_id != record.get("run_id"):
        made = f"run {run.run_id}" if run else "no run (the searched keys changed)"
        raise SearchChanged(
            f"sweep.search: task {index} of the search in {exp.root} trains run {record.get('run_id')}, but this "
            f"spec makes it {made}; the trials of one search share one spec, so start a new search (another name "
            "or output_dir) or restore the spec it was submitted with"
        )
    return run


def claimed(exp: ExperimentPaths, spec: ExperimentSpec) -> list[Claim]:
    """Every task that has its trial, by task (:class:`SearchChanged` where the spec changed)."""
    claims = []
    for index in range(spec.sweep.search.trials):
        record = _task_record(exp, index)
        if record is not None:
            claims.append(Claim(index, int(record["trial"]), _recorded_run(exp, spec, index, record)))
    return claims


def finished_tasks(exp: ExperimentPaths, spec: ExperimentSpec) -> set[int]:
    """Tasks whose trial is over (told complete, pruned or failed): a re-submit leaves them alone."""
    from optuna.trial import TrialState

    if not exp.search_journal.is_file():
        return set()
    study = open_study(exp, spec)
    return {
        int(trial.user_attrs["task"])
        for trial in study.get_trials(deepcopy=False)
        if "task" in trial.user_attrs and trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    }


def planned_trials(spec: ExperimentSpec) -> list[Run] | None:
    """The trials a random search will train, known before it starts (None for TPE: its trials
    depend on the results of earlier ones)."""
    import optuna

    if spec.sweep.search.sampler != "random":
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs = []
    distributions = _distributions(spec.sweep.search.space)
    for index in range(spec.sweep.search.trials):
        study = optuna.create_study(sampler=_sampler(spec.sweep.search, index))
        runs.append(trial_run(spec, study.ask(distributions).params))
    return runs


# --------------------------------------------------------------------------------------------
# During training: the rungs


def decisions(exp: ExperimentPaths) -> list[dict[str, Any]]:
    if not exp.search_decisions.is_file():
        return []
    found = []
    for line in exp.search_decisions.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill: the decision is asked again and logged again
    return found


def judge(exp: ExperimentPaths, spec: ExperimentSpec, task: Claim, paths: RunPaths, step: int) -> bool:
    """Score the trial's snapshot at rung ``step``, report it, and say whether the trial stops here.
    Asked again for a step already decided (a resumed run), it gives the logged decision."""
    from cover_hpc.stages.validate import score_snapshot

    logged = [d for d in decisions(exp) if d["trial"] == task.number and d["step"] == step]
    if logged:
        return bool(logged[-1]["decision"] == "stop")
    metric = spec.sweep.search.metric
    value = score_snapshot(task.run.spec, paths, step).metrics.get(metric)
    with locks.held(exp.search_lock, f"the search of experiment {exp.root}", wait_s=LOCK_WAIT_S,
                    while_waiting=preemption.check):  # fmt: skip
        import optuna

        study = open_study(exp, spec, task.index)
        trial = optuna.trial.Trial(study, _trial_id(study, task.number))
        number = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else float("nan")
        trial.report(number, step)  # a NaN (a metric that could not be computed) stops the trial
        stop = bool(trial.should_prune())
        peers = {
            str(t.number): t.intermediate_values[step]
            for t in study.get_trials(deepcopy=False)
            if step in t.intermediate_values
        }
        record = {"time": time.time(), "trial": task.number, "task": task.index, "run_id": task.run.run_id,
                  "step": step, "metric": metric, "direction": direction(metric), "value": number,
                  "rung_values": peers, "reduction_factor": spec.sweep.search.reduction_factor,
                  "decision": "stop" if stop else "continue"}  # fmt: skip
        exp.search_decisions.parent.mkdir(parents=True, exist_ok=True)
        with exp.search_decisions.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    log.info("search: trial %d (%s) at step %d: %s %.4g -> %s", task.number, task.run.run_id, step, metric, number,
             record["decision"])  # fmt: skip
    track_decision(task, paths, record)
    return stop


def track_decision(task: Claim, paths: RunPaths, record: dict[str, Any]) -> None:
    """A rung's decision, in the trial's tracker run: its value at the step and whether it goes on."""
    from contextlib import closing

    from cover_hpc.track import open_tracker

    with closing(open_tracker(task.run.spec, paths, "search")) as tracker:
        tracker.log({"search": {record["metric"]: record["value"], "continue": record["decision"] == "continue"}},
                    record["step"])  # fmt: skip
        tracker.summary({f"search/decision_step_{record['step']}": record["decision"], "search/trial": task.number,
                         "search/rung_values": record["rung_values"]})  # fmt: skip


# --------------------------------------------------------------------------------------------
# After validation: tell, and the experiment's best


def _best_value(points: Sequence[dict[str, Any]], metric: str) -> float | None:
    values = [p["metrics"].get(metric) for p in points if p.get("kind") != "base"]
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return None
    return max(finite) if METRICS[metric][0] == "max" else min(finite)


def finish(exp: ExperimentPaths, spec: ExperimentSpec, task: Claim, pruned: bool, validation: dict[str, Any]) -> None:
    """Tell the trial's value (its best point by the search metric) or that it was stopped early,
    then publish the experiment's best. Telling twice (a requeued task) changes nothing."""
    from optuna.trial import TrialState

    value = _best_value(validation.get("points", []), spec.sweep.search.metric)
    with locks.held(exp.search_lock, f"the search of experiment {exp.root}", wait_s=LOCK_WAIT_S,
                    while_waiting=preemption.check):  # fmt: skip
        study = open_study(exp, spec, task.index)
        trial = study._storage.get_trial(_trial_id(study, task.number))
        if trial.state == TrialState.RUNNING:  # attributes first: a finished trial takes no more
            study._storage.set_trial_user_attr(trial._trial_id, "best_value", value)
            if pruned:
                study.tell(task.number, state=TrialState.PRUNED, skip_if_finished=True)
            elif value is None:
                study.tell(task.number, state=TrialState.FAIL, skip_if_finished=True)
            else:
                study.tell(task.number, value, skip_if_finished=True)
        published = publish_experiment_best(exp, spec, study)
    from contextlib import closing

    from cover_hpc.track import open_tracker

    with closing(open_tracker(task.run.spec, exp.run(task.run.run_id), "search")) as tracker:
        state = "pruned" if pruned else ("failed" if value is None else "complete")
        tracker.summary({"search/trial": task.number, "search/state": state, "search/value": value,
                         "search/metric": spec.sweep.search.metric,
                         "search/winner": published is not None and winner(exp) == task.run.run_id})  # fmt: skip


def winner(exp: ExperimentPaths) -> str | None:
    """The run id of the experiment's best, once one is published."""
    try:
        return str(json.loads((exp.best / "search.json").read_text())["winner"]["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def leaderboard(exp: ExperimentPaths, spec: ExperimentSpec, study: Any | None = None) -> list[dict[str, Any]]:
    """Every trial, best first by its value (COMPLETE trials, then stopped ones by their best value)."""
    study = study or open_study(exp, spec)
    sign = -1.0 if direction(spec.sweep.search.metric) == "maximize" else 1.0
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if "task" not in trial.user_attrs:
            continue
        best = trial.user_attrs.get("best_value")
        rows.append({"trial": trial.number, "task": trial.user_attrs["task"], "run_id": trial.user_attrs.get("run_id"),
                     "state": trial.state.name.lower(), "params": trial.params, "value": best,
                     "last_step": trial.last_step, "intermediate": dict(trial.intermediate_values)})  # fmt: skip
    complete = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    others = [r for r in rows if r not in complete]
    complete.sort(key=lambda r: (sign * r["value"], r["trial"]))
    others.sort(key=lambda r: (r["value"] is None, sign * (r["value"] or 0.0), r["trial"]))
    return complete + others


def publish_experiment_best(exp: ExperimentPaths, spec: ExperimentSpec, study: Any) -> Path | None:
    """``<exp>/best/``: the best finished trial's best LoRA (diffusers and kohya), its samples, and
    a model card naming the search, the metric, the winner's hyperparameters and the runner-up."""
    board = [r for r in leaderboard(exp, spec, study) if r["state"] == "complete" and r["value"] is not None]
    if not board:
        return None
    winner, runner_up = board[0], board[1] if len(board) > 1 else None
    source = exp.run(winner["run_id"]).best
    if not (source / LORA_WEIGHTS).is_file():
        log.warning("the search's winner %s has no best/ yet; the experiment's best is not published", winner["run_id"])
        return None
    finished = len([r for r in leaderboard(exp, spec, study) if r["state"] != "running"])
    current = exp.best / "search.json"
    if current.is_file():
        shown = json.loads(current.read_text())
        if (shown.get("winner", {}).get("run_id"), (shown.get("runner_up") or {}).get("run_id"),
                shown.get("finished")) == (winner["run_id"], runner_up and runner_up["run_id"], finished):  # fmt: skip
            return exp.best
    staging = exp.root / f".best-{os.getpid()}-{time.time_ns()}"
    shutil.copytree(source, staging)
    search = spec.sweep.search
    summary = {"search": to_dict(search), "metric": search.metric, "direction": direction(search.metric),
               "winner": winner, "runner_up": runner_up, "trials": search.trials, "finished": finished}  # fmt: skip
    atomic.write_json(staging / "search.json", summary)
    card = (staging / "README.md").read_text() if (staging / "README.md").is_file() else ""
    front, body = "", card
    if card.startswith("---\n") and "\n---\n" in card[4:]:  # the hub's YAML front matter stays first
        end = card.index("\n---\n", 4) + len("\n---\n")
        front, body = card[:end], card[end:]
    (staging / "README.md").write_text(front + "\n" + _search_card(summary) + "\n" + body)
    for name in (LORA_WEIGHTS, KOHYA_WEIGHTS):
        if not (staging / name).is_file():
            raise FileNotFoundError(f"{source} lacks {name}; validate run {winner['run_id']} again")
    old = exp.root / f".best-old-{os.getpid()}-{time.time_ns()}"
    if exp.best.exists():
        os.rename(exp.best, old)
    os.rename(staging, exp.best)
    shutil.rmtree(old, ignore_errors=True)
    atomic.fsync_path(exp.root)
    return exp.best


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _search_card(summary: dict[str, Any]) -> str:
    search, winner, runner_up, metric = summary["search"], summary["winner"], summary["runner_up"], summary["metric"]
    stopping = "."
    if search["grace_steps"]:
        stopping = (
            f", with early stopping from step {search['grace_steps']} (reduction factor {search['reduction_factor']})."
        )
    lines = [
        "# The experiment's best (search)",
        "",
        f"Chosen by a {search['sampler']} search of {', '.join(search['space'])} ({summary['finished']} of "
        f"{summary['trials']} trials done), ranked by `{metric}` ({summary['direction']}){stopping}",
        "",
        f"- **Winner**: trial {winner['trial']}, run `{winner['run_id']}`: {metric} {_format(winner['value'])}",
    ]
    lines += [f"  - `{key}` = {_format(value)}" for key, value in winner["params"].items()]
    if runner_up:
        lines.append(f"- **Runner-up**: trial {runner_up['trial']}, run `{runner_up['run_id']}`: "
                     f"{metric} {_format(runner_up['value'])}")  # fmt: skip
        lines += [f"  - `{key}` = {_format(value)}" for key, value in runner_up["params"].items()]
    lines += ["", "The run's own model card follows."]
    return "\n".join(lines) + "\n"
