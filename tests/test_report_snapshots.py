"""The report's view of snapshots: leaderboard by best point, metric curves, covers across steps,
CLIP per genre, and typeset covers next to their art.

The experiment folders are written by the tests in the format of cover_hpc.stages.validate.finish and
cover_hpc.stages.infer (tiny PNGs, JSON), so these test what the report reads and renders; the stages
that produce the files are tested in test_stages.py.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cover_hpc.stages.report import build_report, strip_points

# --------------------------------------------------------------------------------------------
# A synthetic experiment

GENRES = (("fantasy",), ("fantasy", "romance"), ("horror",))
#: A colour per point of the step axis, so a cover in the page tells which point it came from.
COLOURS = {0: (250, 20, 20), 2: (20, 20, 250), 4: (20, 250, 20), 6: (250, 250, 20), 8: (20, 250, 250)}


def png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (24, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def items(count: int = 3, old: bool = False) -> list[dict[str, Any]]:
    found = []
    for index in range(count):
        name = f"{index:04d}-book{index}.png"
        found.append({"index": index, "book_id": f"book{index}", "prompt": f"Book Cover - book {index}",
                      "short": f"book {index}", "genres": list(GENRES[index % 3]), "seed": 100 + index,
                      "title": f"Title {index}", "image": f"images/{name}" if old else name})  # fmt: skip
    return found


def clip(base: float, per_item: list[dict[str, Any]]) -> dict[str, Any]:
    """A CLIP score dict (score_folder's shape): item i scores base + i; genres are item means."""
    scores = [base + i["index"] for i in per_item]
    per_genre: dict[str, list[float]] = {}
    for item, score in zip(per_item, scores, strict=True):
        for genre in item["genres"]:
            per_genre.setdefault(genre, []).append(score)
    return {
        "clip_score": sum(scores) / len(scores), "clip_score_short": base - 1,
        "per_genre": {g: sum(v) / len(v) for g, v in sorted(per_genre.items())},
        "per_image": [{"index": i["index"], "score": s, "score_short": s - 1} for i, s in zip(per_item, scores,
                                                                                              strict=True)],
    }  # fmt: skip


def metrics(step: int, cmmd: float | None, clip_score: float, loss: float | None = 0.2) -> dict[str, Any]:
    return {"clip_score": clip_score, "clip_score_short": clip_score - 1, "cmmd": cmmd, "ocr_similarity": 0.5,
            "ocr_exact": None, "heldout_loss": loss}  # fmt: skip


@dataclass
class Run:
    run_id: str
    select_by: str | None = "cmmd"
    #: step -> (cmmd, clip_score); step 0 is the base model, the last is the final LoRA
    values: dict[int, tuple[float | None, float]] = field(default_factory=dict)
    validated: bool = True
    trained: bool = True


def write_run(exp: Path, run: Run, count: int = 3) -> Path:
    """A run folder: config, train result and loss, and validation.json with a point per step."""
    root = exp / run.run_id
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"run_id": run.run_id, "swept": {"lora.rank": 4}}))
    (root / "train").mkdir()
    losses = "".join(json.dumps({"step": s, "loss": 1 / s}) + "\n" for s in range(1, 9))
    (root / "train" / "metrics.jsonl").write_text(losses + '{"step": 9, "lo')  # a line cut by a kill
    if run.trained:
        (root / "train" / "train_result.json").write_text(json.dumps({"steps": 8, "final_loss": 0.125}))
    if not run.validated:
        return root
    folder = root / "validate" / "test_set-0123abcd"
    per_item = items(count)
    baseline = exp / "baseline" / "0123456789ab"
    for item in per_item:
        png(baseline / item["image"], COLOURS[0])
    points = []
    last = max(run.values)
    for step, (cmmd, clip_score) in sorted(run.values.items()):
        kind = "base" if step == 0 else "final" if step == last else "snapshot"
        name = "base" if step == 0 else f"step-{step:08d}"
        images = baseline if step == 0 else folder / "points" / name / "images"
        for item in per_item:
            png(images / item["image"], COLOURS[step])
        detail = clip(clip_score, per_item)
        points.append({
            "point": name, "step": step, "kind": kind, "metrics": metrics(step, cmmd, clip_score),
            "images": str(images), "per_image": detail["per_image"], "per_genre": detail["per_genre"],
            "ocr": [{"title": i["title"], "read": i["title"], "similarity": 1.0} for i in per_item],
        })  # fmt: skip
    lora = [p for p in points if p["kind"] != "base"]
    key = run.select_by or "cmmd"
    sign = 1 if key in ("clip_score", "clip_score_short", "ocr_similarity", "ocr_exact") else -1
    best = max((p for p in lora if p["metrics"][key] is not None), key=lambda p: (sign * p["metrics"][key], -p["step"]))
    by_step = {p["step"]: p for p in points}
    result = {
        "run_id": run.run_id, "num_prompts": count,
        "scores": {"lora": clip(run.values[last][1], per_item), "best": clip(run.values[best["step"]][1], per_item),
                   "base": clip(run.values[0][1], per_item)},
        "select_by": run.select_by,
        "best": {"step": best["step"], "kind": best["kind"], "value": best["metrics"][key],
                 "weights": f"/nowhere/{best['point']}", "folder": str(root / "best")},
        "points": points, "baseline_images": str(baseline), "items": per_item,
    }  # fmt: skip
    assert by_step[0]["kind"] == "base"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "validation.json").write_text(json.dumps(result))
    return root


def write_old_run(exp: Path, run_id: str, final_clip: float) -> Path:
    """A run validated by an older version: the final LoRA only, images/ in the validation folder."""
    root = exp / run_id
    (root / "train").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"run_id": run_id, "swept": {"lora.rank": 8}}))
    (root / "train" / "train_result.json").write_text(json.dumps({"steps": 8, "final_loss": 0.25}))
    folder = root / "validate" / "test_set-old00000"
    baseline = exp / "baseline" / "old000000000"
    per_item = items(3, old=True)
    for item in per_item:
        png(folder / item["image"], COLOURS[8])
        png(baseline / Path(item["image"]).name, COLOURS[0])
    result = {"run_id": run_id, "num_prompts": 3, "items": per_item, "baseline_images": str(baseline),
              "scores": {"lora": clip(final_clip, per_item), "base": clip(20.0, per_item)}}  # fmt: skip
    (folder / "validation.json").write_text(json.dumps(result))
    return root


# --------------------------------------------------------------------------------------------
# Reading the page back


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def all(self, tag: str, **attrs: str) -> list[Node]:
        """Descendants with this tag whose attributes contain these values (``css`` for class words)."""
        found = []
        for child in self.children:
            want = {k: v for k, v in attrs.items() if k != "css"}
            classes = child.attrs.get("class", "").split()
            if (
                child.tag == tag
                and all(child.attrs.get(k) == v for k, v in want.items())
                and ("css" not in attrs or attrs["css"] in classes)
            ):
                found.append(child)
            found += child.all(tag, **attrs)
        return found

    def one(self, tag: str, **attrs: str) -> Node:
        (found,) = self.all(tag, **attrs)
        return found

    @property
    def content(self) -> str:
        return "".join(self.text) + "".join(c.content for c in self.children)


VOID = frozenset({"img", "meta", "br", "hr", "input", "link"})


class _Tree(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.root = Node("root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        while len(self.stack) > 1:  # an unclosed element ends with its parent
            if self.stack.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        self.stack[-1].text.append(data)


def page(html_file: Path) -> Node:
    parser = _Tree()
    parser.feed(html_file.read_text())
    return parser.root


def colour_of(uri: str) -> tuple[int, int, int]:
    """The mean colour of an inline image."""
    data = base64.b64decode(uri.split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
        pixels = list(rgb.getdata())
    red, green, blue = (round(sum(p[c] for p in pixels) / len(pixels)) for c in range(3))
    return red, green, blue


def near(colour: tuple[int, int, int], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 12 for a, b in zip(colour, expected, strict=True))


def leaderboard(root: Node) -> list[dict[str, str]]:
    """The leaderboard's rows, each by column."""
    table = root.one("table", id="leaderboard")
    columns = header(root)
    return [dict(zip(columns, [cell.content for cell in row.all("td")], strict=True)) for row in table.all("tr")[1:]]


def header(root: Node) -> list[str]:
    return [cell.content for cell in root.one("table", id="leaderboard").all("th")]


def summary_rows(exp: Path) -> list[list[str]]:
    """The summary's first table (the leaderboard), header first."""
    lines = (exp / "report" / "summary.md").read_text().splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("| "))
    table: list[str] = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in table if line.startswith("| ")]


# --------------------------------------------------------------------------------------------
# Tests


def write_typeset_inference(run: Path) -> None:
    """Typeset covers (infer.typeset): two finished, one whose title could not be set, a cut line."""
    folder = run / "infer" / "books-0123abcd"
    records = []
    for n, (book, similarity, exact, contrast) in enumerate(
        (("dune", 1.0, True, 7.25), ("emma", 0.6, False, 4.6), ("long", None, None, None))
    ):
        png(folder / "art" / f"{book}.png", (200, 100, 50))
        record: dict[str, Any] = {"book_id": book, "prompt": f"Book Cover - {book}", "seed": n, "seconds": 0.5,
                                  "checkpoint_step": 4, "art": f"art/{book}.png"}  # fmt: skip
        if similarity is None:
            record |= {"image": None, "error": "the title does not fit at a legible size"}
        else:
            png(folder / "images" / f"{book}.png", (10, 10, 10))
            read = {"read": book.upper() if exact else "em", "similarity": similarity, "exact": exact}
            layout: dict[str, Any] = {"width": 24}  # dune: read whole by the typesetter on its third try, washed
            if book == "dune":
                layout |= {"page_read": {"checked": True, "reads": True, "tries": 3}, "art_wash": {"alpha": 0.6}}
            record |= {"image": f"images/{book}.png", "layout": layout, "contrast": contrast,
                       "ocr": {"engine": "rapidocr", "title": read}}  # fmt: skip
        records.append(record)
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"book_id": "cut')


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Node]:
    """Runs choosing by CMMD (lower is better): b's best point beats a's; c was validated by an older
    version (no points, no CMMD); d is still training. a has typeset covers. Built once, read by each test."""
    exp = tmp_path_factory.mktemp("report") / "exp"
    run_a = write_run(exp, Run("run-a", values={0: (3.0, 20.0), 4: (1.5, 24.0), 8: (1.9, 26.0)}))
    write_typeset_inference(run_a)
    write_run(exp, Run("run-b", values={0: (3.0, 20.0), 2: (2.0, 21.0), 4: (2.5, 22.0), 6: (0.8, 23.0),
                                        8: (1.0, 25.0)}))  # fmt: skip
    write_old_run(exp, "run-c", final_clip=30.0)
    write_run(exp, Run("run-d", validated=False, trained=False))
    return exp, page(build_report(exp))


def test_leaderboard_ranks_runs_by_their_best_point_in_the_metrics_direction(experiment: tuple[Path, Node]) -> None:
    exp, root = experiment
    rows = leaderboard(root)
    columns = header(root)
    assert [r["run"] for r in rows] == ["run-b", "run-a", "run-c", "run-d"]  # cmmd: lowest first; no value; none
    assert [r["#"] for r in rows] == ["1", "2", "3", "4"]
    by_run = {r["run"]: r for r in rows}
    assert by_run["run-b"]["best step"] == "6 (snapshot)" and by_run["run-b"]["CMMD ↓"] == "0.8"
    assert by_run["run-a"]["best step"] == "4 (snapshot)" and by_run["run-a"]["CMMD ↓"] == "1.5"
    assert by_run["run-a"]["select by"] == "cmmd" and by_run["run-c"]["select by"] == "– (final only)"
    # every metric at the chosen point, the ranking one first
    assert columns[columns.index("best step") + 1 :][:6] == ["CMMD ↓", "CLIP ↑", "CLIP short ↑", "OCR similarity ↑",
                                                               "OCR exact ↑", "held-out loss ↓"]  # fmt: skip
    assert [by_run["run-a"][c] for c in ("CLIP ↑", "CLIP short ↑", "OCR similarity ↑", "OCR exact ↑",
                                         "held-out loss ↓")] == ["24", "23", "0.5", "–", "0.2"]  # fmt: skip
    assert by_run["run-c"]["CLIP ↑"] == "31" and by_run["run-c"]["CMMD ↓"] == "–"  # the final LoRA's mean, 30..32
    assert by_run["run-d"]["state"] == "running" and by_run["run-d"]["best step"] == "–"
    assert by_run["run-a"]["state"] == "finished"
    assert "by cmmd (lower is better)" in root.content
    markdown = summary_rows(exp)
    assert markdown[0] == columns
    assert [r[1] for r in markdown[1:]] == ["run-b", "run-a", "run-c", "run-d"]
    assert dict(zip(columns, markdown[1], strict=True))["best step"] == "6 (snapshot)"


def test_a_higher_is_better_metric_ranks_the_highest_first(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    write_run(exp, Run("low", "clip_score", {0: (3.0, 20.0), 4: (1.0, 22.0), 8: (1.2, 21.0)}))
    write_run(exp, Run("high", "clip_score", {0: (3.0, 20.0), 4: (2.0, 24.0), 8: (2.2, 23.0)}))
    root = page(build_report(exp))
    assert [r["run"] for r in leaderboard(root)] == ["high", "low"]
    by_run = {r["run"]: r for r in leaderboard(root)}
    assert by_run["high"]["best step"] == "4 (snapshot)" and by_run["high"]["CLIP ↑"] == "24"
    assert "select by" not in header(root)  # both chose by clip_score: the note says so
    assert "(clip_score for every run)" in root.content


def test_runs_that_chose_by_different_metrics_are_ranked_by_the_first_runs(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    write_run(exp, Run("a-cmmd", "cmmd", {0: (3.0, 20.0), 4: (1.5, 22.0), 8: (1.2, 21.0)}))
    write_run(exp, Run("b-clip", "clip_score", {0: (3.0, 20.0), 4: (0.5, 22.0), 8: (2.2, 29.0)}))
    root = page(build_report(exp))
    columns = header(root)
    assert "best cmmd (step)" in columns
    rows = {r["run"]: r for r in leaderboard(root)}
    assert list(rows) == ["b-clip", "a-cmmd"]  # b's step 4 has the lowest CMMD, though b chose step 8 by CLIP
    assert rows["b-clip"]["best step"] == "8 (final)" and rows["b-clip"]["best cmmd (step)"] == "0.5 (4)"
    assert "different metrics (a-cmmd: cmmd, b-clip: clip_score)" in root.content
    assert "different metrics" in (exp / "report" / "summary.md").read_text()


def test_metric_curves_are_drawn_for_every_validated_run(experiment: tuple[Path, Node]) -> None:
    _, root = experiment
    curves = {img.attrs["alt"]: img.attrs["src"] for img in root.all("img", css="curve")}
    assert set(curves) == {"metrics run-a", "metrics run-b"}
    assert "run-c: no per-step validation points" in root.content
    for uri in curves.values():
        assert uri.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as image:
            assert image.width > 300 and image.height > 150  # subplots, not an empty figure
    assert len(root.all("img", css="plot")) == 3  # the loss curves are still there (run-c has no metrics)


def test_the_strip_shows_each_points_cover_in_step_order(experiment: tuple[Path, Node]) -> None:
    _, root = experiment
    block = root.one("div", css="strips", **{"data-run": "run-b"})
    strips = block.all("div", css="strip")
    assert len(strips) == 3  # the first 3 validation prompts
    for strip in strips:
        figures = strip.all("figure")
        assert [f.attrs["data-step"] for f in figures] == ["base", "2", "4", "6", "8"]
        for figure, step in zip(figures, (0, 2, 4, 6, 8), strict=True):
            assert near(colour_of(figure.one("img").attrs["src"]), COLOURS[step]), figure.attrs
        (best,) = [f for f in figures if "best" in f.attrs["class"].split()]
        assert best.attrs["data-step"] == "6" and "★ best" in best.content
        assert figures[-1].one("figcaption").content == "step 8 (final)"


def test_a_long_run_shows_evenly_spaced_points_with_the_best_and_the_final() -> None:
    points = [{"step": s, "kind": "snapshot"} for s in range(100, 3100, 100)]
    shown = [p["step"] for p in strip_points(points, best_step=1700, limit=6)]
    assert len(shown) == 6 and shown == sorted(shown)
    assert {100, 1700, 3000} <= set(shown)


def test_the_genre_table_gives_base_best_and_final(experiment: tuple[Path, Node]) -> None:
    _, root = experiment
    table = root.one("table", css="genres", **{"data-run": "run-a"})
    assert [c.content for c in table.all("th")] == ["genre", "base", "best (step 4)", "final"]
    rows = {r[0]: r[1:] for r in ([c.content for c in row.all("td")] for row in table.all("tr")[1:])}
    # items 0 (fantasy), 1 (fantasy, romance), 2 (horror) score base + index
    assert rows == {"fantasy": ["20.50", "24.50", "26.50"], "horror": ["22.00", "26.00", "28.00"],
                    "romance": ["21.00", "25.00", "27.00"]}  # fmt: skip


def test_finished_covers_are_shown_next_to_their_art_with_the_ocr_read_back(experiment: tuple[Path, Node]) -> None:
    exp, root = experiment
    gallery = root.one("div", css="pairs", **{"data-run": "run-a"})
    figures = gallery.all("figure")
    assert len(figures) == 3
    first = figures[0]
    assert [img.attrs["class"] for img in first.all("img")] == ["art", "cover"]
    assert near(colour_of(first.one("img", css="art").attrs["src"]), (200, 100, 50))
    assert near(colour_of(first.one("img", css="cover").attrs["src"]), (10, 10, 10))
    assert "OCR similarity 1 (exact)" in first.content and "contrast 7.25:1" in first.content
    assert "page read: found on try 3, art washed 60%" in first.content
    assert "OCR similarity 0.6:" in figures[1].content and "contrast 4.60:1" in figures[1].content
    assert "page read" not in figures[1].content  # a record from before the page read, or without one
    untitled = figures[2]
    assert "untitled" in untitled.attrs["class"] and [i.attrs["class"] for i in untitled.all("img")] == ["art"]
    assert "the title does not fit at a legible size" in untitled.content
    line = root.one("p", css="typeset-summary").content
    assert "OCR read the title back exactly on 1 of 2 (50%)" in line
    assert "minimum contrast 4.60:1 (emma)" in line and "the title could not be set on 1" in line
    summary = (exp / "report" / "summary.md").read_text()
    assert "- run-a: 2 of 3 covers finished" in summary and "exactly on 1 of 2 (50%)" in summary
    assert leaderboard(root)[1]["covers"] == "3"  # the cut line is not one


def test_older_and_partial_files_fall_back(tmp_path: Path) -> None:
    """A validation.json without points (an older version), None metrics, a half-written
    validation.json and a run still training: the report is written, each run as far as its files go."""
    exp = tmp_path / "exp"
    write_old_run(exp, "old-run", final_clip=25.0)
    write_run(exp, Run("new-run", "clip_score", {0: (None, 20.0), 4: (None, 24.0), 8: (None, 22.0)}))
    new_points = exp / "new-run" / "validate" / "test_set-0123abcd" / "validation.json"
    data = json.loads(new_points.read_text())
    for point in data["points"]:
        point["metrics"] = {**point["metrics"], "heldout_loss": None, "ocr_similarity": None}
    new_points.write_text(json.dumps(data))
    write_run(exp, Run("training", validated=False, trained=False))
    half = exp / "half-written"
    (half / "validate" / "k").mkdir(parents=True)
    (half / "config.json").write_text(json.dumps({"run_id": "half-written", "swept": {}}))
    (half / "validate" / "k" / "validation.json").write_text('{"scores": {"lora": {"clip_sc')
    root = page(build_report(exp))
    rows = {r["run"]: r for r in leaderboard(root)}
    assert list(rows) == ["old-run", "new-run", "half-written", "training"]  # by CLIP: 26 (final), 24 (best)
    assert rows["old-run"]["best step"] == "final" and rows["old-run"]["CLIP ↑"] == "26"
    assert rows["new-run"]["best step"] == "4 (snapshot)"
    assert "no per-step validation points" in root.content  # the old run has no curve
    assert [i.attrs["alt"] for i in root.all("img", css="curve")] == ["metrics new-run"]
    strip = root.one("div", css="strips", **{"data-run": "old-run"}).all("div", css="strip")[0]
    figures = strip.all("figure")
    assert [f.attrs["data-step"] for f in figures] == ["base", "final"]
    assert near(colour_of(figures[0].one("img").attrs["src"]), COLOURS[0])
    assert near(colour_of(figures[1].one("img").attrs["src"]), COLOURS[8])
    genres = root.one("table", css="genres", **{"data-run": "old-run"})
    assert [c.content for c in genres.all("th")] == ["genre", "base", "best", "final"]
    assert [c.content for c in genres.all("tr")[1].all("td")] == ["fantasy", "20.50", "–", "25.50"]
    images = [img for img in root.all("img") if img.attrs.get("alt") in ("lora", "base")]
    assert len(images) == 2 * 3 * 2  # LoRA and base covers of both validated runs
    assert all(img.attrs["src"].startswith("data:image/jpeg;base64,") for img in root.all("img")
               if img.attrs.get("class") not in ("plot", "curve"))  # fmt: skip
    assert [r[1] for r in summary_rows(exp)].count("half-written") == 1


def test_files_written_through_the_records_read_as_before(tmp_path: Path) -> None:
    """The records add schema_version to the files the report reads and keep every other name: an
    experiment whose manifest and train result carry it gives the same summary as one whose files
    do not (the releases before records)."""
    from cover_hpc.store.records import ManifestRow, TrainResult, read_record_lines, write_record, write_records

    summaries = []
    for name in ("before", "records"):
        exp = tmp_path / name / "exp"
        run = write_run(exp, Run("run-a", values={0: (3.0, 20.0), 4: (1.5, 24.0), 8: (1.9, 26.0)}))
        write_typeset_inference(run)
        result = {"status": "finished", "steps": 8, "total_steps": 8, "epochs": 1.0, "final_loss": 0.125,
                  "mean_loss": 0.5, "wall_time_s": 1.0, "samples_per_s": 1.0, "peak_memory_mb": 1.0, "requeues": 0,
                  "world_size": 1}  # fmt: skip
        if name == "records":
            manifest = run / "infer" / "books-0123abcd" / "manifest.jsonl"
            write_records(manifest, read_record_lines(manifest, ManifestRow))
            write_record(run / "train" / "train_result.json", TrainResult(**result))
            assert manifest.read_text().count('"schema_version": 1') == 3
        else:
            (run / "train" / "train_result.json").write_text(json.dumps(result))
        build_report(exp)
        summaries.append((exp / "report" / "summary.md").read_text())
    assert summaries[0] == summaries[1] and "2 of 3 covers finished" in summaries[1]


def test_a_folder_without_runs_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    def tree(root: Path) -> dict[str, bytes | None]:
        return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in [root, *root.rglob("*")]}

    exp = tmp_path / "exp"
    (exp / "not-a-run" / "train").mkdir(parents=True)  # no config.json: not a run
    (exp / "not-a-run" / "train" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    before = tree(exp)
    with pytest.raises(FileNotFoundError, match=r"no runs \(folders with config\.json\) in .*exp"):
        build_report(exp)
    assert tree(exp) == before
    with pytest.raises(FileNotFoundError, match="no runs"):
        build_report(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
