"""Book captions: the original's template, shared by data building, training, validation and inference.

The template (from the original research code)::

    Book Cover - This book title is "<title>". This book publisher is "<publisher>".
    This book genres are <g1 , g2 , ...>. <description>

Fields are lower-cased and punctuation in the description is spaced out (" , ", " ."), as the
captions the original model was trained on were.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
        return data


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
