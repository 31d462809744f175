"""The validation stage: covers for held-out books, CLIP-scored against the base model.

Every prompt has its own seed (``validate.seed + i``), so a re-run gives the same images, and
images already on disk are kept (a requeued job continues). The base model's images and scores
are shared by all runs with the same model and validation settings (``<exp>/baseline/<key>``).
``validation.json`` is written last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cover_hpc import atomic, env, locks, preemption
from cover_hpc.clip_score import WINDOW, load_scorer
from cover_hpc.config import ExperimentSpec, to_dict
from cover_hpc.data import read_metadata, row_caption
from cover_hpc.paths import RunPaths, ValidationPaths
from cover_hpc.prompts import Book, book_caption, read_books, short_caption
from cover_hpc.sampling import Generator, device_and_dtype, load_generator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    index: int
    book_id: str
    prompt: str
    short: str | None
    genres: tuple[str, ...]
    seed: int

    @property
    def file_name(self) -> str:
        return f"{self.index:04d}-{safe_name(self.book_id)}.png"


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:80] or "book"


def items_from_test_set(spec: ExperimentSpec) -> list[tuple[str, str, Book | None]]:
    rows = read_metadata(Path(spec.data.test_dir))
    found: list[tuple[str, str, Book | None]] = []
    for row in rows:
        caption = row_caption(row, spec.data)
        if not caption:
            continue
        name = str(row.get(spec.data.image_column) or len(found))
        book = None
        if row.get("title"):
            book = Book.from_json({**row, "id": row.get("book_id") or name})
        found.append((str(row.get("book_id") or Path(name).stem), caption, book))
    return found


def validation_items(spec: ExperimentSpec) -> list[Item]:
    """The first ``validate.num_prompts`` held-out books, each with its prompt, short prompt and seed."""
    source = spec.validate.prompts
    if source == "test_set":
        found = items_from_test_set(spec)
    else:
        books = read_books(Path(source))
        for problem in books.problems:
            log.warning(problem)
        found = [(b.book_id, book_caption(b), b) for b in books.books]
    if not found:
        raise ValueError(f"no validation prompts in {source if source != 'test_set' else spec.data.test_dir}")
    if len(found) < spec.validate.num_prompts:
        log.warning(
            "validate.num_prompts=%d but only %d prompts exist; using all", spec.validate.num_prompts, len(found)
        )
    items = []
    for index, (book_id, prompt, book) in enumerate(found[: spec.validate.num_prompts]):
        short = short_caption(book) if book is not None else None
        genres = tuple(dict.fromkeys(book.genres)) if book is not None else ()
        items.append(Item(index, book_id, prompt, short, genres, spec.validate.seed + index))
    return items


def generate_missing(generator: Generator, items: Sequence[Item], folder: Path, spec: ExperimentSpec) -> float:
    """Generate the images of ``items`` not yet in ``folder``; returns seconds spent."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [item for item in items if not (folder / item.file_name).is_file()]
    spent = 0.0
    batch = spec.validate.batch_size
    for start in range(0, len(todo), batch):
        preemption.check()  # a stop request ends the stage between batches; saved images are kept
        chunk = todo[start : start + batch]
        images, seconds = generator.generate(
            [i.prompt for i in chunk], [i.seed for i in chunk], spec.validate.steps, spec.validate.guidance,
            spec.data.size,
        )  # fmt: skip
        spent += seconds
        for item, image in zip(chunk, images, strict=True):
            atomic.save_image(image, folder / item.file_name)
    return spent


def baseline_key(spec: ExperimentSpec, items: Sequence[Item]) -> str:
    settings = {
        "model": to_dict(spec.model),
        "validate": {k: v for k, v in to_dict(spec.validate).items() if k not in ("baseline",)},
        "size": list(spec.data.size),
        "max_caption_tokens": spec.data.max_caption_tokens,
        "items": [(i.prompt, i.seed) for i in items],
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score_folder(scorer: Any, items: Sequence[Item], folder: Path) -> dict[str, Any]:
    """Per-image and mean CLIP scores (full caption, short caption) and per-genre means."""
    from PIL import Image

    images = []
    for item in items:
        with Image.open(folder / item.file_name) as image:
            images.append(image.convert("RGB"))
    full = scorer.scores(images, [i.prompt for i in items])
    with_short = [(n, i) for n, i in enumerate(items) if i.short]
    short_scores = (
        scorer.scores([images[n] for n, _ in with_short], [i.short for _, i in with_short]) if with_short else []
    )
    short = dict(zip([n for n, _ in with_short], short_scores, strict=True))
    per_genre: dict[str, list[float]] = {}
    for n, item in enumerate(items):
        for genre in item.genres or ("(no genres)",):
            per_genre.setdefault(genre, []).append(full[n])
    return {
        "clip_score": mean(full),
        "clip_score_short": mean(short_scores),
        "per_genre": {genre: mean(values) for genre, values in sorted(per_genre.items())},
        "per_image": [{"index": i.index, "score": full[n], "score_short": short.get(n)} for n, i in enumerate(items)],
    }


def validate(spec: ExperimentSpec, paths: RunPaths) -> dict[str, Any]:
    """Generate, score, and write ``<run>/validate/<key>/validation.json``; returns its content.

    One process at a time validates a run with given settings (a second is turned away before it
    touches a file); a stop request (SLURM's signal) raises :class:`cover_hpc.preemption.Stopped`
    between image batches, and the next start generates only the images still missing.
    """
    from cover_hpc.runs import validation_key

    out = paths.validation(validation_key(spec))
    with locks.held(out.lock, f"validation of run {paths.root.name} in {out.root}"):
        preemption.check()
        return _validate(spec, paths, out)


def _validate(spec: ExperimentSpec, paths: RunPaths, out: ValidationPaths) -> dict[str, Any]:
    env.set_offline_defaults()
    started = time.perf_counter()
    items = validation_items(spec)
    tokens_max, precision = spec.data.max_caption_tokens, spec.validate.precision
    generator = load_generator(spec.model, paths.train, tokens_max, precision)
    lora_seconds = generate_missing(generator, items, out.images, spec)
    del generator
    base_folder = paths.experiment.baseline(baseline_key(spec, items)) if spec.validate.baseline else None
    base_seconds = 0.0
    if base_folder is not None:
        base_seconds = generate_missing(
            load_generator(spec.model, None, tokens_max, precision), items, base_folder, spec
        )
    device, _ = device_and_dtype(spec.validate.precision)
    scorer = load_scorer(spec.validate.clip_backend, spec.validate.clip_model, device)
    tokens = scorer.tokens([i.prompt for i in items])
    scores = {"lora": score_folder(scorer, items, out.images)}
    if base_folder is not None:
        scores["base"] = score_folder(scorer, items, base_folder)
    result: dict[str, Any] = {
        "run_id": paths.root.name,
        "model": spec.model.pretrained,
        "lora": str(paths.lora_weights),
        "clip_model": spec.validate.clip_model,
        "clip_backend": spec.validate.clip_backend,
        "num_prompts": len(items),
        "steps": spec.validate.steps,
        "guidance": spec.validate.guidance,
        "size": list(spec.data.size),
        "caption_tokens": {
            "metric_window": WINDOW,
            "mean": mean([float(t) for t in tokens]),
            "max": max(tokens),
            "truncated": sum(t > WINDOW for t in tokens),
            "note": f"the CLIP metric sees at most {WINDOW} tokens of each caption; clip_score_short scores a "
            "title-and-genres prompt that fits whole",
        },
        "scores": scores,
        "baseline_images": str(base_folder) if base_folder else None,
        "items": [dataclasses.asdict(i) | {"image": f"images/{i.file_name}"} for i in items],
        "timings": {"lora_generation_s": lora_seconds, "base_generation_s": base_seconds},
    }
    result["timings"]["total_s"] = time.perf_counter() - started
    job = env.slurm_job()
    result["requeues"] = job.restarts if job else 0
    atomic.write_json(out.result, result)
    return result


def validate_run(run_dir: Path, spec: ExperimentSpec | None = None) -> dict[str, Any]:
    """Validate a run with ``spec`` (as submitted), or the one in its ``config.json``."""
    from cover_hpc.runs import load_run_spec

    paths = RunPaths(Path(run_dir).absolute())
    return validate(spec or load_run_spec(paths), paths)
