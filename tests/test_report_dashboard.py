"""The report as the sweep's dashboard (issue 21): every metric as numbers per run and per snapshot,
a leaderboard of every trial with its state and swept values, a search's metrics against its
searched values and its rungs, GPU-hours spent and saved (from sacct through
cover_hpc.orchestrate.accounting, else wall time x world size), and tables that sort in the browser.

The experiment folders are written here in the format the stages and the search write (see
tests/test_report_snapshots.py for the snapshot views), so these test what the report reads.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cover_hpc.orchestrate.accounting import experiment_accounting, gpus_of, parse_sacct
from cover_hpc.stages.report import Accounting, build_report

from .test_report_snapshots import Node, page

SUBMITTED = 1_800_000_000.0  # when the experiment's SLURM submission was recorded

SPEC: dict[str, Any] = {
    "name": "search", "train": {"max_steps": 16}, "validate": {"select_by": "clip_score"},
    "sweep": {"grid": {}, "zip": {}, "search": {
        "sampler": "random", "trials": 4, "seed": 0, "metric": "heldout_loss", "grace_steps": 4, "reduction_factor": 2,
        "space": {"optim.lr_unet": {"distribution": "log_uniform", "low": 1e-6, "high": 1e-2},
                  "lora.rank": {"distribution": "choice", "values": [4, 8]}}}},
}  # fmt: skip

#: trial -> (run id, swept values)
TRIALS = {
    0: ("lr1e-4_rank4-aaaa", {"optim.lr_unet": 1e-4, "lora.rank": 4}),
    1: ("lr1e-3_rank8-bbbb", {"optim.lr_unet": 1e-3, "lora.rank": 8}),
    2: ("lr1e-2_rank4-cccc", {"optim.lr_unet": 1e-2, "lora.rank": 4}),
}


def values(step: int, loss: float) -> dict[str, float]:
    """Every metric of a point: a held-out loss as given, the others from the step."""
    return {"clip_score": 20.0 + step / 4, "clip_score_short": 18.0 + step / 8, "cmmd": 3.0 - step / 8,
            "ocr_similarity": 0.25 + step / 64, "ocr_exact": step / 32, "heldout_loss": loss}  # fmt: skip


def write_trial(exp: Path, trial: int, points: dict[int, float], result: dict[str, Any] | None) -> Path:
    """A search trial's run folder (config, train result, validation choosing by CLIP) and task record."""
    run_id, swept = TRIALS[trial]
    root = exp / run_id
    (root / "train").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"run_id": run_id, "swept": swept}))
    (root / "train" / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1 / s}) + "\n"
                                                          for s in range(1, 5)))  # fmt: skip
    task = exp / "search" / "tasks" / f"{trial:05d}.json"
    task.parent.mkdir(parents=True, exist_ok=True)
    task.write_text(json.dumps({"task": trial, "trial": trial, "run_id": run_id, "params": swept, "swept": swept}))
    if result is not None:
        (root / "train" / "train_result.json").write_text(json.dumps({"schema_version": 1, **result}))
    if not points:
        return root
    last = max(points)
    found = [{"point": "base", "step": 0, "kind": "base", "metrics": values(0, 0.7)}]
    found += [{"point": f"step-{s:08d}", "step": s, "kind": "final" if s == last else "snapshot",
               "metrics": values(s, loss)} for s, loss in sorted(points.items())]  # fmt: skip
    best = max(found[1:], key=lambda p: (p["metrics"]["clip_score"], -p["step"]))
    chosen = {"step": best["step"], "kind": best["kind"], "value": best["metrics"]["clip_score"]}
    validation = {"run_id": run_id, "select_by": "clip_score", "points": found, "items": [], "scores": {},
                  "best": chosen}  # fmt: skip
    folder = root / "validate" / "test_set-0123abcd"
    folder.mkdir(parents=True)
    (folder / "validation.json").write_text(json.dumps(validation))
    return root


def decision(trial: int, step: int, value: float, rung: dict[str, float], stop: bool) -> str:
    return json.dumps({"time": SUBMITTED + trial, "trial": trial, "task": trial, "run_id": TRIALS[trial][0],
                       "step": step, "metric": "heldout_loss", "direction": "minimize", "value": value,
                       "rung_values": rung, "reduction_factor": 2,
                       "decision": "stop" if stop else "continue"})  # fmt: skip


def write_search(exp: Path, executor: str = "local") -> Path:
    """Trial 0 finished (16 steps, 36 s on 2 processes); trial 1 was stopped at its first rung (step 4,
    18 s on 2); trial 2 failed in training; task 3 has not started."""
    exp.mkdir(parents=True)
    runs = {f"task-{i}": {"train": f"100_{i}", "validate": [], "infer": []} for i in range(4)}
    state = {"spec": SPEC, "submissions": [{"time": SUBMITTED, "executor": executor, "report": None, "runs": runs}]}
    (exp / "experiment.json").write_text(json.dumps(state))
    done = {"status": "finished", "steps": 16, "total_steps": 16, "final_loss": 0.3, "wall_time_s": 36.0,
            "world_size": 2}  # fmt: skip
    write_trial(exp, 0, {4: 0.50, 8: 0.45, 16: 0.40}, done)
    write_trial(exp, 1, {4: 0.55}, {**done, "status": "pruned", "steps": 4, "wall_time_s": 18.0})
    failed = write_trial(exp, 2, {}, None)
    (failed / "train" / "error.json").write_text(json.dumps({"message": "TrainingDiverged: loss became nan"}))
    (exp / "search" / "decisions.jsonl").write_text("\n".join([
        decision(0, 4, 0.50, {"0": 0.50}, False), decision(1, 4, 0.55, {"0": 0.50, "1": 0.55}, True),
        decision(0, 8, 0.45, {"0": 0.45}, False), '{"trial": 2, "st',  # a line cut by a kill
    ]) + "\n")  # fmt: skip
    best = exp / "best"  # the search's published winner: a copy, not a run
    best.mkdir()
    (best / "config.json").write_text(json.dumps({"run_id": TRIALS[0][0], "swept": TRIALS[0][1]}))
    return exp


def table(root: Node, **attrs: str) -> list[dict[str, str]]:
    """A table's body rows, each by column."""
    found = root.one("table", **attrs)
    columns = [th.content for th in found.all("th")]
    return [dict(zip(columns, [td.content for td in row.all("td")], strict=True)) for row in found.all("tr")[1:]]


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Node]:
    exp = write_search(tmp_path_factory.mktemp("dashboard") / "search")
    return exp, page(build_report(exp))


def test_the_leaderboard_lists_every_trial_with_its_state_values_and_every_metric(search: tuple[Path, Node]) -> None:
    exp, root = search
    rows = table(root, id="leaderboard")
    assert [r["run"] for r in rows] == [TRIALS[0][0], TRIALS[1][0], TRIALS[2][0]]  # best/ is no run
    first, stopped, failed = rows
    assert [r["state"] for r in rows] == ["finished", "stopped early at step 4", "failed (train)"]
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert (first["optim.lr_unet"], first["lora.rank"], stopped["optim.lr_unet"]) == ("0.0001", "4", "0.001")
    columns = list(first)
    # ranked by the search's metric (held-out loss, lower first), every metric at the chosen point (by CLIP: step 16)
    assert columns[columns.index("best step") :][:7] == ["best step", "held-out loss ↓", "CLIP ↑", "CLIP short ↑",
                                                          "CMMD ↓", "OCR similarity ↑", "OCR exact ↑"]  # fmt: skip
    assert [first[c] for c in columns[columns.index("best step") :][:7]] == ["16 (final)", "0.4", "24", "20", "1",
                                                                             "0.5", "0.5"]  # fmt: skip
    assert (
        stopped["best step"] == "4 (final)" and stopped["held-out loss ↓"] == "0.55" and stopped["steps"] == "4 of 16"
    )
    assert failed["held-out loss ↓"] == "–" and failed["best step"] == "–"
    assert "sweep.search.metric" in root.content and "runs stopped early follow the finished ones" in root.content
    summary = (exp / "report" / "summary.md").read_text()
    assert (
        "| 1 | lr1e-4_rank4-aaaa | 0 | 0.0001 | 4 | finished | 16 (final) | 0.4 | 24 | 20 | 1 | 0.5 | 0.5 |" in summary
    )
    assert "| 2 | lr1e-3_rank8-bbbb | 1 | 0.001 | 8 | stopped early at step 4 | 4 (final) | 0.55 |" in summary


def test_every_metric_of_every_snapshot_is_a_number_in_the_page_and_the_summary(search: tuple[Path, Node]) -> None:
    exp, root = search
    rows = table(root, css="points", **{"data-run": TRIALS[0][0]})
    assert [(r["step"], r["point"]) for r in rows] == [("base", "base model"), ("4", "snapshot"), ("8", "snapshot"),
                                                       ("16", "final ★")]  # fmt: skip
    assert rows[2] == {"step": "8", "point": "snapshot", "CLIP ↑": "22", "CLIP short ↑": "19", "CMMD ↓": "2",
                       "OCR similarity ↑": "0.375", "OCR exact ↑": "0.25", "held-out loss ↓": "0.45"}  # fmt: skip
    assert root.all("table", css="points", **{"data-run": TRIALS[2][0]}) == []  # never validated
    summary = (exp / "report" / "summary.md").read_text()
    assert "## Metrics per snapshot" in summary and f"### {TRIALS[1][0]}" in summary
    assert "| 8 | snapshot | 22 | 19 | 2 | 0.375 | 0.25 | 0.45 |" in summary
    assert "| 4 | final ★ | 21 | 18.5 | 2.5 | 0.3125 | 0.125 | 0.55 |" in summary


def test_a_search_shows_its_metrics_against_the_searched_values_and_its_rungs(search: tuple[Path, Node]) -> None:
    exp, root = search
    (scatter,) = root.all("img", css="scatter")
    assert scatter.attrs["src"].startswith("data:image/png;base64,")
    assert len(root.all("img", css="rungs")) == 1
    rungs = table(root, id="rungs")
    assert rungs == [
        {"trial": "0", "run": TRIALS[0][0], "step 4": "0.5 (1 of 1) continue", "step 8": "0.45 (1 of 1) continue",
         "outcome": "finished"},
        {"trial": "1", "run": TRIALS[1][0], "step 4": "0.55 (2 of 2) stop", "step 8": "",
         "outcome": "stopped at step 4"},
    ]  # fmt: skip
    stop_cells = [td for td in root.one("table", id="rungs").all("td") if "stop" in td.attrs.get("class", "").split()]
    assert [td.content for td in stop_cells] == ["0.55 (2 of 2) stop"]
    assert f"Stopped early: trial 1 ({TRIALS[1][0]}) at step 4." in root.content
    assert "3 of 4 trials have started" in root.content
    summary = (exp / "report" / "summary.md").read_text()
    assert "## Search" in summary and "| 1 | lr1e-3_rank8-bbbb | 0.55 (2 of 2) stop |  | stopped at step 4 |" in summary


def test_without_accounting_the_hours_are_wall_time_x_world_size_and_it_says_so(search: tuple[Path, Node]) -> None:
    exp, root = search
    rows = {r["run"]: r for r in table(root, id="compute")}
    finished, stopped = rows[TRIALS[0][0]], rows[TRIALS[1][0]]
    assert finished["GPU-h training"] == "0.02" and finished["GPU-h saved"] == "–"  # 36 s x 2 processes
    assert stopped["GPU-h training"] == "0.01" and stopped["GPU-h saved"] == "0.03"  # 0.01 x (16 - 4) / 4
    assert finished["from"] == "wall time x 2 processes" and rows[TRIALS[2][0]]["GPU-h total"] == "–"
    assert "GPU-hours spent: 0.03 (training 0.03, validation and inference –) over 3 runs." in root.content
    assert "would have cost 0.06 (50% saved)" in root.content
    assert "No scheduler accounting was passed to the report" in root.content
    assert {r["run"]: r["GPU-h"] for r in table(root, id="leaderboard")}[TRIALS[0][0]] == "0.02"
    assert "No scheduler accounting" in (exp / "report" / "summary.md").read_text()


# --------------------------------------------------------------------------------------------
# SLURM's accounting


def test_gpus_are_read_from_the_allocation() -> None:
    assert gpus_of("billing=8,cpu=8,gres/gpu=2,mem=64G,node=1") == 2
    assert gpus_of("cpu=8,gres/gpu:a100=2,gres/gpu:h100=1,node=1") == 3
    assert gpus_of("cpu=8,gres/gpu=4,gres/gpu:a100=4,node=1") == 4  # the total, not the total plus its types
    assert gpus_of("cpu=2,mem=4G,node=1") == 0 and gpus_of("") == 0


SACCT = f"""100_0|REQUEUED|1800|billing=4,cpu=4,gres/gpu=4,mem=64G,node=1|{SUBMITTED + 10:.0f}
100_0|COMPLETED|5400|billing=4,cpu=4,gres/gpu=4,mem=64G,node=1|{SUBMITTED + 2000:.0f}
100_0|COMPLETED|99999|cpu=4,gres/gpu=4,node=1|{SUBMITTED - 1e7:.0f}
100_0.batch|COMPLETED|5400|cpu=4,gres/gpu=4,node=1|{SUBMITTED + 2000:.0f}
100_1|COMPLETED|900|cpu=8,gres/gpu:a100=2,gres/gpu:h100=2,node=1|{SUBMITTED + 20:.0f}
100_2|FAILED|360|cpu=4,gres/gpu=4,node=1|{SUBMITTED + 30:.0f}
100_3|PENDING|0||Unknown
100_[4-5]|PENDING|0||Unknown
"""


class FakeSacct:
    def __init__(self, stdout: str = SACCT, returncode: int = 0, error: Exception | None = None) -> None:
        self.stdout, self.returncode, self.error = stdout, returncode, error
        self.calls: list[tuple[list[str], dict[str, Any]]] = []

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((command, kwargs))
        if self.error is not None:
            raise self.error
        return subprocess.CompletedProcess(command, self.returncode, self.stdout, "sacct: error: no database")


def test_sacct_records_leave_out_steps_and_unstarted_array_lines() -> None:
    records = parse_sacct(SACCT)
    assert [r.job_id for r in records] == ["100_0", "100_0", "100_0", "100_1", "100_2", "100_3"]
    assert records[0].gpu_hours == 2.0 and records[3].gpus == 4 and records[5].start is None


def test_sacct_hours_of_every_start_reach_the_report(tmp_path: Path) -> None:
    """Trial 0's job was requeued once (both starts count; an older job with its number does not),
    trial 1's ran on 4 typed GPUs and was stopped at step 4 of 16, task 3 never got its trial, and
    a second submission's job is unknown to sacct."""
    exp = write_search(tmp_path / "search", executor="slurm")
    state = json.loads((exp / "experiment.json").read_text())
    state["submissions"].append({"time": SUBMITTED + 5000, "executor": "slurm", "report": "105",
                                 "runs": {"task-2": {"train": "104_2", "validate": [], "infer": []}}})  # fmt: skip
    state["submissions"].append({"time": SUBMITTED + 6000, "executor": "local", "report": None,
                                 "runs": {"task-2": {"train": "4242", "validate": [], "infer": []}}})  # fmt: skip
    (exp / "experiment.json").write_text(json.dumps(state))
    sacct = FakeSacct()
    accounting = experiment_accounting(exp, runner=sacct)
    assert accounting is not None
    ((command, kwargs),) = sacct.calls
    assert command[:6] == ["sacct", "-n", "-X", "-D", "-P", "-o"] and command[-2:] == [
        "-j",
        "100_0,100_1,100_2,100_3,104_2",
    ]
    assert kwargs["env"]["SLURM_TIME_FORMAT"] == "%s"  # Start in epoch seconds
    usage = accounting.runs
    assert usage[TRIALS[0][0]].gpu_hours == pytest.approx((1800 + 5400) * 4 / 3600)
    assert usage[TRIALS[1][0]].gpu_hours == pytest.approx(1.0) and usage[TRIALS[2][0]].gpu_hours == pytest.approx(0.4)
    assert usage[TRIALS[2][0]].jobs == ("100_2", "104_2") and usage["task-3"].gpu_hours == 0.0
    assert accounting.problems == (
        "sacct knows nothing of job 104_2 (purged from its database, or of another cluster)",
    )
    root = page(build_report(exp, accounting))
    rows = {r["run"]: r for r in table(root, id="compute")}
    assert rows[TRIALS[0][0]]["GPU-h training"] == "8" and rows[TRIALS[0][0]]["from"] == "sacct (100_0)"
    assert rows[TRIALS[1][0]]["GPU-h saved"] == "3"  # 1 GPU-h x (16 - 4) / 4
    assert rows["task-3"]["state"] == "no run folder" and rows["task-3"]["GPU-h total"] == "0"
    assert "GPU-hours spent: 9.4 (training 9.4, validation and inference 0) over 3 runs." in root.content
    assert "would have cost 12.4 (24% saved)" in root.content
    assert "From the scheduler's accounting (sacct) for 3 of 3 runs" in root.content
    assert "sacct knows nothing of job 104_2" in root.content
    assert {r["run"]: r["GPU-h"] for r in table(root, id="leaderboard")}[TRIALS[0][0]] == "8"


def test_validation_and_inference_jobs_count_apart_from_training(tmp_path: Path) -> None:
    exp = write_search(tmp_path / "grid", executor="slurm")
    state = json.loads((exp / "experiment.json").read_text())
    run_id = TRIALS[0][0]
    jobs = {"train": "200", "validate": "201", "infer": ["202_0", "202_1"]}  # validation as one id (older state)
    state["submissions"] = [{"time": SUBMITTED, "executor": "slurm", "report": None, "runs": {run_id: jobs}}]
    (exp / "experiment.json").write_text(json.dumps(state))
    used = (("200", 3600, 8), ("201", 1800, 1), ("202_0", 720, 1), ("202_1", 720, 1))
    out = "\n".join(
        f"{job}|COMPLETED|{seconds}|cpu=1,gres/gpu={gpus}|{SUBMITTED + 1:.0f}" for job, seconds, gpus in used
    )
    accounting = experiment_accounting(exp, runner=FakeSacct(out))
    assert accounting is not None
    assert accounting.runs[run_id].gpu_hours == 8.0 and accounting.runs[run_id].other_gpu_hours == pytest.approx(0.9)
    rows = {r["run"]: r for r in table(page(build_report(exp, accounting)), id="compute")}
    assert rows[run_id]["GPU-h validation + inference"] == "0.9" and rows[run_id]["GPU-h total"] == "8.9"
    assert rows[TRIALS[1][0]]["from"] == "wall time x 2 processes"  # no SLURM job of its own: the fallback


def test_jobs_without_a_gpu_count_zero_gpu_hours_and_say_so(tmp_path: Path) -> None:
    """A CPU-only cluster (the local test cluster's AllocTRES: billing=1,cpu=1,node=1)."""
    exp = write_search(tmp_path / "search", executor="slurm")
    out = "\n".join(f"100_{i}|COMPLETED|{60 * (i + 1)}|billing=1,cpu=1,node=1|{SUBMITTED + 1:.0f}" for i in range(4))
    accounting = experiment_accounting(exp, runner=FakeSacct(out))
    assert accounting is not None and accounting.runs[TRIALS[0][0]].gpu_hours == 0.0
    assert accounting.problems == ("jobs 100_0, 100_1, 100_2, 100_3 ran without a GPU in its allocation (no gres/gpu "
                                   "in AllocTRES): 0 GPU-hours",)  # fmt: skip


def test_no_slurm_jobs_no_accounting_and_a_failed_sacct_is_said(tmp_path: Path) -> None:
    exp = write_search(tmp_path / "search")
    never = FakeSacct()
    assert experiment_accounting(exp, runner=never) is None and never.calls == []  # the local executor
    assert experiment_accounting(tmp_path / "missing", runner=never) is None
    exp = write_search(tmp_path / "slurm", executor="slurm")
    for runner in (FakeSacct(error=FileNotFoundError("sacct")), FakeSacct(returncode=1),
                   FakeSacct(error=subprocess.TimeoutExpired("sacct", 60))):  # fmt: skip
        accounting = experiment_accounting(exp, runner=runner)
        assert accounting is not None and accounting.runs == {}
        assert accounting.problems[0].startswith("sacct could not be read")
    page_text = page(build_report(exp, accounting)).content
    assert "sacct could not be read" in page_text and "Runs it does not cover fall back" in page_text


def test_the_report_job_passes_the_accounting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """StageTask's report branch reads sacct (orchestrate) and hands it to the report stage."""
    from cover_hpc import job
    from cover_hpc.orchestrate import accounting

    exp = write_search(tmp_path / "search", executor="slurm")
    fake = FakeSacct()
    monkeypatch.setattr(accounting.subprocess, "run", fake)
    assert job.StageTask("report", str(exp), str(tmp_path))._run() == str(exp / "report" / "index.html")
    assert len(fake.calls) == 1
    rows = {r["run"]: r for r in table(page(exp / "report" / "index.html"), id="compute")}
    assert rows[TRIALS[0][0]]["from"] == "sacct (100_0)"


def test_an_accounting_without_runs_falls_back_for_each(tmp_path: Path) -> None:
    exp = write_search(tmp_path / "search")
    root = page(build_report(exp, Accounting({}, "sacct", ())))
    rows = {r["run"]: r for r in table(root, id="compute")}
    assert rows[TRIALS[0][0]]["from"] == "wall time x 2 processes"
    assert "for 0 of 3 runs" in root.content


# --------------------------------------------------------------------------------------------
# In the browser


def test_the_tables_sort_in_chromium_from_the_file_system(search: tuple[Path, Node], tmp_path: Path) -> None:
    exp, _ = search
    html_file = exp / "report" / "index.html"
    text = html_file.read_text()
    assert "<script src" not in text and "<link" not in text and "http://" not in text and "https://" not in text
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail("Debian's chromium and chromium-driver are needed for the report test (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    order = ("return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr'))"
             ".map(r => r.cells[arguments[1]].textContent);")  # fmt: skip

    def click(table: str, column: str) -> None:
        headers = browser.find_elements(By.CSS_SELECTOR, f"{table} thead th")
        next(h for h in headers if h.text.replace("\n", " ").strip().startswith(column)).click()

    try:
        browser.get(html_file.as_uri())
        assert browser.execute_script("return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        runs = [TRIALS[t][0] for t in range(3)]
        assert browser.execute_script(order, "#leaderboard", 1) == runs
        click("#leaderboard", "held-out loss")
        assert browser.execute_script(order, "#leaderboard", 1) == runs  # 0.4, 0.55, then the failed one (–)
        click("#leaderboard", "held-out loss")
        assert browser.execute_script(order, "#leaderboard", 1) == [runs[1], runs[0], runs[2]]  # – stays last
        click("#leaderboard", "lora.rank")
        assert browser.execute_script(order, "#leaderboard", 1) == [runs[0], runs[2], runs[1]]  # 4, 4, 8
        click("#compute", "GPU-h training")
        assert browser.execute_script(order, "#compute", 0)[:2] == [runs[1], runs[0]]  # 0.01 before 0.02
        click("#rungs", "trial")
        click("#rungs", "trial")
        assert browser.execute_script(order, "#rungs", 0) == ["1", "0"]
        severe = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
        browser.save_screenshot(str(tmp_path / "dashboard.png"))
    finally:
        browser.quit()
    assert severe == []
