"""Book captions: the original's template, shared by data building, training, validation and inference.

The template (from the original research code)::

    Book Cover - This book title is "<title>". This book publisher is "<publisher>".
    This book genres are <g1 , g2 , ...>. <description>

Fields are lower-cased and punctuation in the description is spaced out (" , ", " ."), as the
captions the original model was trained on were.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

_PUNCT_RE = re.compile(r"\s*([,.;:!?])\s*")
_SPACE_RE = re.compile(r"\s+")


@dataclass(frozen=True)
class Book:
    """One book as the books files and caption template know it."""

    book_id: str
    title: str
    publisher: str = ""
    genres: tuple[str, ...] = ()
    description: str = ""
    prompt: str | None = None  # a raw prompt used as given instead of the template
    author: str = ""  # typeset on finished covers; not part of the caption template

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Book:
        """A book from a JSON object; raises ValueError naming the missing or bad field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        book_id = data.get("id")
        if book_id is None or str(book_id).strip() == "":
            raise ValueError("missing field 'id'")
        prompt = data.get("prompt")
        title = data.get("title")
        if prompt is None and not title:
            raise ValueError(f"book {book_id!r}: needs 'title' (with publisher, genres, description) or 'prompt'")
        genres = data.get("genres", ())
        if isinstance(genres, str):
            genres = [g for g in (part.strip() for part in genres.split(",")) if g]
        if not isinstance(genres, Sequence) or not all(isinstance(g, str) for g in genres):
            raise ValueError(f"book {book_id!r}: 'genres' must be a list of strings")
        return cls(
            book_id=str(book_id),
            title=str(title or ""),
            publisher=str(data.get("publisher") or ""),
            genres=tuple(genres),
            description=str(data.get("description") or ""),
            prompt=str(prompt) if prompt is not None else None,
            author=str(data.get("author") or ""),
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.book_id,
            "title": self.title,
            "publisher": self.publisher,
            "genres": list(self.genres),
            "description": self.description,
        }
        if self.prompt is not None:
            data["prompt"] = self.prompt
        if self.author:
            data["author"] = self.author
        return data


@dataclass(frozen=True)
class BooksFile:
    """The books of a JSONL file, and what was wrong with the lines that were skipped."""

    books: list[Book]
    problems: list[str]


def read_books(path: Path) -> BooksFile:
    """Read a books JSONL file; a bad line is reported with its number and skipped, the rest kept."""
    if not path.is_file():
        raise FileNotFoundError(f"books file not found: {path} (infer.books_file or validate.prompts)")
    books: list[Book] = []
    problems: list[str] = []
    seen: set[str] = set()
    # bytes, split before decoding: a line that is not UTF-8 is skipped alone, a UTF-8 byte-order
    # mark (Windows editors write one) is dropped, and U+2028 inside a JSON string cuts no line
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            byte, column = error.object[error.start], error.start + 1
            problems.append(f"{path}:{number}: bytes that are not UTF-8 (0x{byte:02x} at byte {column}); line skipped")
            continue
        if not line.strip():
            continue
        try:
            book = Book.from_json(json.loads(line))
        except json.JSONDecodeError as error:
            problems.append(f"{path}:{number}: not valid JSON ({error.msg}); line skipped")
            continue
        except ValueError as error:
            problems.append(f"{path}:{number}: {error}; line skipped")
            continue
        if book.book_id in seen:
            problems.append(f"{path}:{number}: duplicate id {book.book_id!r}; line skipped")
            continue
        seen.add(book.book_id)
        books.append(book)
    if not books:
        raise ValueError(f"{path} holds no usable books" + (f": {problems[0]}" if problems else " (empty file)"))
    return BooksFile(books, problems)


def _plain(text: str) -> str:
    return _SPACE_RE.sub(" ", text.replace('"', "")).strip().lower()


def normalize_description(text: str) -> str:
    """Lower-case, drop double quotes, and space out punctuation: ``"Hi, there."`` -> ``hi , there .``"""
    spaced = _PUNCT_RE.sub(lambda m: f" {m.group(1)} ", _plain(text))
    return _SPACE_RE.sub(" ", spaced).strip()


def book_caption(book: Book, with_description: bool = True) -> str:
    """The training caption of a book (its raw prompt when it has one)."""
    if book.prompt is not None:
        return book.prompt
    genres = " , ".join(_plain(g) for g in book.genres)
    caption = (
        f'Book Cover - This book title is "{_plain(book.title)}". '
        f'This book publisher is "{_plain(book.publisher)}". '
        f"This book genres are {genres}."
    )
    description = normalize_description(book.description) if with_description else ""
    return f"{caption} {description}" if description else caption


def short_caption(book: Book) -> str:
    """Title and genres only: short enough for a 77-token CLIP metric to see whole."""
    if book.prompt is not None and not book.title:
        return book.prompt
    genres = ", ".join(_plain(g) for g in dict.fromkeys(book.genres))
    return f'Book cover of "{_plain(book.title)}", {genres}.' if genres else f'Book cover of "{_plain(book.title)}".'
