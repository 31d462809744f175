"""``cover-hpc prepare-data``: raw book records and cover images -> a training set and a data report.

Sources (``--format``, found by ``auto``):

- ``bookdb``, the research layout: ``text/<sub>/<id>.txt`` with ``image/<sub>/<id>.<ext>``. Line 0 of
  a text file is the title, line 1 the publisher, lines 2-3 are not used, line 4 holds the genres
  (comma-separated tags) and line 5 on the description (later lines are joined to it).
- ``jsonl`` / ``csv``: one book per line or row (SOURCE is the file, or a folder of them), with
  ``id``, ``title``, ``publisher``, ``genres`` (a list, or comma-separated), ``description``,
  optional ``author``, and ``image`` (relative to the file, or absolute).

Every image is decoded whole and converted to 8-bit RGB (:func:`cover_hpc.store.data.to_rgb`, as the
trainer reads it, after the EXIF rotation). A book is dropped, with its reason (:data:`REASONS`),
when its record or image cannot be used; of each group of duplicate covers the largest is kept.
Captions come from the book-cover template (:func:`cover_hpc.store.captions.book_caption`), the one
training, validation and inference use. The split is a threshold on a hash of the seed and the
book id, so a book keeps its split when books are added.

``OUT`` (:class:`DatasetPaths`) gets ``train_set/`` and ``test_set/`` in imagefolder layout (an RGB
JPEG is copied as it is, anything else is written as an RGB PNG), ``test_books.jsonl`` for
``infer.books_file``, and ``report/`` (``prepare.json`` and ``index.html``).

Re-running is idempotent: what each source image's decode found, and where its output went, is
kept per file (path, size, modification time) in ``.prepare-cache/``, so only new or changed
images are decoded and files whose content would not change are not rewritten. Every file is
written to a temporary name and renamed; the metadata files come after the images they list, and
files no longer listed are removed only after that, so an interrupted run leaves the previous
dataset or the new one, never a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cover_hpc.spec.schema import DataConfig
from cover_hpc.stages.prepare.dedup import find_groups
from cover_hpc.stages.prepare.images import (
    ImageCache,
    ImageFacts,
    Job,
    JobResult,
    Output,
    run_jobs,
    size_problem,
    write_if_changed,
)
from cover_hpc.stages.prepare.sources import FORMATS, Drop, PrepareError, Record, detect_format, read_records, screen
from cover_hpc.store.captions import book_caption

__all__ = [
    "REASONS",
    "DatasetPaths",
    "PrepareError",
    "PrepareOptions",
    "PrepareResult",
    "Progress",
    "describe",
    "prepare",
]

ORIENTATIONS = ("portrait", "any")
REASONS = {
    "malformed-record": "a JSONL line or CSV row that holds no usable record",
    "not-utf8": "a text file, JSONL line or CSV row that is not UTF-8",
    "duplicate-id": "a second record with an id already used",
    "missing-title": "no title",
    "missing-image": "no image named, or the named file does not exist",
    "unreadable-image": "not an image PIL can open",
    "truncated-image": "an image whose pixel data is cut short or broken",
    "too-large": "more pixels than PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS)",
    "too-small": "a side shorter than --min-side",
    "wrong-orientation": "not portrait (width < height) under --orientation portrait",
    "exact-duplicate": "the same pixels as a kept cover",
    "near-duplicate": "the same cover as a kept one, resized or re-encoded (perceptual hash)",
}
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def default_workers() -> int:
    """The CPUs this process may use (its affinity mask, which SLURM and taskset set)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True, kw_only=True)
class PrepareOptions:
    """Everything ``prepare-data`` is asked to do (the command's options)."""

    source: Path
    out: Path
    format: str = "auto"
    test_fraction: float = 0.08
    seed: int = 42
    min_side: int = 305
    orientation: str = "portrait"
    workers: int = field(default_factory=default_workers)
    lowercase: bool = False
    overwrite: bool = False
    dry_run: bool = False
    max_caption_tokens: int = DataConfig().max_caption_tokens

    def check(self) -> None:
        problems = []
        if self.format not in ("auto", *FORMATS):
            problems.append(f"unknown format {self.format!r}; use one of auto, {', '.join(FORMATS)}")
        if not 0 <= self.test_fraction < 1:
            problems.append(f"--test-fraction must be in [0, 1), got {self.test_fraction}")
        if self.min_side < 1:
            problems.append(f"--min-side must be at least 1, got {self.min_side}")
        if self.orientation not in ORIENTATIONS:
            problems.append(f"--orientation must be one of {', '.join(ORIENTATIONS)}, got {self.orientation!r}")
        if self.workers < 1:
            problems.append(f"--workers must be at least 1, got {self.workers}")
        if problems:
            raise PrepareError("; ".join(problems))


@dataclass(frozen=True)
class DatasetPaths:
    """Every path ``prepare-data`` writes under OUT."""

    root: Path

    TRAIN = "train_set"
    TEST = "test_set"

    def split(self, name: str) -> Path:
        return self.root / name

    def metadata(self, split: str) -> Path:
        return self.root / split / "metadata.jsonl"

    @property
    def test_books(self) -> Path:
        return self.root / "test_books.jsonl"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def summary(self) -> Path:
        return self.report / "prepare.json"

    @property
    def html(self) -> Path:
        return self.report / "index.html"

    @property
    def cache(self) -> Path:
        return self.root / ".prepare-cache" / "images.jsonl"

    @property
    def state(self) -> Path:
        """Which source (and format) this folder holds a dataset of; written before anything else."""
        return self.root / ".cover-hpc-prepare.json"

    def owned(self) -> list[Path]:
        return [self.split(self.TRAIN), self.split(self.TEST), self.test_books, self.report,
                self.cache.parent, self.state]  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Progress


class Progress:
    """A bar on a terminal, a line every ``interval`` seconds otherwise; silent without a stream."""

    def __init__(self, stream: TextIO | None, interval: float = 10.0) -> None:
        self.stream = stream
        self.tty = bool(stream is not None and stream.isatty())
        self.interval = interval if not self.tty else 0.1
        self.label, self.total, self.done = "", 0, 0
        self.started = self.shown = time.monotonic()

    def start(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, total, 0
        self.started = self.shown = time.monotonic()

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self.stream is not None and (now - self.shown >= self.interval or self.done == self.total):
            self.shown = now
            self._show(now)

    def _show(self, now: float) -> None:
        assert self.stream is not None
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        figures = (
            f"{self.done}/{self.total} ({100 * self.done // max(self.total, 1)}%), {rate:.0f}/s, {_clock(left)} left"
        )
        if self.tty:
            filled = int(30 * self.done / max(self.total, 1))
            end = "\n" if self.done == self.total else ""
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {figures}\x1b[K{end}")
        else:
            self.stream.write(f"prepare-data: {self.label} {figures}\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    minutes, rest = divmod(int(seconds + 0.5), 60)
    return f"{minutes}m{rest:02d}s"


# ----------------------------------------------------------------------------------------------
# Split, names and the run


def in_test_split(book_id: str, seed: int, fraction: float) -> bool:
    """Whether a book is held out: a threshold on a hash of (seed, id), so it never depends on other books."""
    digest = hashlib.sha256(f"{seed}\0{book_id}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def output_stem(book_id: str) -> str:
    """``<id>`` where the id is a plain file name, else a readable prefix plus 10 hex of its sha256."""
    if _SAFE_ID.fullmatch(book_id):
        return book_id
    digest = hashlib.sha256(book_id.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', book_id)[:80].lstrip('.')}-{digest}"


@dataclass
class Candidate:
    """A record with an image file, on its way through the run."""

    record: Record
    source: Path
    split: str
    facts: ImageFacts | None = None
    output: Output | None = None

    @property
    def file_name(self) -> str:
        return output_stem(self.record.book_id) + _facts(self).suffix


def _facts(candidate: Candidate) -> ImageFacts:
    assert candidate.facts is not None, "facts are filled in by _inspect"
    return candidate.facts


@dataclass(frozen=True)
class PrepareResult:
    """What a run found (``summary`` is what ``report/prepare.json`` holds) and what it cost."""

    summary: dict[str, Any]
    decoded: int  # images decoded in this run
    reused: int  # images whose decode came from the cache
    seconds: float
    dry_run: bool

    @property
    def paths(self) -> DatasetPaths:
        return DatasetPaths(Path(self.summary["out"]))


def check_out(options: PrepareOptions, fmt: str) -> dict[str, str]:
    """OUT's identity for this source; refuses OUT inside SOURCE and OUT holding another dataset."""
    source, out = options.source.resolve(), options.out.resolve()
    if source.is_dir() and (out == source or source in out.parents):
        raise PrepareError(f"OUT {options.out} is inside SOURCE {options.source}; choose a folder outside it")
    paths = DatasetPaths(out)
    if any(source == p or p in source.parents for p in paths.owned()):
        raise PrepareError(f"SOURCE {options.source} is inside {out}'s prepared data; choose another OUT")
    identity = {"source": str(source), "format": fmt}
    if out.exists() and not out.is_dir():
        raise PrepareError(f"OUT {options.out} is a file; give a folder")
    if not out.is_dir() or not any(out.iterdir()) or options.overwrite:
        return identity
    try:
        state = json.loads(paths.state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = None
    if state == identity:
        return identity
    if isinstance(state, dict):
        what = f"holds a dataset prepared from {state.get('source')} ({state.get('format')})"
    else:
        what = f"holds files that prepare-data did not write ({', '.join(sorted(p.name for p in out.iterdir())[:5])})"
    raise PrepareError(f"OUT {options.out} {what}; choose another OUT, or pass --overwrite to replace it")


def prepare(options: PrepareOptions, progress: Progress | None = None) -> PrepareResult:
    """Prepare the dataset (or, with ``dry_run``, only say what would be kept and dropped)."""
    started = time.monotonic()
    progress = progress or Progress(None)
    options.check()
    fmt = detect_format(options.source, options.format)
    identity = check_out(options, fmt)
    paths = DatasetPaths(options.out.resolve())
    records, drops, unmatched = read_records(options.source, fmt)
    count_in = len(records) + len(drops)
    usable, screened = screen(records)
    if not options.dry_run:
        _claim(paths, identity, options.overwrite)
    cache = ImageCache.load(paths.cache, read=_ours(paths, identity), write=not options.dry_run)
    candidates = [_candidate(r, options) for r in usable]
    decoded, reused = _inspect(candidates, cache, options, paths, progress)
    valid, image_drops = _image_drops(candidates, options)
    groups, duplicate_drops, kept = _deduplicate(valid)
    drops += screened + image_drops + duplicate_drops
    summary = _summary(options, fmt, paths, count_in, kept, drops, groups, unmatched)
    if not options.dry_run:
        decoded += _place(kept, cache, options, paths, progress)
        _write_dataset(paths, kept, summary, options)
        cache.compact([(c.source, c.record.book_id) for c in candidates], paths.root)
    return PrepareResult(summary, decoded, reused, time.monotonic() - started, options.dry_run)


def _ours(paths: DatasetPaths, identity: dict[str, str]) -> bool:
    try:
        return bool(json.loads(paths.state.read_text(encoding="utf-8")) == identity)
    except (OSError, ValueError):
        return False


def _claim(paths: DatasetPaths, identity: dict[str, str], overwrite: bool) -> None:
    """Mark OUT as this source's dataset (after clearing another one's files with --overwrite)."""
    if overwrite and not _ours(paths, identity):
        for path in paths.owned():
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    paths.root.mkdir(parents=True, exist_ok=True)
    write_if_changed(paths.state, json.dumps(identity, indent=2) + "\n")


def _candidate(record: Record, options: PrepareOptions) -> Candidate:
    assert record.image is not None
    held_out = in_test_split(record.book_id, options.seed, options.test_fraction)
    return Candidate(record, record.image.resolve(), DatasetPaths.TEST if held_out else DatasetPaths.TRAIN)


def _inspect(candidates: list[Candidate], cache: ImageCache, options: PrepareOptions, paths: DatasetPaths,
             progress: Progress) -> tuple[int, int]:  # fmt: skip
    """Fill in every candidate's facts, from the cache or by decoding; returns (decoded, from the cache)."""
    todo: list[Candidate] = []
    for candidate in candidates:
        candidate.facts, candidate.output = cache.lookup(candidate.source, candidate.record.book_id)
        facts = candidate.facts
        if facts is None or (not facts.decoded and facts.problem is None and not _size_drops(facts, options)):
            todo.append(candidate)
    root = None if options.dry_run else str(paths.root)
    jobs = [Job(str(c.source), options.min_side, options.orientation, root,
                str(paths.split(c.split) / output_stem(c.record.book_id)) if root else None) for c in todo]  # fmt: skip
    if root:
        for split in (paths.TRAIN, paths.TEST):
            paths.split(split).mkdir(parents=True, exist_ok=True)
    progress.start("decoding images", len(jobs))
    decoded = 0

    def done(index: int, result: JobResult) -> None:
        nonlocal decoded
        candidate = todo[index]
        candidate.facts, candidate.output = result.facts, result.output or candidate.output
        decoded += result.decoded
        cache.put(candidate.source, result.facts, candidate.record.book_id, candidate.output)
        progress.advance()

    cache.flush()  # forked workers must not inherit unwritten lines
    run_jobs(jobs, options.workers, done)
    cache.flush()
    return decoded, len(candidates) - len(todo)


def _size_drops(facts: ImageFacts, options: PrepareOptions) -> tuple[str, str] | None:
    return size_problem(facts.width, facts.height, options.min_side, options.orientation)


def _image_drops(candidates: list[Candidate], options: PrepareOptions) -> tuple[list[Candidate], list[Drop]]:
    valid: list[Candidate] = []
    drops: list[Drop] = []
    for candidate in candidates:
        facts, record = _facts(candidate), candidate.record
        problem = (facts.problem, f"{record.image_ref}: {facts.detail}") if facts.problem else None
        size = _size_drops(facts, options)
        problem = problem or (size and (size[0], f"{record.image_ref}: {size[1]}"))
        if problem:
            drops.append(Drop(record.order, record.where, problem[0], problem[1], record.book_id))
        else:
            valid.append(candidate)
    return valid, drops


def _deduplicate(valid: list[Candidate]) -> tuple[list[dict[str, Any]], list[Drop], list[Candidate]]:
    """Duplicate groups (for the report), the drops they make, and the candidates kept."""
    prints = [_facts(c).fingerprint() for c in valid]
    groups = find_groups(prints, [c.record.book_id for c in valid])
    dropped: set[int] = set()
    drops: list[Drop] = []
    listing = []
    for group in groups:
        keeper = valid[group.kept].record
        members = []
        for index, found in zip(group.dropped, group.matches, strict=True):
            record, exact = valid[index].record, _facts(valid[index]).sha256 == _facts(valid[group.kept]).sha256
            reason = "exact-duplicate" if exact else "near-duplicate"
            detail = f"the same pixels as {keeper.book_id!r}"
            if not exact:
                detail = (f"looks like {keeper.book_id!r} (dHash distance {found.dhash_distance} of 256 bits, "
                          f"thumbnail correlation {found.correlation})")  # fmt: skip
            drops.append(Drop(record.order, record.where, reason, detail, record.book_id))
            members.append(_member(valid[index]) | {"reason": reason, "dhash_distance": found.dhash_distance,
                                                    "correlation": found.correlation})  # fmt: skip
            dropped.add(index)
        listing.append({"kind": group.kind, "kept": keeper.book_id, "kept_member": _member(valid[group.kept]),
                        "dropped": members})  # fmt: skip
    return listing, drops, [c for index, c in enumerate(valid) if index not in dropped]


def _member(candidate: Candidate) -> dict[str, Any]:
    facts = _facts(candidate)
    return {"id": candidate.record.book_id, "source": candidate.record.where, "image": candidate.record.image_ref,
            "width": facts.width, "height": facts.height}  # fmt: skip


def _place(kept: list[Candidate], cache: ImageCache, options: PrepareOptions, paths: DatasetPaths,
           progress: Progress) -> int:  # fmt: skip
    """Put every kept cover's output where it belongs; returns the images decoded to do so."""
    jobs: list[Job] = []
    todo: list[Candidate] = []
    for candidate in kept:
        target = paths.split(candidate.split) / candidate.file_name
        output = candidate.output
        if output is not None and output.present(paths.root):
            if output.file != target.relative_to(paths.root).as_posix():  # in the other split (seed changed)
                candidate.output = _link(paths.root, paths.root / output.file, target)
                cache.put(candidate.source, _facts(candidate), candidate.record.book_id, candidate.output)
            continue
        todo.append(candidate)
        stem = paths.split(candidate.split) / output_stem(candidate.record.book_id)
        jobs.append(Job(str(candidate.source), options.min_side, options.orientation, str(paths.root), str(stem),
                        candidate.facts))  # fmt: skip
    progress.start("writing images", len(jobs))
    decoded = 0

    def done(index: int, result: JobResult) -> None:
        nonlocal decoded
        candidate = todo[index]
        if result.facts.problem:  # the file broke between its inspection and now
            raise PrepareError(f"{candidate.source} changed while being prepared ({result.facts.detail}); run again")
        candidate.output, decoded = result.output, decoded + result.decoded
        cache.put(candidate.source, result.facts, candidate.record.book_id, result.output)
        progress.advance()

    run_jobs(jobs, options.workers, done)
    return decoded


def _link(root: Path, existing: Path, target: Path) -> Output:
    """``target`` as a second name of ``existing`` (a copy where links are not allowed), atomically."""
    temporary = target.with_name(f".{target.name}.link.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(existing, temporary)
    except OSError:
        shutil.copyfile(existing, temporary)
    os.replace(temporary, target)
    return Output.of(root, target)


# ----------------------------------------------------------------------------------------------
# What is written: metadata, test books, report


def metadata_row(candidate: Candidate) -> dict[str, Any]:
    record = candidate.record
    return {"file_name": candidate.file_name, "text": book_caption(record.book()), "book_id": record.book_id,
            "title": record.title, "publisher": record.publisher, "genres": list(record.genres),
            "description": record.description, "author": record.author}  # fmt: skip


def _jsonl(rows: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _summary(options: PrepareOptions, fmt: str, paths: DatasetPaths, count_in: int, kept: list[Candidate],
             drops: list[Drop], groups: list[dict[str, Any]], unmatched: list[str]) -> dict[str, Any]:  # fmt: skip
    test = sum(1 for c in kept if c.split == DatasetPaths.TEST)
    by_reason = {reason: sum(1 for d in drops if d.reason == reason) for reason in REASONS}
    return {
        "source": str(options.source.resolve()),
        "format": fmt,
        "out": str(paths.root),
        "settings": {
            "test_fraction": options.test_fraction,
            "seed": options.seed,
            "min_side": options.min_side,
            "orientation": options.orientation,
            "lowercase": options.lowercase,
            "max_caption_tokens": options.max_caption_tokens,
        },
        "counts": {
            "in": count_in,
            "kept": len(kept),
            "train": len(kept) - test,
            "test": test,
            "dropped": len(drops),
            "dropped_by_reason": {r: n for r, n in by_reason.items() if n},
        },
        "test_fraction": {"asked": options.test_fraction, "reached": test / len(kept) if kept else 0.0},
        "reasons": REASONS,
        "duplicate_groups": groups,
        "dropped": [d.to_json() for d in sorted(drops, key=lambda d: d.order)],
        "images_without_text": unmatched,
    }


def _write_dataset(paths: DatasetPaths, kept: list[Candidate], summary: dict[str, Any],
                   options: PrepareOptions) -> None:  # fmt: skip
    """Report and test books, then each split's metadata (last), then remove what is no longer listed."""
    from cover_hpc.stages.prepare import summary as data_summary

    kept = sorted(kept, key=lambda c: c.record.book_id)
    rows = {split: [metadata_row(c) for c in kept if c.split == split] for split in (paths.TRAIN, paths.TEST)}
    test_books = [{**c.record.book().to_json(), "author": c.record.author} for c in kept if c.split == paths.TEST]
    write_if_changed(paths.test_books, _jsonl(test_books))
    counts, tokenizer = data_summary.caption_tokens([row["text"] for split_rows in rows.values() for row in split_rows])
    tokens = data_summary.token_summary(counts, options.max_caption_tokens)
    summary["caption_tokens"] = {**tokens, "tokenizer": tokenizer}
    top_genres = data_summary.genre_counts([c.record.genres for c in kept])
    summary["top_genres"] = [{"genre": genre, "books": books} for genre, books in top_genres]
    plots = {"sizes": data_summary.sizes_plot([(_facts(c).width, _facts(c).height) for c in kept], options.min_side)}
    if counts:
        plots["tokens"] = data_summary.tokens_plot(counts, options.max_caption_tokens, tokenizer)
    if top_genres:
        plots["genres"] = data_summary.genres_plot(top_genres)
    write_if_changed(paths.summary, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_if_changed(paths.html, data_summary.render_html(summary, plots))
    for split, split_rows in rows.items():
        write_if_changed(paths.metadata(split), _jsonl(split_rows))
    for split, split_rows in rows.items():
        _remove_unlisted(paths.split(split), {row["file_name"] for row in split_rows})


def _remove_unlisted(folder: Path, listed: set[str]) -> None:
    for path in folder.iterdir():
        if path.name not in listed and path.name != "metadata.jsonl" and (path.is_file() or path.is_symlink()):
            path.unlink()


def describe(result: PrepareResult, limit: int = 20) -> str:
    """What the command prints: counts, drops by reason, the first drops, and where things went."""
    summary, counts = result.summary, result.summary["counts"]
    reasons = ", ".join(f"{reason} {n}" for reason, n in counts["dropped_by_reason"].items()) or "none"
    lines = [
        f"{'dry run, nothing written: ' if result.dry_run else ''}{counts['kept']} of {counts['in']} books kept "
        f"(train {counts['train']}, test {counts['test']}: test fraction {summary['test_fraction']['reached']:.3f} "
        f"for {summary['test_fraction']['asked']} asked); {counts['dropped']} dropped: {reasons}",
        f"{len(summary['duplicate_groups'])} duplicate groups; {result.decoded} images decoded, "
        f"{result.reused} from the cache, in {result.seconds:.1f} s",
    ]
    dropped = summary["dropped"]
    if result.dry_run and dropped:
        lines += [f"  {d['source']}: {d['reason']}: {d['detail']}" for d in dropped[:limit]]
        lines += [f"  ... and {len(dropped) - limit} more"] if len(dropped) > limit else []
    if not result.dry_run:
        lines.append(f"dataset in {summary['out']}; report {result.paths.html}")
    return "\n".join(lines)
