"""A search end to end on the local executor (tiny model): trials asked as tasks start, early
stopping at the rungs with every decision logged, the experiment's best with its model card, a
re-submit that trains nothing, and a stopped trial resumed on purpose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_slurm import tiny_clip
from .test_submit import cli, spec_file

pytestmark = [pytest.mark.tiny, pytest.mark.slow]

SEARCH = {"sampler": "random", "trials": 4, "seed": 3, "metric": "heldout_loss", "grace_steps": 2,
          "reduction_factor": 2,
          "space": {"optim.lr_unet": {"distribution": "choice", "values": [1.0e-7, 3.0e-2]},
                    "lora.rank": {"distribution": "int", "low": 2, "high": 4}}}  # fmt: skip


def _starts(run: Path) -> int:
    return len((run / "train" / "starts.jsonl").read_text().splitlines())


def test_a_local_search_stops_losers_early_publishes_the_best_and_a_resubmit_trains_nothing(
    tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    path = spec_file(tmp_path, tiny_model_dir, demo_data_dir, train={"max_steps": 8, "checkpoint_every": 4},
                     validate={"clip_model": tiny_clip(tmp_path), "select_by": "heldout_loss", "loss_images": 2,
                               "num_prompts": 1, "cmmd": False, "ocr": False},
                     infer={"books_file": None}, sweep={"search": SEARCH})  # fmt: skip
    planned = cli("plan", str(path), "--json")
    assert planned.returncode == 0, planned.stderr
    known = [row["run_id"] for row in json.loads(planned.stdout)]
    assert len(known) == 4

    result = cli("submit", str(path), "--executor", "local")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    exp = tmp_path / "experiments" / "sub"
    tasks = [json.loads((exp / "search" / "tasks" / f"{i:05d}.json").read_text()) for i in range(4)]
    assert [t["run_id"] for t in tasks] == known, "the random trials are the ones plan listed"
    assert len({t["trial"] for t in tasks}) == 4, "one trial per task"

    decisions = [json.loads(line) for line in (exp / "search" / "decisions.jsonl").read_text().splitlines()]
    statuses = {}
    for task in tasks:
        run = exp / task["run_id"]
        trained = json.loads((run / "train" / "train_result.json").read_text())
        statuses[task["run_id"]] = trained["status"]
        mine = [d for d in decisions if d["run_id"] == task["run_id"]]
        assert [d["step"] for d in mine] == [s for s in (2, 4) if s <= trained["steps"]], mine
        stopped = [d for d in mine if d["decision"] == "stop"]
        if trained["status"] == "pruned":
            assert len(stopped) == 1 and stopped[0]["step"] == trained["steps"]
            assert trained["steps"] < 8
        else:
            assert trained["status"] == "finished" and trained["steps"] == 8 and not stopped
        for d in mine:  # each decision carries the values it was made on, its own among them
            assert str(d["trial"]) in d["rung_values"] and d["rung_values"][str(d["trial"])] == d["value"]
        assert (run / "validate").is_dir() and (run / "best" / "pytorch_lora_weights.safetensors").is_file()
    assert "pruned" in statuses.values() and "finished" in statuses.values(), statuses

    best = json.loads((exp / "best" / "search.json").read_text())
    finished = {t["run_id"] for t in tasks if statuses[t["run_id"]] == "finished"}
    assert best["winner"]["run_id"] in finished and best["finished"] == 4
    assert (exp / "best" / "lora_kohya.safetensors").is_file()
    card = (exp / "best" / "README.md").read_text()
    assert card.startswith("---\n") and "Winner" in card and best["winner"]["run_id"] in card and "heldout_loss" in card
    if best["runner_up"]:
        assert best["runner_up"]["run_id"] in card

    status = cli("status", str(exp))
    assert status.returncode == 0 and "early-stopping decisions" in status.stdout
    assert "stopped early at" in status.stdout

    starts = {t["run_id"]: _starts(exp / t["run_id"]) for t in tasks}
    again = cli("submit", str(path), "--executor", "local")
    assert again.returncode == 0 and "0 of 4 search trials" in again.stdout, again.stdout
    assert {t["run_id"]: _starts(exp / t["run_id"]) for t in tasks} == starts, "a finished search trained again"

    stopped_run = next(run_id for run_id, state in statuses.items() if state == "pruned")
    resumed = cli("resume", str(path), stopped_run)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-2000:]
    trained = json.loads((exp / stopped_run / "train" / "train_result.json").read_text())
    assert trained["status"] == "finished" and trained["steps"] == 8
    assert (exp / stopped_run / "train" / "stopped_early.json").is_file()
    refused = cli("resume", str(path), stopped_run)
    assert refused.returncode == 1 and "was not stopped early" in refused.stderr
    changed = cli("submit", str(path), "train.max_steps=9", "--executor", "local")
    assert changed.returncode == 1 and "share one spec" in changed.stderr, changed.stderr
    assert {t["run_id"]: _starts(exp / t["run_id"]) for t in tasks if t["run_id"] != stopped_run} == {
        k: v for k, v in starts.items() if k != stopped_run
    }, "a refused search trained anyway"
