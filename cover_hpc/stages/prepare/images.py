"""Cover images for :mod:`cover_hpc.stages.prepare.pipeline`: what one decode finds, the output it writes, the per-file
cache of both, and the worker processes that do it.

A worker never raises for a bad image: an unreadable, truncated or too large file comes back as
:class:`ImageFacts` with its ``problem``. PIL's decompression-bomb warning is an error here, so an
image over ``Image.MAX_IMAGE_PIXELS`` is refused before its pixels are decoded.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from PIL import Image, ImageOps

from cover_hpc.stages.prepare.dedup import Fingerprint, fingerprint
from cover_hpc.store import atomic
from cover_hpc.store.data import to_rgb

PNG_LEVEL = 1  # zlib level of written PNGs: 2-4x faster than the default 6, files about 20 % larger


@dataclass(frozen=True)
class ImageFacts:
    """What opening (and, when the size passes, decoding) one source image found."""

    width: int = 0  # as shown, after the EXIF rotation
    height: int = 0
    problem: str | None = None  # unreadable-image, truncated-image or too-large
    detail: str = ""
    decoded: bool = False
    copyable: bool = False  # an RGB JPEG shown as stored: its bytes are the output as they are
    sha256: str = ""
    dhash: str = ""
    thumbnail: str = ""
    colour: str = ""

    def fingerprint(self) -> Fingerprint:
        return Fingerprint(self.sha256, self.dhash, self.thumbnail, self.colour, self.width, self.height)

    @property
    def suffix(self) -> str:
        return ".jpg" if self.copyable else ".png"


@dataclass(frozen=True)
class Output:
    """A written output image: its path under OUT and the stat that shows it is still ours."""

    file: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, root: Path, path: Path) -> Output:
        stat = path.stat()
        return cls(path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns)

    def present(self, root: Path) -> bool:
        try:
            stat = (root / self.file).stat()
        except OSError:
            return False
        return (stat.st_size, stat.st_mtime_ns) == (self.size, self.mtime_ns)


@dataclass(frozen=True)
class Job:
    """Inspect one source image (``known`` is None) or write its output (``known`` given)."""

    source: str
    min_side: int
    orientation: str
    root: str | None = None  # OUT; None: write nothing (dry run)
    target: str | None = None  # output path under OUT without suffix
    known: ImageFacts | None = None


@dataclass(frozen=True)
class JobResult:
    facts: ImageFacts
    output: Output | None
    decoded: bool


class _Unusable(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def size_problem(width: int, height: int, min_side: int, orientation: str) -> tuple[str, str] | None:
    """Why a cover of this size is dropped, or None."""
    if min(width, height) < min_side:
        return "too-small", f"{width}x{height} px: a side is under --min-side {min_side}"
    if orientation == "portrait" and width >= height:
        return "wrong-orientation", f"{width}x{height} px is not portrait (width < height)"
    return None


def run_job(job: Job) -> JobResult:
    """Inspect or write one image; whatever goes wrong becomes a reason, never an exception."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return _run_job(job)
        except _Unusable as error:
            return JobResult(ImageFacts(problem=error.reason, detail=error.detail), None, False)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _run_job(job: Job) -> JobResult:
    if job.known is not None and job.known.copyable:
        return JobResult(job.known, _copy_output(job), False)
    try:
        image = Image.open(job.source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise _Unusable("too-large", str(error)) from None
    except Exception as error:  # PIL raises many kinds for a file that is not an image
        raise _Unusable("unreadable-image", _describe(error)) from None
    with image:
        facts, rgb = _decode(image, job)
    if rgb is None or job.target is None:
        return JobResult(facts, None, rgb is not None)
    output = _copy_output(job) if facts.copyable else _write_png(rgb, job)
    return JobResult(facts, output, True)


def _decode(image: Image.Image, job: Job) -> tuple[ImageFacts, Image.Image | None]:
    """The facts of an opened image and its RGB pixels (None when its size already drops it)."""
    try:
        rotation = int(image.getexif().get(0x0112, 1))  # EXIF orientation: 5-8 turn the picture a quarter
    except Exception:  # a broken EXIF block: the picture as stored
        rotation = 1
    width, height = (image.height, image.width) if rotation in (5, 6, 7, 8) else image.size
    if job.known is None and size_problem(width, height, job.min_side, job.orientation):
        return ImageFacts(width, height), None
    copyable = image.format == "JPEG" and image.mode == "RGB" and rotation in (0, 1)
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise _Unusable("too-large", str(error)) from None
    except Exception as error:
        raise _Unusable("truncated-image", _describe(error)) from None
    try:
        rgb = to_rgb(ImageOps.exif_transpose(image) if rotation not in (0, 1) else image)
    except Exception as error:
        raise _Unusable("unreadable-image", _describe(error)) from None
    digest = fingerprint(rgb)
    facts = ImageFacts(
        width, height, None, "", True, copyable, digest.sha256, digest.dhash, digest.thumbnail, digest.colour
    )
    return facts, rgb


def _copy_output(job: Job) -> Output | None:
    if job.root is None or job.target is None:
        return None
    return _write_bytes(Path(job.root), Path(job.target + ".jpg"), Path(job.source).read_bytes())


def _write_png(rgb: Image.Image, job: Job) -> Output | None:
    if job.root is None or job.target is None:
        return None
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return _write_bytes(Path(job.root), Path(job.target + ".png"), buffer.getvalue())


def _write_bytes(root: Path, path: Path, data: bytes) -> Output:
    """Write a file whole or not at all (no fsync: a kill leaves no torn file, a power cut may)."""
    handle, temporary = atomic.temporary_beside(path)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return Output.of(root, path)


class ImageCache:
    """Per source file (path, size, mtime): its :class:`ImageFacts`, and the :class:`Output` written
    for each book that uses it (two records may name one file).

    A JSON line is appended per inspected file as the run goes, so an interrupted run keeps what
    it decoded; :meth:`compact` rewrites the file with one line per current source at the end.
    """

    def __init__(self, path: Path | None, entries: dict[str, dict[str, Any]]) -> None:
        self.path = path  # None: written nowhere (a dry run)
        self.entries = entries
        self._stream: TextIO | None = None
        self._flushed = time.monotonic()

    @classmethod
    def load(cls, path: Path, read: bool = True, write: bool = True) -> ImageCache:
        entries: dict[str, dict[str, Any]] = {}
        if read and path.is_file():
            for line in path.read_bytes().splitlines():
                try:
                    entry = json.loads(line)
                    entries[entry["source"]] = entry
                except (ValueError, KeyError, TypeError):  # a line cut by a kill, or not ours
                    continue
        return cls(path if write else None, entries)

    def _current(self, source: Path) -> dict[str, Any] | None:
        """The entry of a source file, if the file is still the one it describes."""
        entry = self.entries.get(str(source))
        stat = source.stat()
        if entry is None or (entry.get("size"), entry.get("mtime_ns")) != (stat.st_size, stat.st_mtime_ns):
            return None
        return entry

    def lookup(self, source: Path, book_id: str) -> tuple[ImageFacts | None, Output | None]:
        entry = self._current(source)
        try:
            facts = ImageFacts(**entry["facts"]) if entry else None
            output = (entry or {}).get("outputs", {}).get(book_id)
            return facts, Output(**output) if output else None
        except (TypeError, KeyError, AttributeError):
            return None, None

    def put(self, source: Path, facts: ImageFacts, book_id: str, output: Output | None) -> None:
        entry = self._current(source)
        stat = source.stat()
        outputs = dict(entry.get("outputs", {})) if entry else {}
        if output is not None:
            outputs[book_id] = asdict(output)
        entry = {"source": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                 "facts": asdict(facts), "outputs": outputs}  # fmt: skip
        self.entries[str(source)] = entry
        if self.path is None:
            return
        if self._stream is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._stream = self.path.open("a", encoding="utf-8")
        self._stream.write(json.dumps(entry) + "\n")
        if time.monotonic() - self._flushed > 1.0:
            self.flush()

    def flush(self) -> None:
        if self._stream is not None:
            self._stream.flush()
        self._flushed = time.monotonic()

    def compact(self, uses: Iterable[tuple[Path, str]], root: Path) -> None:
        """One line per current source file, with the outputs of its current books that are still there.

        Content that would not change is not rewritten.
        """
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self.path is None:
            return
        books: dict[str, set[str]] = {}
        for path, book_id in uses:
            books.setdefault(str(path), set()).add(book_id)
        lines = []
        for source, users in sorted(books.items()):
            entry = self.entries.get(source)
            if entry is None:
                continue
            outputs = {book: output for book, output in sorted(entry.get("outputs", {}).items())
                       if book in users and Output(**output).present(root)}  # fmt: skip
            lines.append(json.dumps({**entry, "outputs": outputs}) + "\n")
        write_if_changed(self.path, "".join(lines))


def write_if_changed(path: Path, text: str) -> bool:
    """Atomically write ``text`` unless the file already holds exactly it; True when written."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic.write_text(path, text)
    return True


def _ignore_interrupt() -> None:
    """Workers leave Ctrl-C to the parent, which stops the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_jobs(jobs: Sequence[Job], workers: int, on_result: Callable[[int, JobResult], None]) -> None:
    """Run jobs over ``workers`` processes (in this one when 1), results handed back in order."""
    if workers <= 1 or len(jobs) < 2:
        for index, job in enumerate(jobs):
            on_result(index, run_job(job))
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None  # no re-import per worker
    pool = ProcessPoolExecutor(min(workers, len(jobs)), multiprocessing.get_context(method), _ignore_interrupt)
    chunk = max(1, min(16, len(jobs) // (workers * 8)))
    try:
        for index, result in enumerate(pool.map(run_job, jobs, chunksize=chunk)):
            on_result(index, result)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
