"""The experiment report: one self-contained HTML page and a markdown summary, the sweep's dashboard.

It reads only what the stages wrote (configs, train results, metrics, validation results,
manifests, error files and logs, a search's decision log), so it runs after anything: finished,
failed or unfinished runs, and validation results of older versions (without the per-step ``points``).

The leaderboard lists every run (or search trial) with its state (finished, stopped early, failed,
running, not started), its swept values and every metric at its chosen point, the ranking metric
first. Per run it shows the training loss; every validation metric against the training step, as a
plot (the base model's value dashed, the chosen step marked) and as numbers per snapshot; the same
prompts' covers at every step; CLIP per genre (base, best, final); and, for typeset inference, each
finished cover next to its raw art with the title's OCR read-back and contrast. A search adds each
metric against each searched hyperparameter and its rungs: who was stopped where, on which values.
The compute section gives the GPU-hours spent per run and what stopping early saved: from SLURM's
accounting when the caller passes it (:class:`Accounting`, read by cover_hpc.orchestrate.accounting:
this stage does not call SLURM), else the training's wall time x its processes. Every table sorts by
a click on its header (a few lines of inline script: the page needs no other file and no network).
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cover_hpc.spec.vocab import METRICS, NEEDS
from cover_hpc.store import atomic
from cover_hpc.store.paths import ExperimentPaths, RunPaths

log = logging.getLogger(__name__)

THUMB_HEIGHT = 256
STRIP_HEIGHT = 128  # the covers of the same prompt across steps
PAIR_HEIGHT = 192  # art | finished cover
LOG_LINES = 15
STRIP_ITEMS = 3  # validation prompts shown across steps
STRIP_POINTS = 12  # LoRA points at most in a strip (evenly spaced, always with the best and the final)
PAIRS = 24  # typeset books shown at most (every book whose title could not be set among them)
DEFAULT_METRIC = "clip_score"  # the ranking of validations that chose nothing (older versions)

#: How the tables name the metrics of cover_hpc.spec.vocab.METRICS.
LABELS = {"clip_score": "CLIP", "clip_score_short": "CLIP short", "cmmd": "CMMD", "ocr_similarity": "OCR similarity",
          "ocr_exact": "OCR exact", "heldout_loss": "held-out loss"}  # fmt: skip
#: The order a click on the state column sorts in.
STATE_ORDER = {"finished": 0, "stopped": 1, "running": 2, "not": 3, "failed": 4}


def _is_best(point: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Whether ``point`` is the validation's choice: its step, and its kind where the choice names one
    (the EMA of a run and its own LoRA share the last step)."""
    if best is None or point.get("step") != best.get("step"):
        return False
    return best.get("kind") is None or point.get("kind") == best.get("kind")


@dataclass(frozen=True)
class RunUsage:
    """A run's jobs as the scheduler accounted them (elapsed time x allocated GPUs, every start of a
    requeued job counted)."""

    gpu_hours: float  # its training jobs (a search task's job also validates its trial)
    other_gpu_hours: float = 0.0  # its validation and inference jobs
    jobs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Accounting:
    """What the caller read from the scheduler (cover_hpc.orchestrate.accounting), keyed by run id
    (``task-<i>`` for a search task that has no trial yet). A run it does not name falls back to its
    training's wall time x world size."""

    runs: dict[str, RunUsage] = field(default_factory=dict)
    source: str = "sacct"
    problems: tuple[str, ...] = ()


@dataclass
class RunReport:
    run_id: str
    swept: dict[str, Any]
    train: dict[str, Any] | None
    losses: list[tuple[int, float]]
    validation: dict[str, Any] | None
    inferred: int
    errors: list[str] = field(default_factory=list)
    manifest: list[dict[str, Any]] = field(default_factory=list)  # the newest inference's records
    inference: Path | None = None  # its folder
    failed_stages: list[str] = field(default_factory=list)  # the stages that left an error.json
    started: bool = False  # training has begun (a start or a logged step)
    trial: int | None = None  # a search's trial number

    @property
    def stopped_early(self) -> bool:
        return (self.train or {}).get("status") == "pruned"

    @property
    def state(self) -> str:
        """failed (stage, ...); stopped early at step N (a search stopped it); finished; running; not started."""
        if self.failed_stages:
            return f"failed ({', '.join(self.failed_stages)})"
        if self.train is not None:
            if self.stopped_early:
                return f"stopped early at step {self.train.get('steps', '?')}"
            return "finished"
        return "running" if self.started else "not started"

    def score(self, which: str = "lora", key: str = "clip_score") -> float | None:
        if not self.validation:
            return None
        scores = self.validation.get("scores")
        entry = scores.get(which) if isinstance(scores, dict) else None
        return _number(entry.get(key)) if isinstance(entry, dict) else None

    @property
    def points(self) -> list[dict[str, Any]]:
        """The validation's points (base first, then by step); empty for an older validation."""
        found = (self.validation or {}).get("points")
        if not isinstance(found, list):
            return []
        usable = [p for p in found if isinstance(p, dict) and isinstance(p.get("step"), int)]
        return sorted(usable, key=lambda p: (p.get("kind") != "base", p["step"]))

    @property
    def lora_points(self) -> list[dict[str, Any]]:
        return [p for p in self.points if p.get("kind") != "base"]

    @property
    def base_point(self) -> dict[str, Any] | None:
        return next((p for p in self.points if p.get("kind") == "base"), None)

    @property
    def select_by(self) -> str | None:
        metric = (self.validation or {}).get("select_by")
        return metric if isinstance(metric, str) and metric in METRICS else None

    @property
    def best(self) -> dict[str, Any] | None:
        """The chosen point ({step, kind, value, ...}); None for an older validation."""
        best = (self.validation or {}).get("best")
        return best if isinstance(best, dict) and isinstance(best.get("step"), int) else None

    def best_by(self, metric: str) -> tuple[int | None, float | None]:
        """The step and value of this run's best LoRA point by ``metric`` (its own choice when that is
        the metric; ties to the earliest step, as :func:`cover_hpc.stages.select.select`). An older
        validation scored only the final LoRA: its CLIP scores, at no known step."""
        best = self.best
        if best is not None and metric == self.select_by and _number(best.get("value")) is not None:
            return best["step"], _number(best.get("value"))
        sign = 1.0 if METRICS[metric][0] == "max" else -1.0
        scored = [(p["step"], v) for p in self.lora_points if (v := _number(_metrics(p).get(metric))) is not None]
        if scored:
            step, value = max(scored, key=lambda sv: (sign * sv[1], -sv[0]))
            return step, value
        if not self.points and metric in ("clip_score", "clip_score_short"):
            return None, self.score(key=metric)
        return None, None

    @property
    def chosen(self) -> dict[str, Any] | None:
        """The LoRA point the leaderboard reads: the validation's choice, else the final LoRA (None
        without validation points: none yet, or a validation of an older version)."""
        lora, best = self.lora_points, self.best
        found = next((p for p in lora if _is_best(p, best)), None)
        return found or next((p for p in lora if p.get("kind") == "final"), lora[-1] if lora else None)

    def chosen_metrics(self) -> dict[str, float | None]:
        """Every metric at the chosen point (an older validation: the final LoRA's CLIP scores)."""
        point = self.chosen
        if point is not None:
            return {m: _number(_metrics(point).get(m)) for m in METRICS}
        values: dict[str, float | None] = dict.fromkeys(METRICS)
        if self.validation and not self.points:
            values["clip_score"], values["clip_score_short"] = self.score(), self.score(key="clip_score_short")
        return values


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _metrics(point: dict[str, Any]) -> dict[str, Any]:
    metrics = point.get("metrics")
    return metrics if isinstance(metrics, dict) else {}


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """The whole JSON-object lines of a file (a line cut by a kill is left out)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _tail(path: Path, lines: int = LOG_LINES) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def collect(paths: RunPaths) -> RunReport:
    config = _json(paths.config) or {}
    losses = []
    if paths.metrics.is_file():
        for line in paths.metrics.read_text().splitlines():
            try:
                record = json.loads(line)
                losses.append((int(record["step"]), float(record["loss"])))
            except (json.JSONDecodeError, KeyError, ValueError, TypeError):
                continue
    errors, failed = [], []
    for stage in ("train", "validate", "infer"):
        error = _json(paths.error(stage))
        if error:
            errors.append(f"{stage}: {error.get('message', error)}")
            failed.append(stage)
    if errors and paths.logs.is_dir():
        for log_file in sorted(paths.logs.glob("*"))[-2:]:
            if log_file.is_file():
                errors.append(f"{log_file.name} (last lines):\n{_tail(log_file)}")
    # The newest validation and inference (each has a folder per settings; see cover_hpc.store.runs).
    inference, validation = paths.latest_inference(), paths.latest_validation()
    manifest = _jsonl(inference.manifest()) if inference else []
    result = _json(validation.result) if validation else None
    if result is not None and validation is not None:
        result["folder"] = str(validation.root)
    swept = config.get("swept")
    started = paths.starts.is_file() or bool(losses) or paths.checkpoints.is_dir()
    return RunReport(
        paths.root.name, swept if isinstance(swept, dict) else {}, _json(paths.train_result), losses, result,
        len(manifest), errors, manifest, inference.root if inference else None, failed, started,
    )  # fmt: skip


@dataclass
class Experiment:
    """What the experiment folder says beyond its runs: the spec it was last submitted with, and a
    search's state (its trials' tasks and its early-stopping decisions)."""

    name: str
    spec: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] | None = None  # sweep.search of a search (sampler other than "none")
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # run id -> its search task record
    decisions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ranked_by(self) -> tuple[str, str] | None:
        """The metric the leaderboard ranks by and the spec key it comes from."""
        if self.search is not None and self.search.get("metric") in METRICS:
            return str(self.search["metric"]), "sweep.search.metric"
        validate = self.spec.get("validate")
        metric = validate.get("select_by") if isinstance(validate, dict) else None
        return (metric, "validate.select_by") if isinstance(metric, str) and metric in METRICS else None

    @property
    def space(self) -> dict[str, dict[str, Any]]:
        space = (self.search or {}).get("space")
        return {k: v for k, v in space.items() if isinstance(v, dict)} if isinstance(space, dict) else {}


def read_experiment(exp: ExperimentPaths) -> Experiment:
    """The experiment's spec (as experiment.json has it: another version's may lack keys) and search state."""
    found = (_json(exp.state) or {}).get("spec")
    spec: dict[str, Any] = found if isinstance(found, dict) else {}
    sweep = spec.get("sweep")
    search = sweep.get("search") if isinstance(sweep, dict) else None
    if not isinstance(search, dict) or search.get("sampler", "none") == "none":
        search = None
    tasks = {}
    for path in sorted((exp.search / "tasks").glob("*.json")) if exp.search.is_dir() else []:
        record = _json(path)
        if record is not None and isinstance(record.get("run_id"), str):
            tasks[record["run_id"]] = record
    decisions = [d for d in _jsonl(exp.search_decisions)
                 if isinstance(d.get("trial"), int) and isinstance(d.get("step"), int)]  # fmt: skip
    return Experiment(exp.root.name, spec, search, tasks, decisions)


def attach_trials(reports: list[RunReport], experiment: Experiment) -> None:
    for r in reports:
        trial = experiment.tasks.get(r.run_id, {}).get("trial")
        r.trial = trial if isinstance(trial, int) else None


# --------------------------------------------------------------------------------------------
# A search: metrics against the searched values, and the rungs


@dataclass(frozen=True)
class Decision:
    """One early-stopping decision, with the trial's place among the values its rung had then."""

    value: float | None
    place: int | None  # 1 is the best
    of: int
    stop: bool


@dataclass(frozen=True)
class Rungs:
    steps: list[int]
    metric: str
    trials: dict[int, tuple[str, dict[int, Decision]]]  # trial -> (run id, step -> decision)

    def stopped_at(self, trial: int) -> int | None:
        return next((s for s, d in sorted(self.trials[trial][1].items()) if d.stop), None)


def rungs(decisions: list[dict[str, Any]]) -> Rungs | None:
    """The decision log as a table: per trial and rung step, the value, its place and the decision
    (a decision logged twice counts once, the last)."""
    if not decisions:
        return None
    trials: dict[int, tuple[str, dict[int, Decision]]] = {}
    for d in decisions:
        value = _number(d.get("value"))  # NaN (a metric that could not be computed, which stops) -> None
        peers = d["rung_values"] if isinstance(d.get("rung_values"), dict) else {}
        values = [v for v in (_number(p) for p in peers.values()) if v is not None]
        sign = 1.0 if d.get("direction") == "maximize" else -1.0
        place = 1 + sum(sign * v > sign * value for v in values) if value is not None else None
        decided = Decision(value, place, max(len(peers), 1), d.get("decision") == "stop")
        trials.setdefault(d["trial"], (str(d.get("run_id", "")), {}))[1][d["step"]] = decided
    steps = sorted({s for _, by_step in trials.values() for s in by_step})
    return Rungs(steps, str(decisions[-1].get("metric", "")), dict(sorted(trials.items())))


def _rung_cell(decision: Decision | None, shown: int) -> Cell:
    if decision is None:
        return "", None
    place = f" ({decision.place} of {decision.of})" if decision.place is not None else ""
    text = f"{_value(decision.value, shown)}{place} {'stop' if decision.stop else 'continue'}"
    return text, _sort_key(decision.value)


def rung_table(found: Rungs, by_run: dict[str, RunReport]) -> tuple[list[str], list[tuple[bool, list[Cell]]]]:
    header = ["trial", "run", *(f"step {s}" for s in found.steps), "outcome"]
    shown = digits(d.value for _, by_step in found.trials.values() for d in by_step.values())
    rows = []
    for trial, (run_id, by_step) in found.trials.items():
        stop = found.stopped_at(trial)
        report = by_run.get(run_id)
        outcome = f"stopped at step {stop}" if stop is not None else report.state if report else "no run folder"
        cells = [_rung_cell(by_step.get(s), shown) for s in found.steps]
        rows.append((stop is not None, [(str(trial), None), (run_id, None), *cells, (outcome, None)]))
    return header, rows


def _axis_values(values: list[Any], dist: dict[str, Any]) -> tuple[list[float], list[str] | None]:
    """x positions of searched values: the numbers themselves, or a category's index (its label)."""
    if dist.get("distribution") == "choice" or not all(_number(v) is not None for v in values):
        labels = [str(v) for v in dist.get("values", [])] if isinstance(dist.get("values"), list) else []
        for v in values:
            if str(v) not in labels:
                labels.append(str(v))
        return [float(labels.index(str(v))) for v in values], labels
    return [float(v) for v in values], None


def search_scatter(reports: list[RunReport], space: dict[str, dict[str, Any]], metrics: list[str]) -> bytes | None:
    """Each metric (rows) at each trial's chosen point against each searched value (columns);
    trials stopped early as crosses."""
    keys = [k for k in space if any(k in r.swept for r in reports)]
    rows = [m for m in metrics if any(r.chosen_metrics()[m] is not None for r in reports)]
    if not keys or not rows:
        return None
    plt = _pyplot()
    figure, grid = plt.subplots(len(rows), len(keys), figsize=(3.4 * len(keys), 2.4 * len(rows)), squeeze=False)
    for i, metric in enumerate(rows):
        for j, key in enumerate(keys):
            axes = grid[i][j]
            found = [(r.swept[key], v, r.stopped_early) for r in reports
                     if key in r.swept and (v := r.chosen_metrics()[metric]) is not None]  # fmt: skip
            xs, labels = _axis_values([f[0] for f in found], space[key])
            for stopped, marker, name in ((False, "o", "finished"), (True, "x", "stopped early")):
                pairs = [(x, f[1]) for x, f in zip(xs, found, strict=True) if f[2] == stopped]
                if pairs:
                    axes.scatter([p[0] for p in pairs], [p[1] for p in pairs], marker=marker, s=28, label=name,
                                 color="tab:red" if stopped else "tab:blue")  # fmt: skip
            if labels is not None:
                axes.set_xticks(range(len(labels)), labels, fontsize=7)
                axes.set_xlim(-0.5, len(labels) - 0.5)
            elif space[key].get("distribution") == "log_uniform" and all(x > 0 for x in xs):
                axes.set_xscale("log")
            axes.tick_params(labelsize=7)
            if i == len(rows) - 1:
                axes.set_xlabel(key, fontsize=8)
            if j == 0:
                axes.set_ylabel(_label(metric), fontsize=8)
            if i == 0 and j == 0:
                axes.legend(fontsize=6)
    figure.suptitle("each trial at its chosen point", fontsize=9)
    figure.tight_layout()
    data = _png(figure)
    plt.close(figure)
    return data


def rung_plot(found: Rungs, by_run: dict[str, RunReport]) -> bytes | None:
    """The search metric at each rung, a line per trial, a cross where it was stopped; a finished
    trial's line ends at its final point."""
    if not found.steps or found.metric not in METRICS:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5.5, 3.2))
    for trial, (run_id, by_step) in found.trials.items():
        pairs = [(s, d.value) for s, d in sorted(by_step.items()) if d.value is not None]
        report = by_run.get(run_id)
        final = next((p for p in (report.lora_points if report else []) if p.get("kind") == "final"), None)
        end = _number(_metrics(final).get(found.metric)) if final is not None else None
        if final is not None and end is not None and found.stopped_at(trial) is None and final["step"] not in by_step:
            pairs.append((final["step"], end))
        if not pairs:
            continue
        (line,) = axes.plot([p[0] for p in pairs], [p[1] for p in pairs], marker="o", markersize=3, linewidth=1,
                            label=f"trial {trial}")  # fmt: skip
        stop = found.stopped_at(trial)
        if stop is not None and by_step[stop].value is not None:
            axes.plot(
                [stop], [by_step[stop].value], marker="X", markersize=10, color=line.get_color(), linestyle="none"
            )
    axes.set(xlabel="step", ylabel=_label(found.metric), title="rungs: × stopped there")
    axes.legend(fontsize=6, ncol=2)
    data = _png(figure)
    plt.close(figure)
    return data


def search_lines(experiment: Experiment, reports: list[RunReport], found: Rungs | None) -> list[str]:
    """What the search is and who stopped where, as sentences (the page and the summary share them)."""
    search = experiment.search or {}
    space = ", ".join(f"{k} ({v.get('distribution', '?')}"
                      + (f" {v.get('low')}..{v.get('high')}" if "low" in v else f" of {v.get('values')}") + ")"
                      for k, v in experiment.space.items())  # fmt: skip
    trials, metric, factor = search.get("trials"), search.get("metric", "?"), search.get("reduction_factor")
    better = _better(metric) if metric in METRICS else "?"
    lines = [f"A {search.get('sampler', '?')} search of {space}: {len(experiment.tasks)} of {trials} trials have "
             f"started, ranked by {metric} ({better} is better)."]  # fmt: skip
    if search.get("grace_steps"):
        lines.append(f"Early stopping (successive halving) from step {search.get('grace_steps')}, reduction factor "
                     f"{factor}: at each rung a trial goes on when its value is among the best 1/{factor} of those "
                     "its rung has had so far (at least the best one).")  # fmt: skip
    else:
        lines.append("No early stopping (sweep.search.grace_steps is 0).")
    if found is not None:
        stopped = [
            (t, found.stopped_at(t), run) for t, (run, _) in found.trials.items() if found.stopped_at(t) is not None
        ]
        lines.append("Stopped early: " + ("; ".join(f"trial {t} ({run}) at step {s}" for t, s, run in stopped)
                                          if stopped else "none") + ".")  # fmt: skip
    return lines


# --------------------------------------------------------------------------------------------
# Images and plots


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_plot(report: RunReport) -> bytes | None:
    if not report.losses:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5, 3))
    steps, values = zip(*report.losses, strict=True)
    axes.plot(steps, values, linewidth=0.8, alpha=0.5, label="loss")
    window = max(1, len(values) // 20)
    smooth = [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
              for i in range(len(values))]  # fmt: skip
    axes.plot(steps, smooth, linewidth=1.5, label=f"mean of {window}")
    axes.set(title=report.run_id, xlabel="step", ylabel="loss")
    axes.legend()
    data = _png(figure)
    plt.close(figure)
    return data


def metric_curves(report: RunReport) -> bytes | None:
    """Every validation metric that has a value against the training step: one small plot per metric,
    points marked, the base model's value dashed, the chosen step marked (None without points)."""
    points = report.lora_points
    shown = [m for m in METRICS if any(_number(_metrics(p).get(m)) is not None for p in report.points)]
    if not points or not shown:
        return None
    plt = _pyplot()
    columns = min(3, len(shown))
    rows = math.ceil(len(shown) / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.3 * rows), squeeze=False)
    best = report.best
    base = report.base_point
    for n, metric in enumerate(shown):
        axes = grid[n // columns][n % columns]
        pairs = [(p["step"], v) for p in points if (v := _number(_metrics(p).get(metric))) is not None]
        if pairs:
            steps, values = zip(*pairs, strict=True)
            axes.plot(steps, values, marker="o", markersize=4, linewidth=1.2, label="LoRA")
        base_value = _number(_metrics(base).get(metric)) if base else None
        if base_value is not None:
            axes.axhline(base_value, linestyle="--", color="grey", linewidth=1, label="base")
        if best is not None:
            axes.axvline(best["step"], linestyle=":", color="tab:red", linewidth=1, label=f"best {best['step']}")
            chosen = next((v for s, v in pairs if s == best["step"]), None)
            if chosen is not None:
                axes.plot([best["step"]], [chosen], marker="*", markersize=12, color="tab:red", linestyle="none")
        arrow = "↑" if METRICS[metric][0] == "max" else "↓"
        chosen_metric = " (selects)" if metric == report.select_by else ""
        axes.set_title(f"{metric} {arrow}{chosen_metric}", fontsize=9)
        axes.tick_params(labelsize=7)
        axes.set_xlabel("step", fontsize=7)
        if n == 0:
            axes.legend(fontsize=6)
    for n in range(len(shown), rows * columns):
        grid[n // columns][n % columns].axis("off")
    figure.suptitle(report.run_id, fontsize=10)
    figure.tight_layout()
    data = _png(figure)
    plt.close(figure)
    return data


@functools.lru_cache(maxsize=2048)
def _thumbnail(path: str, height: int, mtime_ns: int) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except OSError:  # unreadable, or cut short
        return None
    scale = height / rgb.height
    rgb = rgb.resize((max(1, round(rgb.width * scale)), height))
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def thumbnail(path: Path, height: int = THUMB_HEIGHT) -> str | None:
    """A small inline JPEG (data URI) of an image, so the page needs no other files."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return None
    return _thumbnail(str(path), height, mtime) if path.is_file() else None


def _b64_png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


# --------------------------------------------------------------------------------------------
# What the tables show


def _fmt(value: Any) -> str:
    number = _number(value)
    return "–" if number is None else f"{number:.2f}"


def _value(value: Any, digits: int = 4) -> str:
    """A metric's value: 4 significant digits (CLIP ~30, CMMD ~1, a loss ~0.1, a share 0..1), or as
    many as its column needs (:func:`digits`)."""
    number = _number(value)
    return "–" if number is None else f"{number:.{digits}g}"


def digits(values: Iterable[float | None], least: int = 4, most: int = 7) -> int:
    """The significant digits that tell a column's different values apart (held-out losses of runs
    that barely moved differ in the 5th), at least ``least``, at most ``most``."""
    found = {v for v in values if v is not None}
    for count in range(least, most):
        if len({f"{v:.{count}g}" for v in found}) == len(found):
            return count
    return most


def _hours(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _param(value: Any) -> str:
    """A swept value as the tables show it (a learning rate to 4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _better(metric: str) -> str:
    return "higher" if METRICS[metric][0] == "max" else "lower"


def _label(metric: str) -> str:
    return f"{LABELS.get(metric, metric)} {'↑' if METRICS[metric][0] == 'max' else '↓'}"


def metric_order(first: str) -> list[str]:
    """Every metric, the ranking one first."""
    return [first, *(m for m in METRICS if m != first)]


#: A table cell: its text and, where the text does not sort as it should, the value to sort by.
Cell = tuple[str, str | None]


def _sort_key(value: float | None) -> str | None:
    return None if value is None else repr(value)


@dataclass(frozen=True)
class Ranking:
    metric: str
    ordered: list[RunReport]
    mixed: dict[str, str]  # run id -> its own select_by, when runs chose by other metrics than this one
    source: str = ""  # the spec key the metric came from ("" : the first run's select_by)

    @property
    def note(self) -> str:
        text = f"Ranked by each run's best LoRA point by {self.metric} ({_better(self.metric)} is better)"
        if self.source:
            text += f", the experiment's {self.source}"
        whose = f"the experiment's {self.source}" if self.source else "the first run's"
        if self.mixed and len(set(self.mixed.values())) > 1:
            chosen = ", ".join(f"{run}: {metric}" for run, metric in self.mixed.items())
            text += (f". The runs chose their best by different metrics ({chosen}); they are ranked by {whose}, "
                     f"{self.metric}, at each run's best point by it")  # fmt: skip
        elif self.mixed:
            text += (f". The runs chose their best by {next(iter(self.mixed.values()))}; they are ranked by "
                     f"{whose}, {self.metric}, at each run's best point by it")  # fmt: skip
        if any(r.stopped_early for r in self.ordered):
            text += "; runs stopped early follow the finished ones (as the search ranks its trials)"
        return text + "; runs without validation last."


def ranking(reports: list[RunReport], preferred: tuple[str, str] | None = None) -> Ranking:
    """Runs by their best LoRA point: by ``preferred`` (the metric and the spec key it came from: a
    search's metric, the experiment's validate.select_by), else the first run's ``select_by`` metric
    (``clip_score`` of the final LoRA for validations that chose nothing), in its direction. Finished
    runs with a value by it come first, then runs stopped early, then validated runs without a value,
    then runs without validation."""
    chosen = {r.run_id: r.select_by for r in reports if r.select_by}
    metric, source = preferred or (next(iter(chosen.values()), DEFAULT_METRIC), "")
    sign = 1.0 if METRICS[metric][0] == "max" else -1.0

    def key(report: RunReport) -> tuple[int, float, str]:
        value = report.best_by(metric)[1]
        group = (1 if report.stopped_early else 0) if value is not None else 2 if report.validation else 3
        return group, -sign * (value or 0.0), report.run_id

    mixed = chosen if len(set(chosen.values())) > 1 or any(m != metric for m in chosen.values()) else {}
    return Ranking(metric, sorted(reports, key=key), mixed, source)


def leaderboard(reports: list[RunReport]) -> list[RunReport]:
    return ranking(reports).ordered


@dataclass(frozen=True)
class Spent:
    """A run's compute: GPU-hours of training and of its other jobs, and what stopping early saved."""

    train: float | None
    other: float | None  # validation and inference jobs (known from the scheduler only)
    saved: float | None  # a run stopped early at step s of max_steps: train x (max_steps - s) / s
    source: str
    measured: bool  # from the scheduler's accounting (else wall time x world size)

    @property
    def total(self) -> float | None:
        return None if self.train is None and self.other is None else (self.train or 0.0) + (self.other or 0.0)


def spent(r: RunReport, accounting: Accounting | None) -> Spent:
    train = r.train or {}
    usage = accounting.runs.get(r.run_id) if accounting is not None else None
    if usage is not None:
        jobs = ", ".join(usage.jobs) or "no jobs"
        hours, other, source = (
            usage.gpu_hours,
            usage.other_gpu_hours,
            f"{accounting.source if accounting else ''} ({jobs})",
        )
    else:
        wall, world = _number(train.get("wall_time_s")), train.get("world_size")
        if wall is None or isinstance(world, bool) or not isinstance(world, int) or world < 1:
            return Spent(None, None, None, "–", False)
        hours, other, source = wall * world / 3600, None, f"wall time x {world} process{'es' if world > 1 else ''}"
    steps, total = train.get("steps"), train.get("total_steps")
    saved = None
    if r.stopped_early and isinstance(steps, int) and isinstance(total, int) and 0 < steps < total:
        saved = hours * (total - steps) / steps
    return Spent(hours, other, saved, source, usage is not None)


def _steps(r: RunReport) -> Cell:
    train = r.train or {}
    steps, total = train.get("steps"), train.get("total_steps")
    if not isinstance(steps, int):
        return "–", None
    return (f"{steps} of {total}" if isinstance(total, int) and total > steps else str(steps)), str(steps)


def _best_step(r: RunReport) -> Cell:
    best, point = r.best, r.chosen
    if best is not None:
        return f"{best['step']} ({best.get('kind', '?')})", str(best["step"])
    if point is not None:
        return f"{point['step']} ({point.get('kind', '?')}, not chosen)", str(point["step"])
    if r.validation:  # an older validation: the final LoRA was the only point
        return "final", None
    return "–", None


def _state(r: RunReport) -> Cell:
    return r.state, str(STATE_ORDER.get(r.state.split()[0], 5))


@dataclass(frozen=True)
class Board:
    """The leaderboard's columns for one experiment."""

    rank: Ranking
    keys: list[str]  # the swept (or searched) keys
    search: bool
    accounting: Accounting | None
    shown: dict[str, int] = field(default_factory=dict)  # metric -> the digits its column needs
    select_by: bool = True  # the column: runs chose by different metrics, or some chose nothing
    covers: bool = True  # the column: some run has generated covers

    @property
    def header(self) -> list[str]:
        extra = [f"best {self.rank.metric} (step)"] if self.rank.mixed else []
        extra += ["select by"] if self.select_by else []
        return ["#", "run", *(["trial"] if self.search else []), *self.keys, "state", "best step",
                *(_label(m) for m in metric_order(self.rank.metric)), *extra, "steps", "final loss", "GPU-h",
                *(["covers"] if self.covers else [])]  # fmt: skip

    def cells(self, n: int, r: RunReport) -> list[Cell]:
        values = r.chosen_metrics()
        extra: list[Cell] = []
        if self.rank.mixed:
            at, by_rank = r.best_by(self.rank.metric)
            shown = self.shown.get(f"best {self.rank.metric}", 4)
            extra = [(_value(by_rank, shown) + (f" ({at})" if at is not None else ""), _sort_key(by_rank))]
        train = r.train or {}
        select_by = r.select_by or ("– (final only)" if r.validation and not r.points else "–")
        cost = spent(r, self.accounting).total
        trial = [(str(r.trial) if r.trial is not None else "–", None)] if self.search else []
        swept = [(_param(r.swept.get(k, "")), _sort_key(_number(r.swept.get(k)))) for k in self.keys]
        scores = [
            (_value(values[m], self.shown.get(m, 4)), _sort_key(values[m])) for m in metric_order(self.rank.metric)
        ]
        loss = _number(train.get("final_loss"))
        return [(str(n), None), (r.run_id, None), *trial, *swept, _state(r), _best_step(r), *scores, *extra,
                *([(select_by, None)] if self.select_by else []), _steps(r), (_fmt(loss), _sort_key(loss)),
                (_hours(cost), _sort_key(cost)), *([(str(r.inferred), None)] if self.covers else [])]  # fmt: skip


def point_rows(r: RunReport) -> list[tuple[bool, list[Cell]]]:
    """Every metric at every point of a run's validation (base model first, then by step; an older
    validation: the base model's and the final LoRA's CLIP scores), whether it is the chosen one."""
    best = r.best
    shown = [digits(_number(_metrics(p).get(m)) for p in r.points) for m in METRICS]
    rows: list[tuple[bool, list[Cell]]] = []
    for point in r.points:
        base = point.get("kind") == "base"
        chosen = not base and _is_best(point, best)
        values = [_number(_metrics(point).get(m)) for m in METRICS]
        step: Cell = ("base", "-1") if base else (str(point["step"]), str(point["step"]))
        kind = "base model" if base else str(point.get("kind", "?")) + (" ★" if chosen else "")
        rows.append(
            (chosen, [step, (kind, None), *((_value(v, n), _sort_key(v)) for v, n in zip(values, shown, strict=True))])
        )
    if not r.points and r.validation:
        for which, label in (("base", "base model"), ("lora", "final")):
            values = [r.score(which, m) if m in ("clip_score", "clip_score_short") else None for m in METRICS]
            if any(v is not None for v in values):
                step = ("base" if which == "base" else "final", None)
                rows.append((False, [step, (label, None), *((_value(v), _sort_key(v)) for v in values)]))
    return rows


POINT_HEADER = ["step", "point", *(_label(m) for m in METRICS)]


GenreRow = tuple[str, float | None, float | None, float | None]


def genre_rows(report: RunReport) -> tuple[int | None, list[GenreRow]]:
    """The best step and, per genre, the mean CLIP score of the base model, the best point and the final LoRA."""
    best = report.best
    tables: dict[str, dict[str, Any]] = {}
    for column, which in (("base", "base"), ("best", "best"), ("final", "lora")):
        scores = (report.validation or {}).get("scores")
        entry = scores.get(which) if isinstance(scores, dict) else None
        if isinstance(entry, dict) and isinstance(entry.get("per_genre"), dict):
            tables[column] = entry["per_genre"]
    by_kind = {"base": report.base_point,
               "best": next((p for p in report.lora_points if _is_best(p, best)), None),
               "final": next((p for p in report.points if p.get("kind") == "final"), None)}  # fmt: skip
    for column, point in by_kind.items():  # points carry per_genre too
        if column not in tables and point is not None and isinstance(point.get("per_genre"), dict):
            tables[column] = point["per_genre"]
    genres = sorted({g for table in tables.values() for g in table})
    rows: list[GenreRow] = []
    for genre in genres:
        base, chosen, final = (_number(tables.get(c, {}).get(genre)) for c in ("base", "best", "final"))
        rows.append((genre, base, chosen, final))
    return (best["step"] if best else None), rows


# --------------------------------------------------------------------------------------------
# Typeset inference: art | finished cover


def _ocr_title(record: dict[str, Any]) -> dict[str, Any] | None:
    """The title's OCR read-back of a manifest record ({read, similarity, exact}), if any."""
    ocr = record.get("ocr")
    if not isinstance(ocr, dict):
        return None
    title = ocr.get("title")
    if isinstance(title, dict):
        return title
    return ocr if "similarity" in ocr else None


@dataclass(frozen=True)
class TypesetSummary:
    books: int
    finished: int
    failed: int
    read: int  # finished covers whose title was read back
    exact: int
    min_contrast: float | None
    min_contrast_book: str | None

    @property
    def line(self) -> str:
        parts = [f"{self.finished} of {self.books} covers finished"]
        if self.failed:
            parts.append(f"the title could not be set on {self.failed}")
        if self.read:
            parts.append(f"OCR read the title back exactly on {self.exact} of {self.read} "
                         f"({100 * self.exact / self.read:.0f}%)")  # fmt: skip
        else:
            parts.append("no OCR read-back (infer.typeset_verify off)")
        if self.min_contrast is not None:
            parts.append(f"minimum contrast {self.min_contrast:.2f}:1 ({self.min_contrast_book})")
        return "; ".join(parts)


def typeset_records(report: RunReport) -> list[dict[str, Any]]:
    """The manifest records of typeset covers (those with raw art); empty without infer.typeset."""
    return [r for r in report.manifest if r.get("art")]


def typeset_summary(records: list[dict[str, Any]]) -> TypesetSummary:
    finished = [r for r in records if r.get("image")]
    reads = [o for r in finished if (o := _ocr_title(r)) is not None]
    contrasts = [(c, str(r.get("book_id"))) for r in finished if (c := _number(r.get("contrast"))) is not None]
    low = min(contrasts) if contrasts else (None, None)
    return TypesetSummary(len(records), len(finished), len(records) - len(finished), len(reads),
                          sum(bool(o.get("exact")) for o in reads), low[0], low[1])  # fmt: skip


def _shown_pairs(records: list[dict[str, Any]], limit: int = PAIRS) -> list[dict[str, Any]]:
    """At most ``limit`` records in manifest order, every one whose title could not be set among them."""
    room = max(0, limit - sum(not r.get("image") for r in records))
    shown = []
    for record in records:
        if not record.get("image"):
            shown.append(record)
        elif room > 0:
            shown.append(record)
            room -= 1
    return shown[:limit]


# --------------------------------------------------------------------------------------------
# Compute: GPU-hours spent and saved


COMPUTE_HEADER = ["run", "state", "steps", "GPU-h training", "GPU-h validation + inference", "GPU-h total",
                  "GPU-h saved", "from"]  # fmt: skip


def compute_rows(reports: list[RunReport], accounting: Accounting | None) -> list[tuple[bool, list[Cell]]]:
    rows = []
    for r in reports:
        cost = spent(r, accounting)
        hours = [(_hours(h), _sort_key(h)) for h in (cost.train, cost.other, cost.total, cost.saved)]
        rows.append((r.stopped_early, [(r.run_id, None), _state(r), _steps(r), *hours, (cost.source, None)]))
    named = {r.run_id for r in reports}
    for key, usage in _orphans(accounting, named):  # a search task without its trial yet, or a run folder gone
        total = usage.gpu_hours + usage.other_gpu_hours
        hours = [(_hours(h), _sort_key(h)) for h in (usage.gpu_hours, usage.other_gpu_hours, total)]
        source = f"{accounting.source if accounting else ''} ({', '.join(usage.jobs)})"
        rows.append((False, [(key, None), ("no run folder", "6"), ("–", None), *hours, ("–", None), (source, None)]))
    return rows


def _orphans(accounting: Accounting | None, named: set[str]) -> list[tuple[str, RunUsage]]:
    """What the accounting names that is no run of the report."""
    return [(k, u) for k, u in (accounting.runs.items() if accounting else []) if k not in named]


def compute_lines(reports: list[RunReport], accounting: Accounting | None) -> list[str]:
    """The experiment's totals and where the hours come from, as sentences."""
    costs = [spent(r, accounting) for r in reports]
    orphans = [u for _, u in _orphans(accounting, {r.run_id for r in reports})]
    train = sum(c.train or 0.0 for c in costs) + sum(u.gpu_hours for u in orphans)
    other = sum(c.other or 0.0 for c in costs) + sum(u.other_gpu_hours for u in orphans)
    saved = sum(c.saved or 0.0 for c in costs)
    stopped = sum(c.saved is not None for c in costs)
    others = _hours(other) if any(c.other is not None for c in costs) or orphans else "–"
    lines = [f"GPU-hours spent: {_hours(train + other)} (training {_hours(train)}, validation and inference "
             f"{others}) over {len(reports)} runs."]  # fmt: skip
    if stopped:
        full = train + saved
        share = f"{100 * saved / full:.0f}%" if full > 0 else "–"
        lines.append(f"Stopping {stopped} run{'s' if stopped > 1 else ''} early saved {_hours(saved)} GPU-hours: "
                     f"training every trial to the end would have cost {_hours(full)} ({share} saved). A run "
                     "stopped at step s of max_steps saves its hours x (max_steps - s) / s.")  # fmt: skip
    else:
        lines.append("No run was stopped early: nothing saved.")
    measured = sum(c.measured for c in costs)
    if accounting is None:
        lines.append("No scheduler accounting was passed to the report (the local executor, or a report built "
                     "without it): the hours are each training's wall time x its world size, from train_result.json: "
                     "the training loop only (no queueing, start-up, validation or inference), and device-hours "
                     "rather than GPU-hours where it ran on the CPU.")  # fmt: skip
    else:
        lines.append(f"From the scheduler's accounting ({accounting.source}) for {measured} of {len(reports)} runs: "
                     "each job's elapsed time x its allocated GPUs, every start of a requeued job counted, a running "
                     "job so far (a search task's job also validates its trial). Runs it does not cover fall back to "
                     "their training's wall time x world size from train_result.json.")  # fmt: skip
        lines += [f"Accounting problem: {p}" for p in accounting.problems]
    return lines


# --------------------------------------------------------------------------------------------
# The dashboard: everything the page and the summary show


@dataclass
class Dashboard:
    experiment: Experiment
    reports: list[RunReport]
    accounting: Accounting | None = None

    def __post_init__(self) -> None:
        attach_trials(self.reports, self.experiment)
        self.rank = ranking(self.reports, self.experiment.ranked_by)
        swept = sorted({k for r in self.reports for k in r.swept})
        space = [k for k in self.experiment.space if k in swept]
        keys = space + [k for k in swept if k not in space]
        chosen = [r.chosen_metrics() for r in self.reports]
        shown = {m: digits(c[m] for c in chosen) for m in METRICS}
        shown[f"best {self.rank.metric}"] = digits(r.best_by(self.rank.metric)[1] for r in self.reports)
        chose = {r.select_by for r in self.reports if r.validation}
        self.board = Board(self.rank, keys, self.experiment.search is not None, self.accounting, shown,
                           select_by=len(chose) > 1 or bool(self.rank.mixed),
                           covers=any(r.inferred for r in self.reports))  # fmt: skip
        self.rungs = rungs(self.experiment.decisions) if self.experiment.search is not None else None

    @property
    def name(self) -> str:
        return self.experiment.name

    @property
    def leader_rows(self) -> list[tuple[RunReport, list[Cell]]]:
        return [(r, self.board.cells(n, r)) for n, r in enumerate(self.rank.ordered, 1)]

    def metrics_off(self) -> list[str]:
        """Metrics no run has a value of, with the switch each needs."""
        values = [r.chosen_metrics() for r in self.reports] + [_metrics(p) for r in self.reports for p in r.points]
        off = [m for m in METRICS if all(_number(v.get(m)) is None for v in values)]
        return [f"{LABELS[m]}" + (f" ({NEEDS[m]})" if m in NEEDS else "") for m in off]

    @property
    def leader_note(self) -> str:
        off = self.metrics_off()
        chose = {r.select_by for r in self.reports if r.validation}
        which = "" if self.board.select_by or not chose else f" ({next(iter(chose))} for every run)"
        return (f"{self.rank.note} Best step: the LoRA point validation chose (cover-hpc's best/), by its select_by "
                f"metric{which}; every metric is read at that point. CLIP: 100 x cosine(image, caption), clamped at 0 "
                "(torchmetrics' definition); the metric reads at most 77 caption tokens. CLIP short: title and "
                "genres only. CMMD: x1000, to the real held-out covers. OCR: the title read back from the cover. "
                "Held-out loss: denoising loss on the held-out covers. GPU-h: every job of the run (see Compute)."
                + (f" Not computed in this experiment: {', '.join(off)}." if off else ""))  # fmt: skip


def _md_table(header: list[str], rows: list[list[Cell]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c[0].replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def render_markdown(dash: Dashboard) -> str:
    reports = dash.reports
    lines = [f"# Experiment {dash.name}", "", f"{len(reports)} runs. {dash.leader_note}", ""]
    lines += _md_table(dash.board.header, [cells for _, cells in dash.leader_rows])
    lines += ["", "## Compute", "", *compute_lines(reports, dash.accounting), ""]
    lines += _md_table(COMPUTE_HEADER, [cells for _, cells in compute_rows(dash.rank.ordered, dash.accounting)])
    if dash.experiment.search is not None:
        lines += ["", "## Search", "", *search_lines(dash.experiment, reports, dash.rungs)]
        if dash.rungs is not None:
            header, rows = rung_table(dash.rungs, {r.run_id: r for r in reports})
            lines += ["", f"### Rungs ({dash.rungs.metric}: value (place of those at the rung then) decision)", ""]
            lines += _md_table(header, [cells for _, cells in rows])
    validated = [(r, rows) for r in dash.rank.ordered if (rows := point_rows(r))]
    if validated:
        lines += ["", "## Metrics per snapshot", "", "Every validation point: the base model, each snapshot and the "
                  "final LoRA; ★ the chosen one."]  # fmt: skip
        for r, rows in validated:
            lines += ["", f"### {r.run_id}", "", *_md_table(POINT_HEADER, [cells for _, cells in rows])]
    typeset = [(r, typeset_records(r)) for r in reports]
    typeset = [(r, records) for r, records in typeset if records]
    if typeset:
        lines += ["", "## Finished covers (infer.typeset)", ""]
        lines += [f"- {r.run_id}: {typeset_summary(records).line}" for r, records in typeset]
    failed = [r for r in reports if r.errors]
    if failed:
        lines += ["", "## Failures", ""]
        for r in failed:
            lines += [f"### {r.run_id}", "", "```", *r.errors, "```", ""]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# HTML

STYLE = (
    "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,td.t{text-align:left}"
    ".failed{background:#fdd}.stopped{background:#fff4dc}td.stop{background:#fdd}.chosen{font-weight:bold}"
    ".gallery{display:flex;flex-wrap:wrap;gap:12px}"
    "figure{margin:0;font-size:12px;max-width:360px}figure img{height:256px}pre{background:#f6f6f6;padding:8px;"
    "overflow:auto}.strip{display:flex;gap:6px;overflow-x:auto;margin-bottom:8px}.strip figure{max-width:none}"
    ".strip figure img{height:128px}.strip figure.best img{box-shadow:0 0 0 3px #d62728}"
    ".strip figure.best figcaption{font-weight:bold}figure.curves{max-width:none}figure img.curve{height:auto}"
    "figure.wide{max-width:none}figure.wide img{height:auto}.scroll{overflow-x:auto}"
    "table.sortable th{cursor:pointer;background:#f3f3f3}table.sortable th[data-order=asc]::after{content:' ▲'}"
    "table.sortable th[data-order=desc]::after{content:' ▼'}"
    ".pair{max-width:420px}.pair img{height:192px}.pair.untitled{background:#fdd}.note{color:#555}</style>"
)

#: Click a header to sort its table by that column (again: the other way). A cell's data-v, when it
#: has one, is what it sorts by; numbers sort as numbers, empty cells and "–" last either way.
SORT_SCRIPT = """<script>
(function () {
  function key(row, column) {
    var cell = row.cells[column];
    if (!cell) { return null; }
    var text = cell.hasAttribute('data-v') ? cell.getAttribute('data-v') : cell.textContent.trim();
    if (text === '' || text === '\\u2013') { return null; }
    return /^[-+]?(\\d+\\.?\\d*|\\.\\d+)(e[-+]?\\d+)?/i.test(text) ? parseFloat(text) : text.toLowerCase();
  }
  function compare(a, b) {
    if (typeof a === typeof b) { return a < b ? -1 : a > b ? 1 : 0; }
    return typeof a === 'number' ? -1 : 1;
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), function (table) {
    var head = table.tHead, body = table.tBodies[0];
    if (!head || !body) { return; }
    Array.prototype.forEach.call(head.rows[0].cells, function (th, column) {
      th.title = 'sort by this column';
      th.addEventListener('click', function () {
        var up = th.getAttribute('data-order') !== 'asc';
        Array.prototype.forEach.call(head.rows[0].cells, function (h) { h.removeAttribute('data-order'); });
        th.setAttribute('data-order', up ? 'asc' : 'desc');
        var rows = Array.prototype.slice.call(body.rows).map(function (row, n) { return [key(row, column), n, row]; });
        rows.sort(function (a, b) {
          if (a[0] === null || b[0] === null) { return a[0] === b[0] ? a[1] - b[1] : a[0] === null ? 1 : -1; }
          var order = compare(a[0], b[0]);
          return (up ? order : -order) || a[1] - b[1];
        });
        rows.forEach(function (entry) { body.appendChild(entry[2]); });
      });
    });
  });
})();
</script>"""


def _html_table(attrs: str, header: list[str], rows: list[tuple[str, list[Cell]]]) -> str:
    """A sortable table; each row is (its attributes, its cells)."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(f"<tr{row_attrs}>{''.join(_td(text, v) for text, v in cells)}</tr>" for row_attrs, cells in rows)
    return f"<table {attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(text: str, sort: str | None) -> str:
    """A cell: its sort value in data-v; text that is not a number aligned left."""
    left = "" if _looks_numeric(text) else " class='t'"
    value = "" if sort is None else f" data-v='{html.escape(sort)}'"
    return f"<td{left}{value}>{html.escape(text)}</td>"


def _looks_numeric(text: str) -> bool:
    words = text.split()
    try:
        float(words[0]) if words else None
    except ValueError:
        return words == ["–"]
    return True


def _figure(data: bytes | None, css: str, alt: str) -> str:
    if data is None:
        return ""
    return f"<figure class='wide'><img class='{css}' src='{_b64_png(data)}' alt='{html.escape(alt)}'></figure>"


def _run_attrs(r: RunReport) -> str:
    css = " class='failed'" if r.failed_stages else " class='stopped'" if r.stopped_early else ""
    return f"{css} data-run='{html.escape(r.run_id)}'"


def render_search(dash: Dashboard) -> str:
    esc = html.escape
    reports, found = dash.reports, dash.rungs
    by_run = {r.run_id: r for r in reports}
    parts = ["<h2>Search</h2>", *(f"<p>{esc(line)}</p>" for line in search_lines(dash.experiment, reports, found))]
    scatter = search_scatter(reports, dash.experiment.space, metric_order(dash.rank.metric))
    if scatter is not None:
        parts.append("<h3>Metrics against the searched values</h3><p>Each trial at its chosen point (as in the "
                     "leaderboard); crosses: trials stopped early.</p>")  # fmt: skip
        parts.append(_figure(scatter, "scatter", "search scatter"))
    if found is not None:
        header, rows = rung_table(found, by_run)
        parts.append(f"<h3>Rungs</h3><p>Per trial and rung: its {esc(found.metric)} there, its place among the values "
                     "that rung had when it was judged, and the decision.</p>")  # fmt: skip
        table_rows = []
        for stopped, cells in rows:
            css = " class='stopped'" if stopped else ""
            table_rows.append((f"{css} data-trial='{esc(cells[0][0])}'", cells))
        table = _html_table("id='rungs' class='sortable'", header, table_rows)
        parts.append(
            re.sub(r"<td(?: class='t')?((?: data-v='[^']*')?)>([^<]* stop)</td>", r"<td class='stop'\1>\2</td>", table)
        )
        parts.append(_figure(rung_plot(found, by_run), "rungs", "rungs"))
    return "".join(parts)


def render_points(r: RunReport) -> str:
    rows = point_rows(r)
    if not rows:
        return ""
    table_rows = [(" class='chosen'" if chosen else "", cells) for chosen, cells in rows]
    attrs = f"class='points sortable' data-run='{html.escape(r.run_id)}'"
    return f"<h3>{html.escape(r.run_id)}</h3>" + _html_table(attrs, POINT_HEADER, table_rows)


def render_html(dash: Dashboard) -> str:
    esc = html.escape
    reports, name = dash.reports, dash.name
    leaders = [(_run_attrs(r), cells) for r, cells in dash.leader_rows]
    compute = [
        (" class='stopped'" if stop else "", cells) for stop, cells in compute_rows(dash.rank.ordered, dash.accounting)
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>cover-hpc report: {esc(name)}</title>",
        STYLE + "</head><body>",
        f"<h1>Experiment {esc(name)}</h1>",
        "<p class='note'>Click a column's header to sort its table.</p>",
        "<h2>Leaderboard</h2><div class='scroll'>",
        _html_table("id='leaderboard' class='sortable'", dash.board.header, leaders),
        f"</div><p>{esc(dash.leader_note)}</p>",
        "<h2>Compute</h2>",
        *(f"<p>{esc(line)}</p>" for line in compute_lines(reports, dash.accounting)),
        _html_table("id='compute' class='sortable'", COMPUTE_HEADER, compute),
    ]
    if dash.experiment.search is not None:
        parts.append(_guarded_section("the search", lambda: render_search(dash)))
    parts.append("<h2>Loss curves</h2><div class='gallery'>")
    for r in reports:
        plot = loss_plot(r)
        if plot:
            parts.append(f"<figure><img class='plot' src='{_b64_png(plot)}' alt='loss {esc(r.run_id)}'></figure>")
    parts.append("</div>")
    validated = [r for r in reports if r.validation]
    if validated:
        parts.append("<h2>Validation metrics along training</h2><p>Every LoRA point (snapshots and the final "
                     "LoRA) on the same prompts and seeds; dashed: the base model; dotted and ★: the chosen "
                     "step; ↑ higher is better, ↓ lower.</p><div class='gallery'>")  # fmt: skip
        for r in validated:
            parts.append(_guarded(r, "metric curves", _render_curves))
        parts.append("</div><h2>Metrics per snapshot</h2><p>The same numbers: every validation point, the base "
                     "model first; bold and ★: the chosen one.</p>")  # fmt: skip
        for r in dash.rank.ordered:
            if r.validation:
                parts.append(_guarded(r, "metrics per snapshot", render_points))
        parts.append("<h2>Same prompt across steps</h2><p>The first validation prompts, same seed: the "
                     "base model, then each LoRA point by step; ★ marks the chosen one.</p>")  # fmt: skip
        for r in validated:
            parts.append(_guarded(r, "covers across steps", render_strip))
        parts.append("<h2>CLIP score per genre</h2>")
        for r in validated:
            parts.append(_guarded(r, "per-genre scores", render_genres))
        parts.append("<h2>Validation covers (LoRA | base, same prompt and seed)</h2>")
        for r in validated:
            parts.append(_guarded(r, "validation covers", render_covers))
    typeset = [r for r in reports if typeset_records(r)]
    if typeset:
        parts.append("<h2>Finished covers (raw art | typeset cover)</h2><p>The title's OCR read-back similarity "
                     "(1 - normalised edit distance) and the text's WCAG contrast under each.</p>")  # fmt: skip
        for r in typeset:
            parts.append(_guarded(r, "finished covers", render_pairs))
    failed = [r for r in reports if r.errors]
    if failed:
        parts.append("<h2>Failures</h2>")
        for r in failed:
            parts.append(f"<h3>{esc(r.run_id)}</h3><pre>{esc(chr(10).join(r.errors))}</pre>")
    parts.append(SORT_SCRIPT + "</body></html>")
    return "\n".join(parts)


def _guarded_section(what: str, render: Any) -> str:
    """A section of the experiment that cannot be read (a file of another version) is said, not fatal."""
    try:
        return str(render())
    except (KeyError, TypeError, ValueError, AttributeError, OSError) as error:
        log.warning("report: %s left out: %r", what, error)
        return f"<p class='note'>{html.escape(f'{what} left out: {error!r}')}</p>"


def _validation_images(r: RunReport) -> tuple[Path | None, Path | None, str]:
    """The folders of the covers the gallery shows (a LoRA point's and the base model's) and which LoRA."""
    validation = r.validation or {}
    base = validation.get("baseline_images")
    base_dir = Path(base) if isinstance(base, str) else None
    best = r.best
    point = next((p for p in r.lora_points if best and p["step"] == best["step"]), None)
    if point is not None and isinstance(point.get("images"), str):
        return Path(point["images"]), base_dir, f"best, step {point['step']}"
    final = next((p for p in r.points if p.get("kind") == "final"), None)
    if final is not None and isinstance(final.get("images"), str):
        return Path(final["images"]), base_dir, f"final, step {final['step']}"
    folder = validation.get("folder")  # an older validation: images/ of the validation folder
    return (Path(folder) if isinstance(folder, str) else None), base_dir, "final"


def _items(r: RunReport) -> list[dict[str, Any]]:
    items = (r.validation or {}).get("items")
    if not isinstance(items, list):
        return []
    return [i for i in items if isinstance(i, dict) and isinstance(i.get("image"), str)]


def _image_of(folder: Path, item: dict[str, Any]) -> Path:
    """An item's image in a point's folder (``image`` is a file name; older versions: ``images/<name>``
    relative to the validation folder)."""
    relative = Path(item["image"])
    return folder / relative if (folder / relative).is_file() else folder / relative.name


def strip_points(
    points: list[dict[str, Any]], best_step: int | None, limit: int = STRIP_POINTS
) -> list[dict[str, Any]]:
    """At most ``limit`` LoRA points, evenly spaced, always with the best and the last one."""
    if len(points) <= limit:
        return points
    keep = {round(n * (len(points) - 1) / (limit - 1)) for n in range(limit)}
    keep.add(len(points) - 1)
    keep |= {n for n, p in enumerate(points) if p["step"] == best_step}
    while len(keep) > limit:  # the best pushed it over: drop the evenly spaced one nearest before the end
        keep.remove(max(n for n in keep if n != len(points) - 1 and points[n]["step"] != best_step))
    return [points[n] for n in sorted(keep)]


def render_strip(r: RunReport) -> str:
    """The first validation prompts' covers at every step: base model, then each LoRA point by step."""
    esc = html.escape
    best = r.best
    best_step = best["step"] if best else None
    lora = r.lora_points
    points = strip_points(lora, best_step)
    base = r.base_point
    base_dir = Path(base["images"]) if base and isinstance(base.get("images"), str) else None
    final_dir, baseline_dir, _ = _validation_images(r)
    base_dir = base_dir or baseline_dir
    parts = [f"<div class='strips' data-run='{esc(r.run_id)}'><h3>{esc(r.run_id)}</h3>"]
    if len(points) < len(lora):
        parts.append(f"<p class='note'>{len(points)} of the {len(lora)} LoRA points shown (evenly spaced).</p>")
    for item in _items(r)[:STRIP_ITEMS]:
        figures = []
        columns: list[tuple[str, Path | None, str, str]] = [("base", base_dir, "base model", "")]
        for p in points:
            mark = " ★ best" if p["step"] == best_step else ""
            label = f"step {p['step']}" + (" (final)" if p.get("kind") == "final" else "") + mark
            css = " best" if mark else ""
            folder = Path(p["images"]) if isinstance(p.get("images"), str) else None
            columns.append((str(p["step"]), folder, label, css))
        if not r.points:  # an older validation: the final LoRA only
            columns.append(("final", final_dir, "final", ""))
        for step, folder, label, css in columns:
            uri = thumbnail(_image_of(folder, item), STRIP_HEIGHT) if folder else None
            image = f"<img src='{uri}' alt='{esc(label)}'>" if uri else "<div class='note'>(no image)</div>"
            figures.append(f"<figure class='point{css}' data-step='{esc(step)}'>{image}"
                           f"<figcaption>{esc(label)}</figcaption></figure>")  # fmt: skip
        caption = f"{item.get('book_id', '')} · seed {item.get('seed', '')}: {str(item.get('prompt', ''))[:120]}"
        parts.append(f"<p>{esc(caption)}</p><div class='strip'>{''.join(figures)}</div>")
    parts.append("</div>")
    return "".join(parts)


def render_genres(r: RunReport) -> str:
    esc = html.escape
    best_step, rows = genre_rows(r)
    if not rows:
        return ""
    best = f"best (step {best_step})" if best_step is not None else "best"
    body = "".join(f"<tr><td>{esc(g)}</td><td>{_fmt(b)}</td><td>{_fmt(s)}</td><td>{_fmt(f)}</td></tr>"
                   for g, b, s, f in rows)  # fmt: skip
    return (f"<h3>{esc(r.run_id)}</h3><table class='genres' data-run='{esc(r.run_id)}'><tr><th>genre</th>"
            f"<th>base</th><th>{esc(best)}</th><th>final</th></tr>{body}</table>")  # fmt: skip


def render_pairs(r: RunReport) -> str:
    esc = html.escape
    records = typeset_records(r)
    if not records or r.inference is None:
        return ""
    summary = typeset_summary(records)
    shown = _shown_pairs(records)
    parts = [f"<h3>{esc(r.run_id)}</h3><p class='typeset-summary' data-run='{esc(r.run_id)}'>{esc(summary.line)}."]
    if len(shown) < len(records):
        parts.append(f" {len(shown)} of {len(records)} books shown.")
    parts.append(f"</p><div class='gallery pairs' data-run='{esc(r.run_id)}'>")
    for record in shown:
        art = thumbnail(r.inference / str(record["art"]), PAIR_HEIGHT)
        cover = thumbnail(r.inference / str(record["image"]), PAIR_HEIGHT) if record.get("image") else None
        images = "".join(
            f"<img class='{kind}' src='{uri}' alt='{kind}'>" for uri, kind in ((art, "art"), (cover, "cover")) if uri
        )
        book = esc(str(record.get("book_id", "")))
        if not record.get("image"):
            caption = f"{book} · no finished cover: {esc(str(record.get('error', 'unknown error')))}"
            parts.append(f"<figure class='pair untitled'>{images}<figcaption>{caption}</figcaption></figure>")
            continue
        read = _ocr_title(record)
        lines = [book]
        if read is not None:
            exact = " (exact)" if read.get("exact") else ""
            lines.append(
                f"OCR similarity {_value(read.get('similarity'))}{exact}: read “{esc(str(read.get('read', '')))}”"
            )
        lines.append(f"contrast {_fmt(record.get('contrast'))}:1")
        page = _page_read_note(record.get("layout"))
        if page:
            lines.append(esc(page))
        parts.append(f"<figure class='pair'>{images}<figcaption>{' · '.join(lines)}</figcaption></figure>")
    parts.append("</div>")
    return "".join(parts)


def _page_read_note(layout: Any) -> str:
    """What the typesetter's own whole-page read did (cover_hpc.typeset), or "" for a record without one."""
    page = layout.get("page_read") if isinstance(layout, dict) else None
    if not isinstance(page, dict) or not page.get("checked"):
        return ""
    if not page.get("reads"):
        return "page read: not found whole"
    wash = layout.get("art_wash")
    tries = page.get("tries", 1)
    done = f", art washed {round(100 * float(wash['alpha']))}%" if isinstance(wash, dict) and "alpha" in wash else ""
    return f"page read: found{f' on try {tries}' if isinstance(tries, int) and tries > 1 else ''}{done}"


def _guarded(r: RunReport, what: str, render: Any) -> str:
    """A run's section; one that cannot be read (a file of another version, half written) is said, not fatal."""
    try:
        return str(render(r))
    except (KeyError, TypeError, ValueError, AttributeError, OSError) as error:
        log.warning("report: %s of run %s left out: %r", what, r.run_id, error)
        return f"<p class='note'>{html.escape(f'{what} of {r.run_id} left out: {error!r}')}</p>"


def _render_curves(r: RunReport) -> str:
    esc = html.escape
    plot = metric_curves(r)
    if plot is None:
        return f"<p class='note'>{esc(r.run_id)}: no per-step validation points (a validation of an older version).</p>"
    return f"<figure class='curves'><img class='curve' src='{_b64_png(plot)}' alt='metrics {esc(r.run_id)}'></figure>"


def render_covers(r: RunReport) -> str:
    esc = html.escape
    lora_dir, base_dir, which = _validation_images(r)
    scores = (r.validation or {}).get("scores") or {}
    source = scores.get("best") if which.startswith("best") and isinstance(scores.get("best"), dict) else None
    source = source or scores.get("lora") or {}
    per_image = {p.get("index"): p for p in source.get("per_image", []) if isinstance(p, dict)}
    parts = [f"<h3>{esc(r.run_id)} ({esc(which)})</h3><div class='gallery'>"]
    for item in _items(r):
        lora_uri = thumbnail(_image_of(lora_dir, item)) if lora_dir else None
        base_uri = thumbnail(_image_of(base_dir, item)) if base_dir else None
        score = per_image.get(item.get("index"), {}).get("score")
        images = "".join(
            f"<img src='{uri}' alt='{kind}'>" for uri, kind in ((lora_uri, "lora"), (base_uri, "base")) if uri
        )
        book, prompt = esc(str(item.get("book_id", ""))), esc(str(item.get("prompt", ""))[:160])
        parts.append(f"<figure>{images}<figcaption>{book} · seed {item.get('seed')} · CLIP {_fmt(score)}<br>{prompt}"
                     "</figcaption></figure>")  # fmt: skip
    parts.append("</div>")
    return "".join(parts)


def build_report(experiment_dir: Path, accounting: Accounting | None = None) -> Path:
    """Write ``report/index.html`` and ``report/summary.md`` for an experiment folder. ``accounting``:
    the GPU time of its jobs as the scheduler accounted it (cover_hpc.orchestrate.accounting); without
    it the compute section falls back to each training's wall time x world size, and says so."""
    exp = ExperimentPaths(Path(experiment_dir).absolute())
    runs = [run for run in exp.run_dirs() if run.root != exp.best]  # best/: a search's winner, a copy
    if not runs:
        raise FileNotFoundError(f"no runs (folders with config.json) in {exp.root}")
    dash = Dashboard(read_experiment(exp), [collect(run) for run in runs], accounting)
    atomic.write_text(exp.report_summary, render_markdown(dash))
    atomic.write_text(exp.report_html, render_html(dash))
    return exp.report_html
