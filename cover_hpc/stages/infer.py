"""Sharded batch inference: covers for every book of a books file, one shard per array task.

Shard ``k`` of ``n`` takes books ``k, k + n, k + 2n, ...`` of the file (disjoint; together they
cover every book once). Each book's seed derives from ``infer.seed`` and its id, so a book gets
the same cover whichever shard or batch it lands in. A book counts as done when its image and
its manifest line exist, so a requeued shard generates only what is missing. The last shard to
finish merges the manifests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from cover_hpc.model.sampling import load_generator
from cover_hpc.runtime import env, preemption
from cover_hpc.spec.schema import ExperimentSpec, InferConfig
from cover_hpc.spec.vocab import CheckpointError
from cover_hpc.stages.validate import safe_name
from cover_hpc.store import atomic, locks
from cover_hpc.store.captions import Book, BooksFile, book_caption, read_books
from cover_hpc.store.paths import InferencePaths, RunPaths
from cover_hpc.store.records import ManifestRow, append_record, read_record_lines, write_records
from cover_hpc.store.snapshots import Point, resolve_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardResult:
    shard: int
    shards: int
    books: int
    generated: int
    skipped: int
    seconds: float
    problems: list[str]
    requeues: int = 0  # SLURM requeues of this shard's job


def book_seed(base: int, book_id: str) -> int:
    return (base + int(hashlib.sha256(book_id.encode()).hexdigest()[:8], 16)) % 2**31


def shard_of(books: list[Book], shard: int, shards: int) -> list[Book]:
    return books[shard::shards]


def image_name(book: Book) -> str:
    """``<readable prefix>-<hash>.png``, one per id: the prefix folds characters ('a/b' and 'a_b',
    any two CJK ids) and is cut at 80, so 10 hex of the exact id's sha256 keep names apart."""
    digest = hashlib.sha256(book.book_id.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{safe_name(book.book_id)[:80]}-{digest}.png"


def done_books(manifest: Path, images: Path) -> dict[str, ManifestRow]:
    """Manifest lines whose image is on disk, by book id (a line cut by a kill mid-write is left
    out: its book is generated again)."""
    if not manifest.is_file():
        return {}
    done = {}
    for row in read_record_lines(manifest, ManifestRow):
        # done: its cover is on disk, or (typeset) its art is and the title could not be set on it
        kept = row.image or row.art
        if kept and (images.parent / kept).is_file():
            done[row.book_id] = row
    return done


def infer_shard(spec: ExperimentSpec, paths: RunPaths, shard: int) -> ShardResult:
    """Generate the covers of one shard into ``<run>/infer/<key>/``; merge all manifests if this was
    the last shard to finish.

    Its inputs (the books file, the trained LoRA, the models, the OCR readers of infer.typeset_verify)
    are read before any folder or lock is made, so one that is refused leaves the run as it was. One
    process at a time runs a shard (a second is turned away before it touches a file); a stop
    request (SLURM's signal) raises :class:`cover_hpc.runtime.preemption.Stopped` between batches, and the
    next start generates only what is missing.
    """
    from cover_hpc.store.runs import inference_key

    env.set_offline_defaults()
    config = spec.infer
    if not 0 <= shard < config.shards:
        raise ValueError(f"shard {shard} is outside 0..{config.shards - 1} (infer.shards={config.shards})")
    out = paths.inference(inference_key(spec))  # ValueError without infer.books_file
    books, point = _inputs(spec, paths)
    finisher = Finisher(config, out) if config.typeset else None
    with locks.held(out.lock, f"inference shard {shard} of run {paths.root.name} in {out.root}", slot=shard):
        preemption.check()
        return _infer_shard(spec, paths, out, shard, books, point, finisher)


def check_inputs(spec: ExperimentSpec, paths: RunPaths) -> None:
    """Refuse, writing nothing, what :func:`infer_shard` would refuse before it starts: no
    ``infer.books_file``, or one that is missing or holds no book, a LoRA ``infer.checkpoint`` does
    not find (an unfinished run, no selection, a step without a snapshot), a base model named as a
    folder that does not exist."""
    from cover_hpc.store.runs import inference_key

    inference_key(spec)
    _inputs(spec, paths)


def _inputs(spec: ExperimentSpec, paths: RunPaths) -> tuple[BooksFile, Point]:
    from cover_hpc.stages.inputs import check_models

    assert spec.infer.books_file
    books = read_books(Path(spec.infer.books_file))
    point = lora_of(spec, paths)
    check_models(spec, ("model.pretrained", "model.vae"))
    return books, point


def _infer_shard(
    spec: ExperimentSpec, paths: RunPaths, out: InferencePaths, shard: int, books_file: BooksFile, point: Point,
    finisher: Finisher | None,
) -> ShardResult:  # fmt: skip
    config = spec.infer
    for problem in books_file.problems:
        log.warning(problem)
    mine = shard_of(books_file.books, shard, config.shards)
    manifest = out.manifest(shard)
    out.images.mkdir(parents=True, exist_ok=True)
    record_checkpoint(spec, paths, out, point)
    done = done_books(manifest, out.images)
    todo = [book for book in mine if book.book_id not in done]
    if done:  # rewrite the manifest without lines whose image was lost
        write_records(manifest, done.values())
    seconds = 0.0
    if finisher is not None:  # art kept by a start that stopped before typesetting it: typeset only
        out.art.mkdir(parents=True, exist_ok=True)
        drawn = [book for book in todo if (out.art / image_name(book)).is_file()]
        for book in drawn:
            preemption.check()
            with Image.open(out.art / image_name(book)) as art:
                art.load()
                append_record(manifest, finisher.finish(book, art, _row(book, config, 0.0, point.step)))
        todo = [book for book in todo if book not in drawn]
    if todo:
        generator = load_generator(
            spec.model, point.weights, spec.data.max_caption_tokens, config.precision, config.scheduler,
            config.compile, config.vae_tiling,
        )  # fmt: skip
        negative = negative_prompt(config)
        for start in range(0, len(todo), config.batch_size):
            preemption.check()  # a stop request ends the shard between batches; finished covers are kept
            batch = todo[start : start + config.batch_size]
            prompts = [book_caption(b) for b in batch]
            seeds = [book_seed(config.seed, b.book_id) for b in batch]
            images, spent = generator.generate(prompts, seeds, config.steps, config.guidance, config.size, negative)
            seconds += spent
            for book, image in zip(batch, images, strict=True):
                row = _row(book, config, spent / len(batch), point.step)
                if finisher is None:
                    target = out.images / image_name(book)
                    atomic.save_image(image, target)
                    row = dataclasses.replace(row, image=f"images/{target.name}")
                else:
                    atomic.save_image(image, out.art / image_name(book))
                    row = finisher.finish(book, image, row)
                append_record(manifest, row)
    job = env.slurm_job()
    result = ShardResult(
        shard, config.shards, len(mine), len(todo), len(mine) - len(todo), seconds, books_file.problems,
        job.restarts if job else 0,
    )  # fmt: skip
    atomic.write_json(out.shard_done(shard), result.__dict__)
    merge_manifests(out, books_file.books, config.shards)
    return result


def selection_of(spec: ExperimentSpec, paths: RunPaths) -> Path:
    """The ``selection.json`` that ``infer.checkpoint: best`` reads. With ``infer.typeset`` on,
    validation also scores finished covers, in a folder of its own; no ``select_by`` metric reads
    them, so the choice of a validation without typesetting is the same choice and is used when the
    typeset one has not been made (typesetting turned on after validating needs no new validation)."""
    import dataclasses

    from cover_hpc.store.runs import validation_key

    own = paths.validation(validation_key(spec)).selection
    if own.is_file() or not spec.infer.typeset:
        return own
    plain = dataclasses.replace(spec, infer=dataclasses.replace(spec.infer, typeset=False))
    other = paths.validation(validation_key(plain)).selection
    return other if other.is_file() else own


def lora_of(spec: ExperimentSpec, paths: RunPaths) -> Point:
    """The LoRA that ``infer.checkpoint`` names (read only: CheckpointError when there is none)."""
    return resolve_checkpoint(paths, spec.infer.checkpoint, selection_of(spec, paths), spec.validate.select_by)


def record_checkpoint(spec: ExperimentSpec, paths: RunPaths, out: InferencePaths, point: Point) -> None:
    """Record ``point`` in ``checkpoint.json``, or check it against the one recorded by the first
    shard: a folder's covers all come from one LoRA, and a later start that resolves another one stops."""
    path = out.checkpoint
    if path.is_file():
        try:
            before = json.loads(path.read_text())
            step = before["step"]
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(
                f"{path} is not one cover-hpc wrote ({type(error).__name__}: {error}); move {out.root} away to make "
                "its covers again"
            ) from None
        if step != point.step:
            raise CheckpointError(
                f"the covers in {out.root} were made with the LoRA of step {step}, but "
                f"infer.checkpoint={spec.infer.checkpoint} now names step {point.step}; move that folder away to "
                f"make them again, or set infer.checkpoint={step}"
            )
    else:
        record = {"checkpoint": spec.infer.checkpoint, "step": point.step, "final": point.final,
                  "weights": str(point.weights)}  # fmt: skip
        atomic.write_json(path, record)
    log.info("inference of run %s with the LoRA of step %d (%s)", paths.root.name, point.step,
             spec.infer.checkpoint)  # fmt: skip


def negative_prompt(config: InferConfig) -> str:
    """The spec's negative prompt, plus the one against lettering when covers are typeset."""
    extra = config.typeset_negative if config.typeset else ""
    return ", ".join(part for part in (config.negative_prompt.strip(), extra.strip()) if part)


def _row(book: Book, config: InferConfig, seconds: float, step: int) -> ManifestRow:
    return ManifestRow(book_id=book.book_id, prompt=book_caption(book), seed=book_seed(config.seed, book.book_id),
                       seconds=seconds, checkpoint_step=step)  # fmt: skip


class Finisher:
    """Typesets the exact title and author over generated art (infer.typeset), reads the title back
    by OCR (infer.typeset_verify) and records the layout; see cover_hpc.typeset. Made before the
    shard's lock (an OCR engine that is missing refuses the shard before it writes anything)."""

    def __init__(self, config: InferConfig, out: InferencePaths) -> None:
        from cover_hpc.metrics import ocr

        self.config = config
        self.out = out
        self.reader = ocr.load_ocr("auto") if config.typeset_verify else None
        self.second = ocr.load_second_reader() if config.typeset_verify else None  # lines the first misses

    def finish(self, book: Book, art: Any, row: ManifestRow) -> ManifestRow:
        """``row`` with the book's art, and its finished cover with the layout, or the error."""
        from cover_hpc import typeset

        name = image_name(book)
        row = dataclasses.replace(row, art=f"art/{name}")
        title = book.title or book.book_id
        try:
            height_width = self.config.cover_size  # [height, width], as infer.size
            size = (height_width[1], height_width[0]) if height_width else None
            result = typeset.typeset(art, title, author=book.author or None, genres=book.genres,
                                     font=self.config.typeset_font, size=size)  # fmt: skip
        except typeset.TypesetError as error:  # reported, and no cover written for this book
            log.warning("book %r: no finished cover: %s", book.book_id, error)
            return dataclasses.replace(row, image=None, error=str(error))
        except Exception as error:  # a fault on this book's art (OpenCV, a corrupt image): the other books are
            # unaffected, this one keeps its art and says why; the traceback goes to the log (a stop request
            # is a BaseException and passes through)
            log.exception("book %r: typesetting failed", book.book_id)
            return dataclasses.replace(row, image=None, error=f"typesetting failed: {type(error).__name__}: {error}")
        atomic.save_image(result.image, self.out.images / name)
        read = typeset.read_back(result, self.reader, second=self.second) if self.reader is not None else None
        return dataclasses.replace(row, image=f"images/{name}", layout=result.layout.to_dict(),
                                   contrast=round(result.layout.contrast, 3), ocr=read)  # fmt: skip


def merge_manifests(out: InferencePaths, books: list[Book], shards: int) -> Path | None:
    """Write the merged manifest (in books-file order) once every shard has finished."""
    if not all(out.shard_done(k).is_file() for k in range(shards)):
        return None
    rows: dict[str, ManifestRow] = {}
    for shard in range(shards):
        rows.update(done_books(out.manifest(shard), out.images))
    write_records(out.manifest(), [rows[b.book_id] for b in books if b.book_id in rows])
    return out.manifest()


def infer_run(run_dir: Path, shard: int, spec: ExperimentSpec | None = None) -> ShardResult:
    """Run one inference shard of a run with ``spec`` (as submitted), or the one in its ``config.json``."""
    from cover_hpc.stages.inputs import check_run_folder
    from cover_hpc.store.runs import load_run_spec

    paths = RunPaths(Path(run_dir).absolute())
    if spec is None:
        check_run_folder(paths)
    return infer_shard(spec or load_run_spec(paths), paths, shard)
