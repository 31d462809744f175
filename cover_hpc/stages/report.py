"""The experiment report: one self-contained HTML page and a markdown summary.

It reads only what the stages wrote (configs, train results, metrics, validation results,
manifests, error files and logs), so it runs after anything: finished, failed or unfinished runs,
and validation results of older versions (without the per-step ``points``).

Per run it shows the training loss; every validation metric against the training step (the base
model's value dashed, the chosen step marked); the same prompts' covers at every step; CLIP per
genre (base, best, final); and, for typeset inference, each finished cover next to its raw art
with the title's OCR read-back and contrast. The leaderboard ranks runs by their best LoRA point.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cover_hpc.spec.vocab import METRICS
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

    @property
    def status(self) -> str:
        if self.errors:
            return "failed"
        if self.train is None:
            return "unfinished"
        return "finished"

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
    errors = []
    for stage in ("train", "validate", "infer"):
        error = _json(paths.error(stage))
        if error:
            errors.append(f"{stage}: {error.get('message', error)}")
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
    return RunReport(
        paths.root.name, swept if isinstance(swept, dict) else {}, _json(paths.train_result), losses, result,
        len(manifest), errors, manifest, inference.root if inference else None,
    )  # fmt: skip


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


def _value(value: Any) -> str:
    """A metric's value: 4 significant digits (CLIP ~30, CMMD ~1, a loss ~0.1, a share 0..1)."""
    number = _number(value)
    return "–" if number is None else f"{number:.4g}"


def _better(metric: str) -> str:
    return "higher" if METRICS[metric][0] == "max" else "lower"


@dataclass(frozen=True)
class Ranking:
    metric: str
    ordered: list[RunReport]
    mixed: dict[str, str]  # run id -> its own select_by, when runs chose by different metrics

    @property
    def note(self) -> str:
        text = f"Ranked by each run's best LoRA point by {self.metric} ({_better(self.metric)} is better)"
        if self.mixed:
            chosen = ", ".join(f"{run}: {metric}" for run, metric in self.mixed.items())
            text += (f". The runs chose their best by different metrics ({chosen}); they are ranked by the first "
                     f"run's, {self.metric}, at each run's best point by it")  # fmt: skip
        return text + "; runs without validation last."


def ranking(reports: list[RunReport]) -> Ranking:
    """Runs by their best LoRA point: by the first run's ``select_by`` metric and its direction
    (``clip_score`` of the final LoRA for validations that chose nothing); runs whose best has no
    value by it follow, then runs without validation."""
    chosen = {r.run_id: r.select_by for r in reports if r.select_by}
    metric = next(iter(chosen.values()), DEFAULT_METRIC)
    sign = 1.0 if METRICS[metric][0] == "max" else -1.0

    def key(report: RunReport) -> tuple[int, float, str]:
        value = report.best_by(metric)[1]
        group = 0 if value is not None else 1 if report.validation else 2
        return group, -sign * (value or 0.0), report.run_id

    mixed = chosen if len(set(chosen.values())) > 1 else {}
    return Ranking(metric, sorted(reports, key=key), mixed)


def leaderboard(reports: list[RunReport]) -> list[RunReport]:
    return ranking(reports).ordered


def _leader_header(keys: list[str], rank: Ranking) -> list[str]:
    extra = [f"best {rank.metric} (step)"] if rank.mixed else []
    return ["run", *keys, "status", "steps", "final loss", "select by", "best step", "best value", *extra,
            "final CLIP", "final CLIP short", "base CLIP", "base short", "covers"]  # fmt: skip


def _leader_cells(r: RunReport, keys: list[str], rank: Ranking) -> list[str]:
    train = r.train or {}
    best = r.best
    if best is not None:
        select_by, step, value = r.select_by or "–", f"{best['step']} ({best.get('kind', '?')})", best.get("value")
    elif r.validation:  # an older validation: the final LoRA was the only point
        select_by, step, value = "– (final only)", "final", r.best_by(rank.metric)[1]
    else:
        select_by, step, value = "–", "–", None
    extra = []
    if rank.mixed:
        at, by_rank = r.best_by(rank.metric)
        extra = [_value(by_rank) + (f" ({at})" if at is not None else "")]
    return [r.run_id, *(str(r.swept.get(k, "")) for k in keys), r.status, str(train.get("steps", "–")),
            _fmt(train.get("final_loss")), select_by, step, _value(value), *extra, _fmt(r.score()),
            _fmt(r.score(key="clip_score_short")), _fmt(r.score("base")), _fmt(r.score("base", "clip_score_short")),
            str(r.inferred)]  # fmt: skip


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
               "best": next((p for p in report.lora_points if best and p["step"] == best["step"]), None),
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
# Markdown


def render_markdown(name: str, reports: list[RunReport]) -> str:
    keys = sorted({k for r in reports for k in r.swept})
    rank = ranking(reports)
    lines = [f"# Experiment {name}", "", f"{len(reports)} runs. {rank.note}", ""]
    header = _leader_header(keys, rank)
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rank.ordered:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _leader_cells(r, keys, rank)) + " |")
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
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
    ".failed{background:#fdd}.gallery{display:flex;flex-wrap:wrap;gap:12px}"
    "figure{margin:0;font-size:12px;max-width:360px}figure img{height:256px}pre{background:#f6f6f6;padding:8px;"
    "overflow:auto}.strip{display:flex;gap:6px;overflow-x:auto;margin-bottom:8px}.strip figure{max-width:none}"
    ".strip figure img{height:128px}.strip figure.best img{box-shadow:0 0 0 3px #d62728}"
    ".strip figure.best figcaption{font-weight:bold}figure.curves{max-width:none}figure img.curve{height:auto}"
    ".pair{max-width:420px}.pair img{height:192px}.pair.untitled{background:#fdd}.note{color:#555}</style>"
)


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
        parts.append(f"<figure class='pair'>{images}<figcaption>{' · '.join(lines)}</figcaption></figure>")
    parts.append("</div>")
    return "".join(parts)


def _guarded(r: RunReport, what: str, render: Any) -> str:
    """A run's section; one that cannot be read (a file of another version, half written) is said, not fatal."""
    try:
        return str(render(r))
    except (KeyError, TypeError, ValueError, AttributeError, OSError) as error:
        log.warning("report: %s of run %s left out: %r", what, r.run_id, error)
        return f"<p class='note'>{html.escape(f'{what} of {r.run_id} left out: {error!r}')}</p>"


def render_html(name: str, reports: list[RunReport], exp: ExperimentPaths) -> str:
    keys = sorted({k for r in reports for k in r.swept})
    esc = html.escape
    rank = ranking(reports)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>cover-hpc report: {esc(name)}</title>",
        STYLE + "</head><body>",
        f"<h1>Experiment {esc(name)}</h1>",
        "<h2>Leaderboard</h2><table id='leaderboard'><tr>"
        + "".join(f"<th>{esc(h)}</th>" for h in _leader_header(keys, rank))
        + "</tr>",
    ]
    for r in rank.ordered:
        css = " class='failed'" if r.errors else ""
        parts.append(f"<tr{css} data-run='{esc(r.run_id)}'>"
                     + "".join(f"<td>{esc(c)}</td>" for c in _leader_cells(r, keys, rank)) + "</tr>")  # fmt: skip
    parts.append(f"</table><p>{esc(rank.note)} Best step and value: the LoRA point validation chose "
                 "(cover-hpc's best/), by its select_by metric. CLIP: 100 x cosine(image, caption), clamped at 0 "
                 "(torchmetrics' definition); the metric reads at most 77 caption tokens. CLIP short: title and "
                 "genres only. Final: the LoRA at the last step. Base: the model without the LoRA, same prompts "
                 "and seeds.</p>")  # fmt: skip
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
        parts.append("</div><h2>Same prompt across steps</h2><p>The first validation prompts, same seed: the "
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
    parts.append("</body></html>")
    return "\n".join(parts)


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


def build_report(experiment_dir: Path) -> Path:
    """Write ``report/index.html`` and ``report/summary.md`` for an experiment folder."""
    exp = ExperimentPaths(Path(experiment_dir).absolute())
    runs = exp.run_dirs()
    if not runs:
        raise FileNotFoundError(f"no runs (folders with config.json) in {exp.root}")
    reports = [collect(run) for run in runs]
    name = exp.root.name
    atomic.write_text(exp.report_summary, render_markdown(name, reports))
    atomic.write_text(exp.report_html, render_html(name, reports, exp))
    return exp.report_html
