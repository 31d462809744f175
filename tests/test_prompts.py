"""The book-caption template of the original research code."""

from __future__ import annotations

import pytest

from cover_hpc.prompts import Book, book_caption, normalize_description, short_caption

ORIGINAL = (
    'Book Cover - This book title is "love and mistletoe". This book publisher is "beaverstone press llc". '
    "This book genres are romance , contemporary , holiday , christmas , holiday. "
    "an alternate cover edition can be found here . stand alone christmas novella ."
)


def test_template_matches_the_original_captions() -> None:
    book = Book(
        book_id="1",
        title="Love and Mistletoe",
        publisher="Beaverstone Press LLC",
        genres=("Romance", "Contemporary", "Holiday", "Christmas", "Holiday"),
        description="An alternate cover edition can be found here. Stand alone Christmas novella.",
    )
    assert book_caption(book) == ORIGINAL


def test_description_punctuation_spaced() -> None:
    assert normalize_description('He said, "Run."  Then  left!') == "he said , run . then left !"


def test_raw_prompt_used_as_given() -> None:
    assert book_caption(Book(book_id="x", title="", prompt="A Red Cover")) == "A Red Cover"


def test_short_caption_dedupes_genres() -> None:
    book = Book(book_id="1", title="Dune", genres=("science fiction", "classics", "science fiction"))
    assert short_caption(book) == 'Book cover of "dune", science fiction, classics.'


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"title": "x"}, "missing field 'id'"),
        ({"id": 3}, "needs 'title'"),
        ({"id": 3, "title": "x", "genres": [1]}, "'genres' must be a list of strings"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_bad_books_name_the_field(data: object, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Book.from_json(data)  # type: ignore[arg-type]
