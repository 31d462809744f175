"""The book-caption template of the original research code."""

from __future__ import annotations

from pathlib import Path

import pytest

from cover_hpc.store.captions import Book, book_caption, normalize_description, read_books, short_caption

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


# --------------------------------------------------------------------------------------------
# Books files: encodings, and one image name per book id.


def test_books_file_with_a_byte_order_mark_keeps_its_first_book(tmp_path: Path) -> None:
    path = tmp_path / "books.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "1", "title": "First"}\r\n{"id": "2", "title": "Second"}\r\n')
    books = read_books(path)
    assert [b.book_id for b in books.books] == ["1", "2"] and not books.problems


def test_undecodable_books_line_is_reported_by_number_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "books.jsonl"
    path.write_bytes(
        b'{"id": "1", "title": "Caf\xc3\xa9"}\n{"id": "2", "title": "Caf\xe9"}\n'
        b'{"id": "3", "title": "line\xe2\x80\xa8separator"}\n'  # U+2028 inside a string is no line break
    )
    books = read_books(path)
    assert [(b.book_id, b.title) for b in books.books] == [("1", "Café"), ("3", "line\u2028separator")]
    assert books.problems == [f"{path}:2: bytes that are not UTF-8 (0xe9 at byte 26); line skipped"]


@pytest.mark.parametrize(
    "ids",
    [("a/b", "a_b"), ("日本の本", "中国の本"), ("x" * 299 + "1", "x" * 299 + "2"), ("", " "), ("..", "._")],
)
def test_image_names_are_unique_per_id_and_valid_file_names(ids: tuple[str, str]) -> None:
    from cover_hpc.stages.infer import image_name

    names = [image_name(Book(book_id=book_id, title="t")) for book_id in ids]
    assert names[0] != names[1]
    for name, book_id in zip(names, ids, strict=True):
        assert "/" not in name and "\0" not in name and name not in (".", "..")
        assert len(name.encode()) <= 255 and name.endswith(".png")
        assert name == image_name(Book(book_id=book_id, title="other"))  # the id alone decides


def test_image_name_is_a_readable_prefix_and_a_hash_of_the_id() -> None:
    import hashlib

    from cover_hpc.stages.infer import image_name

    assert image_name(Book(book_id="a/b", title="t")) == f"a_b-{hashlib.sha256(b'a/b').hexdigest()[:10]}.png"
    assert image_name(Book(book_id="y" * 300, title="t")).startswith("y" * 80 + "-")


def test_a_spec_naming_a_books_file_with_a_non_utf8_line_loads(tmp_path: Path) -> None:
    """The shard check counts lines on bytes; the bad line is reported by read_books, with its number."""
    from cover_hpc.spec.load import load_spec
    from cover_hpc.store.captions import read_books

    books = tmp_path / "books.jsonl"
    books.write_bytes(
        b'\xef\xbb\xbf{"id": "a", "title": "One"}\n{"id": "b", "title": "caf\xe9"}\n{"id": "c", "title": "T"}\n'
    )
    spec = load_spec(None, [f"infer.books_file={books}", "infer.shards=3"])
    assert spec.infer.shards == 3
    parsed = read_books(books)
    assert [b.book_id for b in parsed.books] == ["a", "c"] and any(":2:" in p for p in parsed.problems)
