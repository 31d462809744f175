"""A search's bookkeeping without training: each array task's trial (claimed once, the same one when
asked again, distinct across tasks claiming at once), orphaned trials, the random sampler's plan, and
the spec checks of ``sweep.search``."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from cover_hpc.orchestrate import search
from cover_hpc.spec.load import load_spec
from cover_hpc.spec.schema import ExperimentSpec, SpecError
from cover_hpc.store.paths import ExperimentPaths

SEARCH = """\
name: srch
output_dir: {out}
train:
  max_steps: 16
validate:
  select_by: heldout_loss
sweep:
  search:
    sampler: {sampler}
    trials: {trials}
    seed: 3
    space:
      optim.lr_unet: {{distribution: log_uniform, low: 1.0e-6, high: 1.0e-2}}
      lora.rank: {{distribution: choice, values: [2, 4, 8, 16]}}
      train.seed: {{distribution: int, low: 0, high: 1000}}
    metric: heldout_loss
    grace_steps: 4
    reduction_factor: 2
"""


def search_spec(tmp_path: Path, trials: int = 4, sampler: str = "random") -> ExperimentSpec:
    path = tmp_path / "search.yaml"
    path.write_text(SEARCH.format(out=tmp_path / "experiments", sampler=sampler, trials=trials))
    return load_spec(path)


def experiment(spec: ExperimentSpec) -> ExperimentPaths:
    return ExperimentPaths.of(spec.output_dir, spec.name)


def trial_states(exp: ExperimentPaths, spec: ExperimentSpec) -> dict[int, tuple[str, Any]]:
    """Trial number -> (state, its task attribute or None), as the journal has it."""
    study = search.open_study(exp, spec)
    return {t.number: (t.state.name, t.user_attrs.get("task")) for t in study.get_trials(deepcopy=False)}


def test_a_task_claims_its_trial_once_and_gets_the_same_one_again(tmp_path: Path) -> None:
    spec = search_spec(tmp_path)
    exp = experiment(spec)
    first = search.claim(exp, spec, 1)
    record = json.loads(exp.search_task(1).read_text())
    again = search.claim(exp, spec, 1)  # a requeued or re-submitted task
    assert again == first
    assert record == json.loads(exp.search_task(1).read_text())  # left as it was
    assert record["task"] == 1 and record["trial"] == first.number and record["run_id"] == first.run.run_id
    assert trial_states(exp, spec) == {first.number: ("RUNNING", 1)}  # asked once, not twice
    assert [c.index for c in search.claimed(exp, spec)] == [1]
    assert search.finished_tasks(exp, spec) == set()  # claimed, not told: a re-submit runs it again
    with pytest.raises(ValueError, match=r"search task 4 is outside 0\.\.3"):
        search.claim(exp, spec, 4)


def _claim_in_process(path: str, index: int, barrier: Any, results: Any) -> None:
    spec = load_spec(Path(path))
    barrier.wait()  # both ask at once
    claimed = search.claim(experiment(spec), spec, index)
    results.put((index, claimed.number, claimed.run.run_id))


def test_two_processes_claiming_at_once_get_distinct_trials(tmp_path: Path) -> None:
    spec = search_spec(tmp_path, trials=6)
    exp = experiment(spec)
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()
    tasks = [0, 1, 2, 3]
    processes = [context.Process(target=_claim_in_process, args=(str(tmp_path / "search.yaml"), i, barrier, results))
                 for i in tasks]  # fmt: skip
    for process in processes:
        process.start()
    got = sorted(results.get(timeout=120) for _ in tasks)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert [index for index, _, _ in got] == tasks
    assert len({number for _, number, _ in got}) == len(tasks)  # one trial per task, none shared
    assert len({run_id for _, _, run_id in got}) == len(tasks)
    states = trial_states(exp, spec)
    assert states == {number: ("RUNNING", index) for index, number, _ in got}  # no trial asked twice
    records = {c.index: (c.number, c.run.run_id) for c in search.claimed(exp, spec)}
    assert records == {index: (number, run_id) for index, number, run_id in got}


def test_an_orphaned_trial_without_a_task_is_failed_by_the_next_claim(tmp_path: Path) -> None:
    """A task killed between asking Optuna and naming itself leaves a RUNNING trial nobody trains:
    the next claim fails it, so it never counts as running nor wins."""
    spec = search_spec(tmp_path)
    exp = experiment(spec)
    study = search.open_study(exp, spec, 0)
    orphan = study.ask(search._distributions(spec.sweep.search.space))
    assert trial_states(exp, spec) == {orphan.number: ("RUNNING", None)}
    claimed = search.claim(exp, spec, 0)
    assert claimed.number != orphan.number
    assert trial_states(exp, spec) == {orphan.number: ("FAIL", None), claimed.number: ("RUNNING", 0)}
    assert search.finished_tasks(exp, spec) == set()  # the orphan is no task's: nothing counts as done
    assert [row["trial"] for row in search.leaderboard(exp, spec)] == [claimed.number]


def test_a_trial_asked_but_not_recorded_is_the_tasks_own_on_its_next_start(tmp_path: Path) -> None:
    """Killed after naming its trial but before writing search/tasks/<i>.json: the next start of the
    task takes that trial back rather than asking a second one."""
    spec = search_spec(tmp_path)
    exp = experiment(spec)
    first = search.claim(exp, spec, 2)
    exp.search_task(2).unlink()
    again = search.claim(exp, spec, 2)
    assert again == first
    assert trial_states(exp, spec) == {first.number: ("RUNNING", 2)}


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]])
def test_a_random_search_trains_the_trials_planned_whatever_order_tasks_start_in(
    tmp_path: Path, order: list[int]
) -> None:
    spec = search_spec(tmp_path, trials=5)
    planned = search.planned_trials(spec)
    assert planned is not None and len({run.run_id for run in planned}) == 5
    exp = experiment(spec)
    claims = {index: search.claim(exp, spec, index) for index in order}
    assert {index: claims[index].run for index in order} == dict(enumerate(planned))
    assert [claims[index].number for index in order] == list(range(5))  # trial numbers follow the starts


def test_a_tpe_search_has_no_plan(tmp_path: Path) -> None:
    assert search.planned_trials(search_spec(tmp_path, sampler="tpe")) is None


def test_a_told_trial_counts_as_finished_and_telling_again_changes_nothing(tmp_path: Path) -> None:
    spec = search_spec(tmp_path)
    exp = experiment(spec)
    claimed = search.claim(exp, spec, 0)
    points = [{"kind": "snapshot", "step": 16, "metrics": {"heldout_loss": 0.5}}]
    search.finish(exp, spec, claimed, False, {"points": points})
    assert search.finished_tasks(exp, spec) == {0}
    worse = [{"kind": "snapshot", "step": 16, "metrics": {"heldout_loss": 9.0}}]
    search.finish(exp, spec, claimed, True, {"points": worse})  # a requeued task telling again
    study = search.open_study(exp, spec)
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.state.name == "COMPLETE" and trial.value == 0.5 and trial.user_attrs["best_value"] == 0.5


def test_reading_a_search_writes_nothing_to_its_journal(tmp_path: Path) -> None:
    """status, a re-submit and every task open the study: only asking and telling append to the journal."""
    spec = search_spec(tmp_path)
    exp = experiment(spec)
    claimed = search.claim(exp, spec, 0)
    journal = exp.search_journal.read_bytes()
    search.open_study(exp, spec, 1)
    search.finished_tasks(exp, spec)
    search.leaderboard(exp, spec)
    assert search.claim(exp, spec, 0) == claimed
    assert exp.search_journal.read_bytes() == journal


def test_rungs_are_grace_steps_times_powers_of_the_reduction_factor(tmp_path: Path) -> None:
    assert search.rung_steps(search_spec(tmp_path)) == [4, 8]  # 16 is the end: validated anyway


# --------------------------------------------------------------------------------------------
# Spec checks: each mistake names its key (and line)


SPACE_OK = "      optim.lr_unet: {distribution: log_uniform, low: 1.0e-5, high: 1.0e-3}\n"


def spec_text(tmp_path: Path, space: str = SPACE_OK, extra: str = "", metric: str = "heldout_loss") -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "train:\n  max_steps: 16\nvalidate:\n  select_by: heldout_loss\n"
        f"sweep:\n  search:\n    sampler: random\n    trials: 4\n    metric: {metric}\n    space:\n{space}{extra}"
    )
    return path


def problems_of(tmp_path: Path, space: str = SPACE_OK, extra: str = "", metric: str = "heldout_loss") -> str:
    with pytest.raises(SpecError) as caught:
        load_spec(spec_text(tmp_path, space, extra, metric))
    return str(caught.value)


def test_the_specs_below_are_valid_but_for_their_one_mistake(tmp_path: Path) -> None:
    assert search.enabled(load_spec(spec_text(tmp_path)))


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ("      optim.lr_unet: {distribution: gauss, low: 1.0e-5, high: 1.0e-3}\n",
         "line 11: sweep.search.space.optim.lr_unet.distribution: got 'gauss'; use one of uniform, log_uniform"),
        ("      lora.rank: {distribution: int, low: 8, high: 4}\n",
         "line 11: sweep.search.space.lora.rank.low: got low 8.0 >= high 4.0; low must be below high."),
        ("      optim.lr_unet: {distribution: uniform, low: 1.0e-3, high: 1.0e-3}\n",
         "line 11: sweep.search.space.optim.lr_unet.low: got low 0.001 >= high 0.001"),
        ("      optim.lr_unet: {distribution: log_uniform, low: 0, high: 1.0e-3}\n",
         "line 11: sweep.search.space.optim.lr_unet.low: got 0.0; a log scale needs low > 0"),
        ("      optim.lr_unet: {distribution: log_uniform, low: -1.0e-3, high: 1.0e-3}\n",
         "line 11: sweep.search.space.optim.lr_unet.low: got -0.001; a log scale needs low > 0"),
        ("      optim.lr_unte: {distribution: uniform, low: 0.1, high: 0.2}\n",
         "line 11: sweep.search.space.optim.lr_unte: searches an unknown key 'optim.lr_unte'. "
         "did you mean 'optim.lr_unet'?"),
    ],
    ids=["unknown-distribution", "low-above-high", "low-equals-high", "log-over-zero", "log-below-zero",
         "unknown-key"],
)  # fmt: skip
def test_a_bad_distribution_names_its_key(tmp_path: Path, space: str, expected: str) -> None:
    message = problems_of(tmp_path, space)
    assert expected in message
    assert "(1 problem)" in message  # that one only


def test_a_bound_written_without_a_dot_is_a_number(tmp_path: Path) -> None:
    space = "      optim.lr_unet: {distribution: log_uniform, low: 1e-6, high: 1e-2}\n"
    assert load_spec(spec_text(tmp_path, space)).sweep.search.space["optim.lr_unet"]["distribution"] == "log_uniform"


def test_a_search_and_a_grid_over_the_same_key_names_the_grid_axis(tmp_path: Path) -> None:
    message = problems_of(tmp_path, extra="  grid:\n    optim.lr_unet: [1.0e-4, 2.0e-4]\n")
    assert "line 13: sweep.grid.optim.lr_unet: optim.lr_unet is both searched and on a grid" in message
    assert "(1 problem)" in message


def test_a_search_metric_other_than_select_by_names_both(tmp_path: Path) -> None:
    message = problems_of(tmp_path, metric="clip_score")
    assert "line 4: validate.select_by: is 'heldout_loss' but the search ranks trials by 'clip_score'" in message
    assert "(sweep.search.metric)" in message and "(1 problem)" in message
