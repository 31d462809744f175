"""The validation stage: every LoRA point of a run scored on held-out books, and the best one chosen.

The points of a run's step axis are the base model (step 0), its snapshots (``validate.every_steps``,
``at_steps``) and its final LoRA. Each point is scored on the same held-out prompts and seeds:

- text alignment: CLIP score of the full caption and of the short title-and-genres prompt;
- distribution match: CMMD between the CLIP image embeddings of its covers and of the real
  covers of ``data.test_dir`` (:mod:`cover_hpc.metrics.cmmd`);
- title legibility: the book's title read back by OCR (:mod:`cover_hpc.metrics.ocr`);
- held-out loss: the denoising loss on ``data.test_dir`` at fixed timesteps and fixed noise.

Every prompt has its own seed (``validate.seed + i``), so a re-run gives the same images, and
images already on disk are kept (a requeued job continues); a point whose ``metrics.json`` exists
is done. The base model's images are shared by all runs with the same model and validation
settings (``<exp>/baseline/<key>``). A run's points are shared among ``validate.tasks`` array
tasks; whichever finishes last selects the best point (:mod:`cover_hpc.stages.select`), fills
``<run>/best/`` and writes ``validation.json``, last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cover_hpc.metrics.clip_score import WINDOW, load_scorer
from cover_hpc.model.sampling import Generator, device_and_dtype, load_generator
from cover_hpc.runtime import env, preemption
from cover_hpc.spec.schema import ExperimentSpec, to_dict
from cover_hpc.store import atomic, locks
from cover_hpc.store.captions import Book, book_caption, read_books, short_caption
from cover_hpc.store.data import read_metadata, row_caption
from cover_hpc.store.paths import RunPaths, ValidationPaths
from cover_hpc.store.records import (
    Selection,
    SelectionBest,
    SelectionPoint,
    ValidationPoint,
    read_record,
    write_record,
)
from cover_hpc.store.snapshots import lora_points, snapshot_steps
from cover_hpc.track import Tracker, open_tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    index: int
    book_id: str
    prompt: str
    short: str | None
    genres: tuple[str, ...]
    seed: int
    title: str | None = None
    author: str | None = None

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
        title = book.title if book is not None and book.title else None
        author = book.author if book is not None and book.author else None
        items.append(Item(index, book_id, prompt, short, genres, spec.validate.seed + index, title, author))
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


#: The validation settings that change the images (the base model's images depend on nothing else).
IMAGE_SETTINGS = ("prompts", "num_prompts", "steps", "guidance", "seed", "batch_size", "precision")


def baseline_key(spec: ExperimentSpec, items: Sequence[Item]) -> str:
    settings = {
        "model": to_dict(spec.model),
        "validate": {k: v for k, v in to_dict(spec.validate).items() if k in IMAGE_SETTINGS},
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


# --------------------------------------------------------------------------------------------
# The points of a run


@dataclass(frozen=True)
class PointJob:
    """A point to score: the base model (``weights`` None, step 0), a snapshot, the final LoRA or
    its EMA (train.ema)."""

    name: str
    step: int
    weights: Path | None
    kind: str  # "base", "snapshot", "final" or "ema"

    @property
    def slot(self) -> int:
        """Its byte of the validation lock (0 is the selection's; the EMA's is past the final LoRA's)."""
        return 1 if self.kind == "base" else self.step + (3 if self.kind == "ema" else 2)


def run_points(spec: ExperimentSpec, paths: RunPaths) -> list[PointJob]:
    """The base model (when ``validate.baseline``), every snapshot on disk and the final LoRA."""
    points = lora_points(paths)
    if not any(p.final for p in points):
        raise ValueError(
            f"run {paths.root.name} has not finished training ({paths.train_result} is missing); validation "
            "scores its snapshots and final LoRA, so train it first"
        )
    last = points[-1].step
    missing = sorted(set(snapshot_steps(spec.validate, last)) - {p.step for p in points})
    if missing:
        log.warning(
            "run %s has no snapshot at steps %s (asked for by validate.every_steps/at_steps after it trained "
            "past them); validating the %d points it has", paths.root.name, missing, len(points),
        )  # fmt: skip
    beyond = [s for s in spec.validate.at_steps if s > last]
    if beyond:
        log.warning("validate.at_steps %s are beyond the run's last step %d; left out", beyond, last)
    jobs = [PointJob("base", 0, None, "base")] if spec.validate.baseline else []
    jobs += [PointJob(p.name, p.step, p.weights, p.kind) for p in points]
    return jobs


def assigned(points: Sequence[PointJob], task: int, tasks: int) -> list[PointJob]:
    """The points of array task ``task`` of ``tasks``: every tasks-th, so that each task gets early and late steps."""
    return list(points[task::tasks])


# --------------------------------------------------------------------------------------------
# Held-out loss


@dataclass(frozen=True)
class Example:
    """A held-out cover: its file, caption and SDXL size conditioning."""

    path: Path
    caption: str
    time_ids: tuple[int, ...]
    size: tuple[int, int]


def heldout_examples(spec: ExperimentSpec) -> list[Example]:
    """The usable samples of ``data.test_dir`` (empty when it is not set or holds none)."""
    from cover_hpc.store.data import DataError, scan

    if not spec.data.test_dir or not Path(spec.data.test_dir).is_dir():
        return []
    try:
        samples, _ = scan(Path(spec.data.test_dir), spec.data, decode=False)
    except (DataError, OSError) as error:
        log.warning("held-out covers unreadable (%s); no held-out loss or CMMD", error)
        return []
    return [Example(s.path, s.caption, s.time_ids, s.target_size) for s in samples]


def noise_seed(seed: int, index: int, timestep: int) -> int:
    """The seed of one held-out image's noise at one timestep: the same for every point."""
    return (seed * 1_000_003 + index) * 1_009 + timestep


def heldout_loss(generator: Generator, spec: ExperimentSpec, examples: Sequence[Example]) -> dict[str, Any] | None:
    """The denoising loss (plain MSE against the training target, no SNR weighting) of the held-out
    covers at ``validate.loss_timesteps``, with noise fixed by (validate.seed, image, timestep) and the
    VAE's mean latent: the same inputs for every point, so the curve shows the model alone."""
    import torch
    from diffusers import DDPMScheduler

    from cover_hpc.store.data import load_pixels

    chosen = list(examples[: spec.validate.loss_images])
    if not chosen:
        return None
    pipe, device = generator.pipeline, generator.device
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    if spec.train.prediction_type:
        scheduler.register_to_config(prediction_type=spec.train.prediction_type)
    horizon = scheduler.config.num_train_timesteps
    timesteps = [t for t in spec.validate.loss_timesteps if 0 <= t < horizon]
    if len(timesteps) != len(spec.validate.loss_timesteps):
        log.warning("validate.loss_timesteps outside 0..%d left out: %s", horizon - 1, spec.validate.loss_timesteps)
    if not timesteps:
        return None
    velocity = scheduler.config.prediction_type == "v_prediction"
    vae, unet = pipe.vae, pipe.unet
    vae_dtype = torch.float32 if vae.config.get("force_upcast") else vae.dtype
    per_timestep: dict[int, list[float]] = {t: [] for t in timesteps}
    with torch.no_grad():
        for index, example in enumerate(chosen):
            preemption.check()
            pixels = load_pixels(example.path, example.size).unsqueeze(0)
            vae_was = vae.dtype
            vae.to(vae_dtype)
            latents = vae.encode(pixels.to(device, vae_dtype)).latent_dist.mean * vae.config.scaling_factor
            vae.to(vae_was)
            latents = latents.float().expand(len(timesteps), -1, -1, -1)
            noise = torch.cat([
                torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(
                    noise_seed(spec.validate.seed, index, t))).unsqueeze(0)
                for t in timesteps
            ]).to(device)  # fmt: skip
            steps = torch.tensor(timesteps, device=device, dtype=torch.long)
            noisy = scheduler.add_noise(latents, noise, steps)
            target = scheduler.get_velocity(latents, noise, steps) if velocity else noise
            embeds, pooled = generator.encode([example.caption])
            count = len(timesteps)
            time_ids = torch.tensor([example.time_ids] * count, device=device, dtype=embeds.dtype)
            prediction = unet(
                noisy.to(unet.dtype), steps, embeds.expand(count, -1, -1).to(unet.dtype),
                added_cond_kwargs={"text_embeds": pooled.expand(count, -1).to(unet.dtype), "time_ids": time_ids},
            ).sample  # fmt: skip
            losses = (prediction.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
            for t, value in zip(timesteps, losses.tolist(), strict=True):
                per_timestep[t].append(value)
    means = {str(t): sum(v) / len(v) for t, v in per_timestep.items()}
    return {
        "heldout_loss": sum(means.values()) / len(means),
        "per_timestep": means,
        "images": len(chosen),
        "timesteps": timesteps,
        "prediction_type": scheduler.config.prediction_type,
    }


# --------------------------------------------------------------------------------------------
# Scoring


class Scorers:
    """The metric models, loaded once per task when first needed: CLIP (score and CMMD embeddings),
    the OCR engine, and the real covers' CLIP embeddings (cached in the validation folder)."""

    def __init__(self, spec: ExperimentSpec, out: ValidationPaths, examples: Sequence[Example]) -> None:
        self.spec, self.out, self.examples = spec, out, examples
        self._clip: Any = None
        self._ocr: Any = None
        self._second: Any = None
        self._real: Any = None

    @property
    def clip(self) -> Any:
        if self._clip is None:
            device, _ = device_and_dtype(self.spec.validate.precision)
            self._clip = load_scorer(self.spec.validate.clip_backend, self.spec.validate.clip_model, device)
        return self._clip

    @property
    def ocr(self) -> Any:
        if self._ocr is None:
            from cover_hpc.metrics.ocr import load_ocr

            self._ocr = load_ocr("auto", env.cpu_threads(env.dist_env()))
        return self._ocr

    @property
    def second_reader(self) -> Any:
        """The reader of the finished covers' lines the first engine misses (typeset.read_back)."""
        if self._second is None:
            from cover_hpc.metrics.ocr import load_second_reader

            self._second = load_second_reader()
        return self._second

    def real_embeddings(self) -> Any:
        """CLIP embeddings of the held-out real covers (None without any)."""
        if self._real is not None or not self.examples:
            return self._real
        from safetensors.torch import load_file, save_file

        from cover_hpc.store.data import to_rgb

        path = self.out.real_embeddings
        if path.is_file():
            self._real = load_file(str(path))["embeddings"]
            return self._real
        from PIL import Image

        images = []
        for example in self.examples[:MAX_REAL_COVERS]:
            with Image.open(example.path) as image:
                images.append(to_rgb(image))
        self._real = self.clip.image_embeddings(images).contiguous()
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": self._real}, str(temporary))
        os.replace(temporary, path)
        return self._real

    def score(self, items: Sequence[Item], folder: Path, point_folder: Path) -> dict[str, Any]:
        """Every metric of the images in ``folder`` but the held-out loss (and, with ``infer.typeset``,
        of the finished covers typeset over them, written to ``point_folder/finished``)."""
        from PIL import Image

        from cover_hpc.metrics.cmmd import cmmd

        images = []
        for item in items:
            with Image.open(folder / item.file_name) as image:
                images.append(image.convert("RGB"))
        clip = score_folder(self.clip, items, folder)
        metrics: dict[str, Any] = {"clip_score": clip["clip_score"], "clip_score_short": clip["clip_score_short"]}
        detail: dict[str, Any] = {"clip": clip}
        metrics["cmmd"] = None
        if self.spec.validate.cmmd:
            real = self.real_embeddings()
            if real is not None:
                metrics["cmmd"] = cmmd(self.clip.image_embeddings(images), real)
                detail["cmmd"] = {"generated": len(images), "real": int(real.shape[0]), "sigma": 10, "scale": 1000}
        metrics["ocr_similarity"] = metrics["ocr_exact"] = None
        titled = [(image, item.title) for image, item in zip(images, items, strict=True) if item.title]
        if self.spec.validate.ocr and titled:
            from cover_hpc.metrics.ocr import ocr_title_scores

            read = ocr_title_scores(self.ocr, [i for i, _ in titled], [t for _, t in titled if t])
            metrics["ocr_similarity"], metrics["ocr_exact"] = read["mean_similarity"], read["exact_match_rate"]
            detail["ocr"] = read
        if self.spec.infer.typeset and titled:
            finished = self.finished(items, images, point_folder / "finished")
            detail["finished"] = finished
            metrics |= {f"finished_{k}": finished[k] for k in ("ocr_similarity", "ocr_exact", "contrast_min")}
        return {"metrics": metrics, "detail": detail}

    def finished(self, items: Sequence[Item], images: Sequence[Any], folder: Path) -> dict[str, Any]:
        """Finished covers beside the raw art: the exact title (and author) typeset over each raw cover,
        each title read back by the same OCR engine where it was set (the raw art's own lettering is
        not mistaken for it), and the contrast measured under the glyphs."""
        from cover_hpc import typeset

        folder.mkdir(parents=True, exist_ok=True)
        done, per_image = [], []
        for item, art in zip(items, images, strict=True):
            if not item.title:
                continue
            try:
                result = typeset.typeset(art, item.title, author=item.author, genres=item.genres,
                                         font=self.spec.infer.typeset_font)  # fmt: skip
            except typeset.TypesetError as error:
                per_image.append({"index": item.index, "title": item.title, "error": str(error)})
                continue
            atomic.save_image(result.image, folder / item.file_name)
            done.append((item, result))
            per_image.append({"index": item.index, "title": item.title, "image": f"finished/{item.file_name}",
                              "contrast": result.layout.contrast})  # fmt: skip
        reads = {}
        for item, result in done if self.spec.validate.ocr else ():  # validate.ocr off: contrast only
            # the layout is known: each line of the title is read where it was set
            reads[item.index] = typeset.read_back(result, self.ocr, second=self.second_reader)["title"]
        for row in per_image:
            if row["index"] in reads:
                row |= {k: reads[row["index"]][k] for k in ("read", "similarity", "exact", "readers")}
        contrasts = [r.layout.contrast for _, r in done]
        return {
            "covers": len(done), "not_set": len(per_image) - len(done),
            "ocr_similarity": mean([r["similarity"] for r in reads.values()]),
            "ocr_exact": mean([float(r["exact"]) for r in reads.values()]),
            "contrast_min": min(contrasts) if contrasts else None, "per_image": per_image,
        }  # fmt: skip


#: Real covers embedded for CMMD at most (the paper's estimator converges with a few thousand).
MAX_REAL_COVERS = 2048


def score_point(
    spec: ExperimentSpec, paths: RunPaths, out: ValidationPaths, point: PointJob, items: Sequence[Item],
    scorers: Scorers, tracker: Tracker | None = None,
) -> ValidationPoint:  # fmt: skip
    """Generate a point's missing images, score them, and write its ``metrics.json``.

    The base model's images and scores are shared by every run of the experiment with the same
    model and validation settings (``<exp>/baseline/<key>/``): one run's task makes them while the
    others wait, then each copies the scores."""
    if point.kind != "base":
        folder = out.point(point.name)
        record = _scored(spec, point, items, scorers, folder / "images", folder)
    else:
        images = paths.experiment.baseline(baseline_key(spec, items))
        with locks.held(images / ".lock", f"the base model's validation in {images}", wait_s=BASELINE_WAIT_S,
                        while_waiting=preemption.check):  # fmt: skip
            shared = images / f"metrics-{out.root.name}.json"
            cached = read_point(shared)
            if cached is None:
                cached = _scored(spec, point, items, scorers, images, images / f"scored-{out.root.name}")
                write_record(shared, cached)
        record = cached
    write_record(out.point_metrics(point.name), record)
    if tracker is not None:
        track_point(tracker, spec, record)
    return record


#: The trackers' key prefix of each kind of point: a LoRA's (snapshots and the final one share an axis).
TRACK_PREFIX = {"base": "val_base", "ema": "val_ema"}


def track_point(tracker: Tracker, spec: ExperimentSpec, record: ValidationPoint) -> None:
    """A scored point's metrics at its training step, and a few of its images."""
    prefix = TRACK_PREFIX.get(record.kind, "val")
    tracker.log({prefix: {k: v for k, v in record.metrics.items() if v is not None}}, record.step)
    if spec.track.images:
        # not a write a kill interrupted (".<name>.<random>.tmp.png", see store.atomic.save_image)
        images = sorted(p for p in Path(record.images).glob("*.png") if not p.name.startswith("."))[: spec.track.images]
        tracker.images(f"{prefix}/images", images, record.step)


def _as_kind(record: ValidationPoint | None, point: PointJob) -> ValidationPoint | None:
    """A run stopped by a search at a rung ends on the snapshot scored there: the same weights, and
    the same point, which is now its final LoRA."""
    if record is None or record.kind == point.kind:
        return record
    return dataclasses.replace(record, kind=point.kind, weights=str(point.weights) if point.weights else None)


def read_point(path: Path) -> ValidationPoint | None:
    """A scored point's record, None while it is not scored (RecordError for a file that is not one)."""
    return read_record(path, ValidationPoint) if path.is_file() else None


def _scored(
    spec: ExperimentSpec, point: PointJob, items: Sequence[Item], scorers: Scorers, images: Path, folder: Path
) -> ValidationPoint:
    started = time.perf_counter()
    generator = load_generator(spec.model, point.weights, spec.data.max_caption_tokens, spec.validate.precision)
    generation_s = generate_missing(generator, items, images, spec)
    loss = heldout_loss(generator, spec, scorers.examples) if spec.validate.loss_images else None
    del generator
    scored = scorers.score(items, images, folder)
    detail = scored["detail"]
    return ValidationPoint(
        point=point.name, step=point.step, kind=point.kind, weights=str(point.weights) if point.weights else None,
        images=str(images), metrics=scored["metrics"] | {"heldout_loss": loss["heldout_loss"] if loss else None},
        heldout=loss, clip=detail["clip"], cmmd=detail.get("cmmd"), ocr=detail.get("ocr"),
        finished=detail.get("finished"),
        timings={"generation_s": generation_s, "total_s": time.perf_counter() - started},
    )  # fmt: skip


#: How long a task waits for another run's task that generates the shared base-model images.
BASELINE_WAIT_S = 6 * 3600.0


# --------------------------------------------------------------------------------------------
# The stage


def validate(spec: ExperimentSpec, paths: RunPaths, task: int | None = None) -> dict[str, Any] | None:
    """Score this task's points (all of them when ``task`` is None), then, if every point of the run
    is scored, select the best and write ``<run>/validate/<key>/validation.json``; returns its
    content, or None when other tasks still have points to score.

    One process at a time scores a point (a second is turned away before it touches a file); a
    stop request (SLURM's signal) raises :class:`cover_hpc.runtime.preemption.Stopped` between image
    batches, and the next start generates only the images still missing.
    """
    from cover_hpc.store.runs import validation_key

    env.set_offline_defaults()
    tasks = spec.validate.tasks
    if task is not None and not 0 <= task < tasks:
        raise ValueError(f"validation task {task} is outside 0..{tasks - 1} (validate.tasks={tasks})")
    out = paths.validation(validation_key(spec))
    points, items = _inputs(spec, paths)  # before any folder or lock: an input refused leaves no trace
    scorers = Scorers(spec, out, heldout_examples(spec))
    mine = [p for k in (range(tasks) if task is None else [task]) for p in assigned(points, k, tasks)]
    # TensorBoard beside the validation's files (one event file per process: array tasks write at once)
    board = out.root / "tensorboard"
    with closing(open_tracker(spec, paths, "validate", main=env.dist_env().is_main, tensorboard=board)) as tracker:
        return _validate(spec, paths, out, points, items, scorers, mine, tracker)


def _validate(
    spec: ExperimentSpec, paths: RunPaths, out: ValidationPaths, points: list[PointJob], items: list[Item],
    scorers: Scorers, mine: list[PointJob], tracker: Tracker,
) -> dict[str, Any] | None:  # fmt: skip
    for point in mine:
        what = f"validation of {point.name} of run {paths.root.name} in {out.root}"
        try:
            with locks.held(out.lock, what, slot=point.slot):
                preemption.check()
                if not out.point_metrics(point.name).is_file():
                    log.info("validating %s of run %s", point.name, paths.root.name)
                    score_point(spec, paths, out, point, items, scorers, tracker)
        except locks.Busy as busy:  # a second validation at once shares the work instead of failing
            log.warning("%s; left to it (whichever process scores the last point selects)", busy)
    with locks.held(out.lock, f"the selection of run {paths.root.name}", slot=0, wait_s=600,
                    while_waiting=preemption.check):  # fmt: skip
        records = [_as_kind(read_point(out.point_metrics(p.name)), p) for p in points]
        if any(r is None for r in records):
            log.info("points of run %s still being scored by other tasks; the last one selects", paths.root.name)
            return None
        return finish(spec, paths, out, items, scorers, [r for r in records if r is not None], tracker)


def score_snapshot(spec: ExperimentSpec, paths: RunPaths, step: int) -> ValidationPoint:
    """Score the snapshot at ``step`` while its run is still training (a search's rung), as the
    run's validation will: the same folder and record, so the validation after training reuses it."""
    from cover_hpc.store.runs import validation_key

    env.set_offline_defaults()
    snapshot = next((p for p in lora_points(paths) if p.step == step and p.kind == "snapshot"), None)
    if snapshot is None:
        raise FileNotFoundError(f"run {paths.root.name} has no snapshot at step {step} in {paths.snapshots}")
    out = paths.validation(validation_key(spec))
    point = PointJob(snapshot.name, step, snapshot.weights, "snapshot")
    with locks.held(out.lock, f"validation of {point.name} of run {paths.root.name}", slot=point.slot, wait_s=3600,
                    while_waiting=preemption.check):  # fmt: skip
        cached = read_point(out.point_metrics(point.name))
        if cached is not None:
            return cached
        log.info("scoring %s of run %s for the search", point.name, paths.root.name)
        items = validation_items(spec)
        with closing(open_tracker(spec, paths, "validate", tensorboard=out.root / "tensorboard")) as tracker:
            return score_point(spec, paths, out, point, items, Scorers(spec, out, heldout_examples(spec)), tracker)


def check_inputs(spec: ExperimentSpec, paths: RunPaths) -> None:
    """Refuse, writing nothing, what :func:`validate` would refuse before it starts: a run that has
    not finished training, a prompts file (``validate.prompts``) or ``data.test_dir`` (prompts
    ``test_set``) that is missing or holds no prompt, a model named as a folder that does not exist,
    and a missing ``data.test_dir`` when ``validate.select_by`` needs it (cmmd, heldout_loss): without
    it every point would be scored and then none could be chosen."""
    _inputs(spec, paths)


def _inputs(spec: ExperimentSpec, paths: RunPaths) -> tuple[list[PointJob], list[Item]]:
    from cover_hpc.stages.inputs import check_data_folder, check_models

    points = run_points(spec, paths)
    items = validation_items(spec)
    check_models(spec, ("model.pretrained", "model.vae", "validate.clip_model"))
    if spec.validate.select_by in ("cmmd", "heldout_loss"):
        check_data_folder(spec.data.test_dir, "data.test_dir")
    return points, items


def finish(
    spec: ExperimentSpec, paths: RunPaths, out: ValidationPaths, items: Sequence[Item], scorers: Scorers,
    records: list[ValidationPoint], tracker: Tracker | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Select the best point, fill ``<run>/best/``, and write ``validation.json`` (last); the trackers
    get every point (those scored by other tasks or earlier jobs too: none twice) and the choice."""
    from cover_hpc.stages.select import publish_best, select

    choice = select(records, spec.validate.select_by)
    by_kind = {r.kind: r for r in records if r.kind != "snapshot"}
    best = next(r for r in records if r.step == choice.step and r.kind == choice.kind)
    selection = Selection(
        run_id=paths.root.name, validation=out.root.name, select_by=choice.metric, direction=choice.direction,
        num_prompts=len(items), best=SelectionBest(best.step, best.kind, choice.value, best.weights),
        points=[SelectionPoint(r.point, r.step, r.kind, r.metrics) for r in records],
    )  # fmt: skip
    write_record(out.selection, selection)
    best_folder = publish_best(spec, paths, selection, best, items)
    write_record(paths.selection, selection)
    if tracker is not None:
        for record in records:
            track_point(tracker, spec, record)
        tracker.log({"selection": {"best_value": choice.value}}, best.step)
        tracker.summary({"selection/metric": choice.metric, "selection/direction": choice.direction,
                         "selection/best_step": best.step, "selection/best_kind": best.kind,
                         "selection/best_value": choice.value, "selection/best_point": best.point})  # fmt: skip
    scores = {"lora": by_kind["final"].clip, "best": best.clip}
    if "base" in by_kind:
        scores["base"] = by_kind["base"].clip
    tokens = caption_tokens(scorers, items)
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
        "caption_tokens": tokens,
        "scores": scores,
        "select_by": choice.metric,
        "best": dataclasses.asdict(selection.best) | {"folder": str(best_folder)},
        "points": [point_summary(r) for r in records],
        "baseline_images": by_kind["base"].images if "base" in by_kind else None,
        "items": [dataclasses.asdict(i) | {"image": i.file_name} for i in items],
        "timings": {r.point: r.timings for r in records},
    }
    job = env.slurm_job()
    result["requeues"] = job.restarts if job else 0
    atomic.write_json(out.result, result)
    return result


def point_summary(record: ValidationPoint) -> dict[str, Any]:
    """What validation.json keeps of a point: its metrics, images, per-image and per-genre scores, OCR reads."""
    ocr = (record.ocr or {}).get("per_image", [])
    return {
        "point": record.point, "step": record.step, "kind": record.kind, "metrics": record.metrics,
        "images": record.images, "per_image": record.clip["per_image"], "per_genre": record.clip["per_genre"],
        "ocr": [{"title": i["title"], "read": i["read"], "similarity": i["similarity"]} for i in ocr],
    }  # fmt: skip


def caption_tokens(scorers: Scorers, items: Sequence[Item]) -> dict[str, Any]:
    """How many tokens the captions have, against the CLIP metric's window."""
    tokens = scorers.clip.tokens([i.prompt for i in items])
    return {
        "metric_window": WINDOW,
        "mean": mean([float(t) for t in tokens]),
        "max": max(tokens),
        "truncated": sum(t > WINDOW for t in tokens),
        "note": f"the CLIP metric sees at most {WINDOW} tokens of each caption; clip_score_short scores a "
        "title-and-genres prompt that fits whole",
    }


def validate_run(run_dir: Path, spec: ExperimentSpec | None = None, task: int | None = None) -> dict[str, Any] | None:
    """Validate a run with ``spec`` (as submitted), or the one in its ``config.json``."""
    from cover_hpc.stages.inputs import check_run_folder
    from cover_hpc.store.runs import load_run_spec

    paths = RunPaths(Path(run_dir).absolute())
    if spec is None:
        check_run_folder(paths)
    return validate(spec or load_run_spec(paths), paths, task)
