"""The experiment report: one self-contained HTML page and a markdown summary.

It reads only what the stages wrote (configs, train results, metrics, validation results,
manifests, error files and logs), so it runs after anything: finished, failed or unfinished runs.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cover_hpc import atomic
from cover_hpc.paths import ExperimentPaths, RunPaths

THUMB_HEIGHT = 256
LOG_LINES = 15


@dataclass
class RunReport:
    run_id: str
    swept: dict[str, Any]
    train: dict[str, Any] | None
    losses: list[tuple[int, float]]
    validation: dict[str, Any] | None
    inferred: int
    errors: list[str] = field(default_factory=list)

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
        value = self.validation["scores"].get(which, {}).get(key)
        return float(value) if value is not None else None


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


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
            except (json.JSONDecodeError, KeyError, ValueError):
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
    # The newest validation and inference (each has a folder per settings; see cover_hpc.runs).
    inference, validation = paths.latest_inference(), paths.latest_validation()
    inferred = len(inference.manifest().read_text().splitlines()) if inference else 0
    result = _json(validation.result) if validation else None
    if result is not None and validation is not None:
        result["folder"] = str(validation.root)
    return RunReport(
        paths.root.name, config.get("swept", {}), _json(paths.train_result), losses, result, inferred, errors,
    )  # fmt: skip


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def loss_plot(report: RunReport) -> bytes | None:
    if not report.losses:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def thumbnail(path: Path) -> str | None:
    """A small inline JPEG (data URI) of an image, so the page needs no other files."""
    from PIL import Image

    if not path.is_file():
        return None
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        scale = THUMB_HEIGHT / rgb.height
        rgb = rgb.resize((max(1, round(rgb.width * scale)), THUMB_HEIGHT))
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def leaderboard(reports: list[RunReport]) -> list[RunReport]:
    return sorted(reports, key=lambda r: (r.score() is None, -(r.score() or 0.0), r.run_id))


def render_markdown(name: str, reports: list[RunReport]) -> str:
    keys = sorted({k for r in reports for k in r.swept})
    lines = [f"# Experiment {name}", "", f"{len(reports)} runs.", ""]
    header = ["run", *keys, "status", "steps", "final loss", "CLIP", "CLIP short", "base CLIP", "base short", "covers"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in leaderboard(reports):
        train = r.train or {}
        cells = [r.run_id, *(str(r.swept.get(k, "")) for k in keys), r.status, str(train.get("steps", "–")),
                 _fmt(train.get("final_loss")), _fmt(r.score()), _fmt(r.score(key="clip_score_short")),
                 _fmt(r.score("base")), _fmt(r.score("base", "clip_score_short")), str(r.inferred)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in reports if r.errors]
    if failed:
        lines += ["", "## Failures", ""]
        for r in failed:
            lines += [f"### {r.run_id}", "", "```", *r.errors, "```", ""]
    return "\n".join(lines) + "\n"


def _b64_png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def render_html(name: str, reports: list[RunReport], exp: ExperimentPaths) -> str:
    keys = sorted({k for r in reports for k in r.swept})
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>cover-hpc report: {esc(name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
        ".failed{background:#fdd}.gallery{display:flex;flex-wrap:wrap;gap:12px}"
        "figure{margin:0;font-size:12px;max-width:360px}figure img{height:256px}pre{background:#f6f6f6;padding:8px;"
        "overflow:auto}</style></head><body>",
        f"<h1>Experiment {esc(name)}</h1>",
        "<h2>Leaderboard</h2><table id='leaderboard'><tr><th>run</th>"
        + "".join(f"<th>{esc(k)}</th>" for k in keys)
        + "<th>status</th><th>steps</th><th>final loss</th><th>CLIP</th><th>CLIP short</th>"
        "<th>base CLIP</th><th>base short</th><th>covers</th></tr>",
    ]
    for r in leaderboard(reports):
        train = r.train or {}
        cells = [str(r.swept.get(k, "")) for k in keys] + [r.status, str(train.get("steps", "–")),
                 _fmt(train.get("final_loss")), _fmt(r.score()), _fmt(r.score(key="clip_score_short")),
                 _fmt(r.score("base")), _fmt(r.score("base", "clip_score_short")), str(r.inferred)]  # fmt: skip
        css = " class='failed'" if r.errors else ""
        parts.append(f"<tr{css}><td>{esc(r.run_id)}</td>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    parts.append("</table><p>CLIP: 100 x cosine(image, caption), clamped at 0 (torchmetrics' definition); the "
                 "metric reads at most 77 caption tokens. CLIP short: title and genres only. Base: the model "
                 "without the LoRA, same prompts and seeds.</p>")  # fmt: skip
    parts.append("<h2>Loss curves</h2><div class='gallery'>")
    for r in reports:
        plot = loss_plot(r)
        if plot:
            parts.append(f"<figure><img class='plot' src='{_b64_png(plot)}' alt='loss {esc(r.run_id)}'></figure>")
    parts.append("</div><h2>Validation covers (LoRA | base, same prompt and seed)</h2>")
    for r in reports:
        if not r.validation:
            continue
        parts.append(f"<h3>{esc(r.run_id)}</h3><div class='gallery'>")
        run_dir = Path(r.validation["folder"])
        base_dir = Path(r.validation["baseline_images"]) if r.validation.get("baseline_images") else None
        per_image = {p["index"]: p for p in r.validation["scores"]["lora"]["per_image"]}
        for item in r.validation["items"]:
            lora_uri = thumbnail(run_dir / item["image"])
            base_uri = thumbnail(base_dir / Path(item["image"]).name) if base_dir else None
            score = per_image.get(item["index"], {}).get("score")
            images = "".join(
                f"<img src='{uri}' alt='{kind}'>" for uri, kind in ((lora_uri, "lora"), (base_uri, "base")) if uri
            )
            parts.append(f"<figure>{images}<figcaption>{esc(item['book_id'])} · seed {item['seed']} · "
                         f"CLIP {_fmt(score)}<br>{esc(item['prompt'][:160])}</figcaption></figure>")  # fmt: skip
        parts.append("</div>")
    failed = [r for r in reports if r.errors]
    if failed:
        parts.append("<h2>Failures</h2>")
        for r in failed:
            parts.append(f"<h3>{esc(r.run_id)}</h3><pre>{esc(chr(10).join(r.errors))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


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
