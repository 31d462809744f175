"""Sharded batch inference: covers for every book of a books file, one shard per array task.

Shard ``k`` of ``n`` takes books ``k, k + n, k + 2n, ...`` of the file (disjoint; together they
cover every book once). Each book's seed derives from ``infer.seed`` and its id, so a book gets
the same cover whichever shard or batch it lands in. A book counts as done when its image and
its manifest line exist, so a requeued shard generates only what is missing. The last shard to
finish merges the manifests.
"""

from __future__ import annotations

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
from cover_hpc.store.captions import Book, book_caption, read_books
from cover_hpc.store.paths import InferencePaths, RunPaths
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


def done_books(manifest: Path, images: Path) -> dict[str, dict[str, Any]]:
    """Manifest lines whose image is on disk, by book id."""
    if not manifest.is_file():
        return {}
    done = {}
    for line in manifest.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write: its book is generated again
        # done: its cover is on disk, or (typeset) its art is and the title could not be set on it
        kept = record.get("image") or record.get("art")
        if isinstance(kept, str) and (images.parent / kept).is_file():
            done[record["book_id"]] = record
    return done


def infer_shard(spec: ExperimentSpec, paths: RunPaths, shard: int) -> ShardResult:
    """Generate the covers of one shard into ``<run>/infer/<key>/``; merge all manifests if this was
    the last shard to finish.

    One process at a time runs a shard (a second is turned away before it touches a file); a stop
    request (SLURM's signal) raises :class:`cover_hpc.runtime.preemption.Stopped` between batches, and the
    next start generates only what is missing.
    """
    from cover_hpc.store.runs import inference_key

    config = spec.infer
    if not 0 <= shard < config.shards:
        raise ValueError(f"shard {shard} is outside 0..{config.shards - 1} (infer.shards={config.shards})")
    out = paths.inference(inference_key(spec))
    with locks.held(out.lock, f"inference shard {shard} of run {paths.root.name} in {out.root}", slot=shard):
        preemption.check()
        return _infer_shard(spec, paths, out, shard)


def _infer_shard(spec: ExperimentSpec, paths: RunPaths, out: InferencePaths, shard: int) -> ShardResult:
    env.set_offline_defaults()
    config = spec.infer
    assert config.books_file
    books_file = read_books(Path(config.books_file))
    for problem in books_file.problems:
        log.warning(problem)
    mine = shard_of(books_file.books, shard, config.shards)
    manifest = out.manifest(shard)
    out.images.mkdir(parents=True, exist_ok=True)
    done = done_books(manifest, out.images)
    todo = [book for book in mine if book.book_id not in done]
    if done:  # rewrite the manifest without lines whose image was lost
        atomic.write_text(manifest, "".join(json.dumps(r) + "\n" for r in done.values()))
    seconds = 0.0
    finisher = Finisher(config, out) if config.typeset else None
    if finisher is not None:  # art kept by a start that stopped before typesetting it: typeset only
        drawn = [book for book in todo if (out.art / image_name(book)).is_file()]
        for book in drawn:
            preemption.check()
            with Image.open(out.art / image_name(book)) as art:
                art.load()
                _append(manifest, _record(book, config, 0.0) | finisher.finish(book, art))
        todo = [book for book in todo if book not in drawn]
    point = checkpoint_of(spec, paths, out)
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
                record = _record(book, config, spent / len(batch)) | {"checkpoint_step": point.step}
                if finisher is None:
                    target = out.images / image_name(book)
                    atomic.save_image(image, target)
                    record["image"] = f"images/{target.name}"
                else:
                    atomic.save_image(image, out.art / image_name(book))
                    record |= finisher.finish(book, image)
                _append(manifest, record)
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


def checkpoint_of(spec: ExperimentSpec, paths: RunPaths, out: InferencePaths) -> Point:
    """The LoRA that ``infer.checkpoint`` names, recorded in ``checkpoint.json`` by the first shard: a
    folder's covers all come from one LoRA, and a later start that resolves another one stops."""
    point = resolve_checkpoint(paths, spec.infer.checkpoint, selection_of(spec, paths), spec.validate.select_by)
    record = {"checkpoint": spec.infer.checkpoint, "step": point.step, "final": point.final,
              "weights": str(point.weights)}  # fmt: skip
    path = out.root / "checkpoint.json"
    if path.is_file():
        before = json.loads(path.read_text())
        if before.get("step") != point.step:
            raise CheckpointError(
                f"the covers in {out.root} were made with the LoRA of step {before.get('step')}, but "
                f"infer.checkpoint={spec.infer.checkpoint} now names step {point.step}; move that folder away to "
                f"make them again, or set infer.checkpoint={before.get('step')}"
            )
    else:
        atomic.write_json(path, record)
    log.info("inference of run %s with the LoRA of step %d (%s)", paths.root.name, point.step,
             spec.infer.checkpoint)  # fmt: skip
    return point


def negative_prompt(config: InferConfig) -> str:
    """The spec's negative prompt, plus the one against lettering when covers are typeset."""
    extra = config.typeset_negative if config.typeset else ""
    return ", ".join(part for part in (config.negative_prompt.strip(), extra.strip()) if part)


def _record(book: Book, config: InferConfig, seconds: float) -> dict[str, Any]:
    return {"book_id": book.book_id, "prompt": book_caption(book), "seed": book_seed(config.seed, book.book_id),
            "seconds": seconds}  # fmt: skip


def _append(manifest: Path, record: dict[str, Any]) -> None:
    """One manifest line, flushed: a book counts as done only once its line is whole."""
    with manifest.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


class Finisher:
    """Typesets the exact title and author over generated art (infer.typeset), reads the title back
    by OCR (infer.typeset_verify) and records the layout; see cover_hpc.typeset."""

    def __init__(self, config: InferConfig, out: InferencePaths) -> None:
        from cover_hpc.metrics import ocr

        self.config = config
        self.out = out
        out.art.mkdir(parents=True, exist_ok=True)
        self.reader = ocr.load_ocr("auto") if config.typeset_verify else None
        self.second = ocr.load_second_reader() if config.typeset_verify else None  # lines the first misses

    def finish(self, book: Book, art: Any) -> dict[str, Any]:
        """Manifest fields of one book: its art, and its finished cover with the layout, or the error."""
        from cover_hpc import typeset

        name = image_name(book)
        fields: dict[str, Any] = {"art": f"art/{name}"}
        title = book.title or book.book_id
        try:
            result = typeset.typeset(art, title, author=book.author or None, genres=book.genres,
                                     font=self.config.typeset_font)  # fmt: skip
        except typeset.TypesetError as error:  # reported, and no cover written for this book
            log.warning("book %r: no finished cover: %s", book.book_id, error)
            return fields | {"image": None, "error": str(error)}
        atomic.save_image(result.image, self.out.images / name)
        fields |= {"image": f"images/{name}", "layout": result.layout.to_dict(),
                   "contrast": round(result.layout.contrast, 3)}  # fmt: skip
        if self.reader is not None:
            fields["ocr"] = typeset.read_back(result, self.reader, second=self.second)
        return fields


def merge_manifests(out: InferencePaths, books: list[Book], shards: int) -> Path | None:
    """Write the merged manifest (in books-file order) once every shard has finished."""
    if not all(out.shard_done(k).is_file() for k in range(shards)):
        return None
    records: dict[str, dict[str, Any]] = {}
    for shard in range(shards):
        records.update(done_books(out.manifest(shard), out.images))
    ordered = [records[b.book_id] for b in books if b.book_id in records]
    atomic.write_text(out.manifest(), "".join(json.dumps(r) + "\n" for r in ordered))
    return out.manifest()


def infer_run(run_dir: Path, shard: int, spec: ExperimentSpec | None = None) -> ShardResult:
    """Run one inference shard of a run with ``spec`` (as submitted), or the one in its ``config.json``."""
    from cover_hpc.store.runs import load_run_spec

    paths = RunPaths(Path(run_dir).absolute())
    return infer_shard(spec or load_run_spec(paths), paths, shard)
