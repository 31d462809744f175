"""Book records from a raw source: a bookdb folder, or JSONL or CSV files
(see :mod:`cover_hpc.stages.prepare.pipeline`).

Every line, row or text file becomes a :class:`Record`, or a :class:`Drop` that says where it is and
why it holds no usable record; nothing here raises for bad content, only for a source that cannot
be read at all (:class:`PrepareError`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cover_hpc.store.captions import Book

FORMATS = ("bookdb", "jsonl", "csv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


class PrepareError(ValueError):
    """Input that cannot be prepared; the message names the file or option and the fix."""


@dataclass(frozen=True)
class Record:
    """One book as the source gives it."""

    order: int  # position in the source (files sorted, then lines): the order of every listing
    where: str  # "text/a/1.txt" or "books.jsonl:3"
    book_id: str
    title: str
    publisher: str
    genres: tuple[str, ...]
    description: str
    author: str
    image: Path | None
    image_ref: str  # the image as the source names it

    def book(self) -> Book:
        return Book(self.book_id, self.title, self.publisher, self.genres, self.description)


@dataclass(frozen=True)
class Drop:
    """A book left out, where it came from, and why."""

    order: int
    where: str
    reason: str  # a key of REASONS
    detail: str
    book_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.book_id, "source": self.where, "reason": self.reason, "detail": self.detail}


def detect_format(source: Path, wanted: str) -> str:
    """The source format: ``wanted``, or for ``auto`` the one the file name or folder shows."""
    if not source.exists():
        raise PrepareError(f"source not found: {source}")
    if wanted != "auto":
        return wanted
    if source.is_file():
        suffix = source.suffix.lower()
        if suffix in (".jsonl", ".csv"):
            return suffix[1:]
        raise PrepareError(f"cannot tell the format of {source} from its name; give --format jsonl or csv")
    found = [name for name, present in (("bookdb", (source / "text").is_dir()),
             ("jsonl", any(source.glob("*.jsonl"))), ("csv", any(source.glob("*.csv")))) if present]  # fmt: skip
    if len(found) > 1:
        raise PrepareError(f"{source} holds {' and '.join(found)} sources; choose one with --format")
    if not found:
        raise PrepareError(f"no books in {source}: expected text/<sub>/<id>.txt with image/<sub>/<id>.jpg "
                           "(bookdb), or *.jsonl or *.csv files")  # fmt: skip
    return found[0]


def source_files(source: Path, fmt: str) -> list[Path]:
    if source.is_file():
        return [source]
    if fmt == "bookdb":
        return sorted((source / "text").rglob("*.txt"))
    return sorted(p for p in source.glob(f"*.{fmt}") if p.is_file())


def read_records(source: Path, fmt: str) -> tuple[list[Record], list[Drop], list[str]]:
    """Every record of the source, every line or file that holds none, and (bookdb) unmatched images."""
    files = source_files(source, fmt)
    if not files:
        folder = source / "text" if fmt == "bookdb" else source
        raise PrepareError(f"no books in {folder}: no {'*.txt' if fmt == 'bookdb' else '*.' + fmt} files")
    base = source if source.is_dir() else source.parent
    items: list[Record | Drop] = []
    unmatched: list[str] = []
    if fmt == "bookdb":
        images = _bookdb_images(source / "image")
        for path in files:
            key = (path.parent.relative_to(source / "text").as_posix(), path.stem)
            items.append(_bookdb_record(len(items), path, source, images.pop(key, None)))
        unmatched = sorted(p.relative_to(source).as_posix() for p in images.values())
    else:
        reader = _jsonl_lines if fmt == "jsonl" else _csv_rows
        for file in files:
            for where, data in reader(file, file.relative_to(base).as_posix()):
                order = len(items)
                items.append(_drop_at(order, data) if isinstance(data, Drop) else _mapped(order, where, data, file))
    if not items:
        raise PrepareError(f"no books in {source}: its {fmt} files hold no records")
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Drop)], unmatched


def _drop_at(order: int, drop: Drop) -> Drop:
    return replace(drop, order=order)


def _bookdb_images(folder: Path) -> dict[tuple[str, str], Path]:
    """Image files by (sub-folder, id); where one id has several, the first suffix of IMAGE_SUFFIXES."""
    found: dict[tuple[str, str], Path] = {}
    if not folder.is_dir():
        return found
    paths = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    for path in sorted(paths, key=lambda p: (IMAGE_SUFFIXES.index(p.suffix.lower()), p)):
        found.setdefault((path.parent.relative_to(folder).as_posix(), path.stem), path)
    return found


def _text(data: bytes) -> str:
    """UTF-8 text (a byte-order mark dropped); raises UnicodeDecodeError for anything else."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UnicodeDecodeError("utf-8", data, 0, 2, "a UTF-16 byte-order mark: UTF-16 text, save it as UTF-8")
    return data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")


def _not_utf8(error: UnicodeDecodeError, whole_file: bool = False) -> str:
    """Where the first byte that is not UTF-8 is (and, in a whole file, on which line)."""
    if error.reason.startswith("a UTF-16"):
        return error.reason
    newlines = error.object[: error.start].count(b"\n")
    line = f" (line {newlines + 1})" if whole_file else ""
    return f"byte 0x{error.object[error.start]:02x} at byte {error.start + 1}{line} is not UTF-8"


def _bookdb_record(order: int, path: Path, root: Path, image: Path | None) -> Record | Drop:
    where = path.relative_to(root).as_posix()
    try:
        text = _text(path.read_bytes())
    except UnicodeDecodeError as error:
        return Drop(order, where, "not-utf8", _not_utf8(error, whole_file=True), path.stem)
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n")] + [""] * 6
    description = " ".join(part for part in lines[5:] if part)
    return Record(order, where, path.stem, lines[0], lines[1], _split_genres(lines[4]), description, "", image,
                  image.relative_to(root).as_posix() if image else "")  # fmt: skip


def _split_genres(text: str) -> tuple[str, ...]:
    return tuple(tag for tag in (part.strip() for part in text.split(",")) if tag)


def _jsonl_lines(path: Path, label: str) -> Iterator[tuple[str, dict[str, Any] | Drop]]:
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise PrepareError(f"{path} is UTF-16 (or UTF-32) text; save it as UTF-8")
    # split the bytes: a line that is not UTF-8 is dropped alone, U+2028 in a string cuts nothing
    for number, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").splitlines(), start=1):
        where = f"{label}:{number}"
        try:
            line = raw.decode("utf-8")
            value = json.loads(line) if line.strip() else None
        except UnicodeDecodeError as error:
            yield where, Drop(0, where, "not-utf8", f"line {number}: {_not_utf8(error)}")
            continue
        except json.JSONDecodeError as error:
            yield where, Drop(0, where, "malformed-record", f"line {number}: not valid JSON ({error.msg} at column "
                                                            f"{error.colno})")  # fmt: skip
            continue
        if isinstance(value, dict):
            yield where, value
        elif value is not None:
            yield where, Drop(0, where, "malformed-record", f"line {number}: a JSON {type(value).__name__}, "
                                                            "not an object")  # fmt: skip


_UNDECODED = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of bytes that are not UTF-8


def _csv_rows(path: Path, label: str) -> Iterator[tuple[str, dict[str, Any] | Drop]]:
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise PrepareError(f"{path} is UTF-16 (or UTF-32) text; save it as UTF-8")
    # a record may span lines (quoted line breaks): decode the whole file, bad bytes kept as escapes
    text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or _UNDECODED.search("".join(header)) or "id" not in header:
        got = ", ".join(repr(name[:30]) for name in (header or [])[:8]) or "nothing"
        raise PrepareError(f"{path}:1: the header must be UTF-8 and name an 'id' column (with title, publisher, "
                           f"genres, description, author, image); it has {got}")  # fmt: skip
    while True:
        number = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield f"{label}:{number}", Drop(0, f"{label}:{number}", "malformed-record", f"line {number}: {error}")
            continue
        yield from _csv_row(f"{label}:{number}", number, header, values)


def _csv_row(where: str, number: int, header: list[str], values: list[str]) -> Iterator[tuple[str, Any]]:
    if not values or values == [""]:
        return
    bad = _UNDECODED.search("".join(values))
    if bad:
        yield where, Drop(0, where, "not-utf8", f"line {number}: byte 0x{ord(bad.group()) - 0xDC00:02x} is not UTF-8")
    elif len(values) != len(header):
        yield where, Drop(0, where, "malformed-record", f"line {number}: {len(values)} fields, the header has "
                                                        f"{len(header)}")  # fmt: skip
    else:
        yield where, dict(zip(header, values, strict=True))


def _mapped(order: int, where: str, data: Mapping[str, Any], file: Path) -> Record | Drop:
    """The record of a JSONL object or CSV row."""
    book_id = data.get("id")
    if isinstance(book_id, (dict, list)) or book_id is None or str(book_id).strip() == "":
        return Drop(order, where, "malformed-record", "no 'id' (or not a string or number)")
    book_id = str(book_id).strip()
    fields: dict[str, str] = {}
    for name in ("title", "publisher", "description", "author"):
        value = data.get(name)
        if isinstance(value, (dict, list)):
            return Drop(order, where, "malformed-record", f"'{name}' must be text, got a JSON {type(value).__name__}",
                        book_id)  # fmt: skip
        fields[name] = "" if value is None else " ".join(str(value).split())
    genres = _genres(data.get("genres"))
    if genres is None:
        return Drop(order, where, "malformed-record", "'genres' must be a list of strings or comma-separated text",
                    book_id)  # fmt: skip
    image = data.get("image")
    ref = image.strip() if isinstance(image, str) else ""
    path = (file.parent / ref) if ref else None
    return Record(order, where, book_id, fields["title"], fields["publisher"], genres, fields["description"],
                  fields["author"], path, ref)  # fmt: skip


def _genres(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return ()
    if isinstance(value, str):
        if value.lstrip().startswith("["):  # a JSON list in a CSV cell
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return None
        else:
            return _split_genres(value)
    if isinstance(value, list) and all(isinstance(tag, str) for tag in value):
        return tuple(" ".join(tag.split()) for tag in value if tag.strip())
    return None


def screen(records: Sequence[Record]) -> tuple[list[Record], list[Drop]]:
    """Records with an id of their own, a title and an image file; the rest as drops."""
    first: dict[str, str] = {}
    usable: list[Record] = []
    drops: list[Drop] = []
    for record in records:
        if record.book_id in first:
            detail = f"id {record.book_id!r} already used by {first[record.book_id]}"
            drops.append(Drop(record.order, record.where, "duplicate-id", detail, record.book_id))
            continue
        first[record.book_id] = record.where
        problem = _record_problem(record)
        if problem:
            drops.append(Drop(record.order, record.where, problem[0], problem[1], record.book_id))
        else:
            usable.append(record)
    return usable, drops


def _record_problem(record: Record) -> tuple[str, str] | None:
    if not record.title.strip():
        return "missing-title", "the title is empty"
    if record.image is None:
        return "missing-image", "no image named" if record.image_ref == "" else "no image file"
    if not record.image.is_file():
        return "missing-image", f"{record.image_ref or record.image}: no such file"
    return None
