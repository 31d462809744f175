"""prepare-data: a raw corpus built here (bookdb, JSONL and CSV) with every kind of bad item."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cover_hpc.stages.prepare import images as prepare_images
from cover_hpc.stages.prepare import pipeline as prep
from cover_hpc.stages.prepare.pipeline import PrepareError, PrepareOptions, in_test_split, prepare

# ----------------------------------------------------------------------------------------------
# The corpus


def cover(seed: int, size: tuple[int, int] = (320, 480)) -> Image.Image:
    """A distinct smooth picture: a random 4x6 colour grid blown up to ``size`` (width, height)."""
    grid = np.random.default_rng(seed).integers(0, 256, (6, 4, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC)


def jpeg(image: Image.Image, quality: int = 92, **extra: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, **extra)
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` pixels and holds none: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def book_text(title: str, genres: str = "fantasy, magic, fantasy", description: str = "A tale. Of things!") -> str:
    return f"{title}\nHarbor Lane Press\nunused\nunused\n{genres}\n{description}\n"


def write_bookdb_book(
    root: Path, sub: str, book_id: str, text: str | bytes, image: bytes | None, ext: str = "jpg"
) -> None:
    text_file = root / "text" / sub / f"{book_id}.txt"
    text_file.parent.mkdir(parents=True, exist_ok=True)
    text_file.write_bytes(text if isinstance(text, bytes) else text.encode())
    if image is not None:
        image_file = root / "image" / sub / f"{book_id}.{ext}"
        image_file.parent.mkdir(parents=True, exist_ok=True)
        image_file.write_bytes(image)


GOOD_BOOKDB = [f"g{n:02d}" for n in range(1, 13)] + ["palette", "cmyk", "gray16", "rgba", "rotated"]
BOOKDB_DROPS = {  # book id -> reason
    "n1": "near-duplicate", "e2": "exact-duplicate", "e3": "exact-duplicate", "t1": "truncated-image",
    "m1": "missing-image", "mt1": "missing-title", "s1": "too-small", "l1": "wrong-orientation",
    "q1": "wrong-orientation", "u1": "not-utf8", "b1": "too-large", "b2": "too-large", "x1": "unreadable-image",
}  # fmt: skip
BOOKDB_KEPT = [*GOOD_BOOKDB, "n2", "e1"]


def make_bookdb(root: Path) -> Path:
    for index, book_id in enumerate(GOOD_BOOKDB[:12]):
        write_bookdb_book(root, "a" if index % 2 else "b", book_id, book_text(f"Title {book_id}"), jpeg(cover(index)))
    write_bookdb_book(root, "a", "palette", book_text("Palette"), png(cover(20).convert("P")), "png")
    write_bookdb_book(root, "a", "cmyk", book_text("Cmyk"), jpeg(cover(21).convert("CMYK")))
    sixteen = (np.asarray(cover(22).convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    write_bookdb_book(root, "a", "gray16", book_text("Gray"), png(Image.fromarray(sixteen)), "png")
    rgba = cover(23).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 128))
    write_bookdb_book(root, "b", "rgba", book_text("Alpha"), png(rgba), "png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait after a quarter turn
    write_bookdb_book(root, "b", "rotated", book_text("Rotated"), jpeg(cover(24, (480, 320)), exif=exif.tobytes()))
    # duplicates: n2 is n1 enlarged and re-encoded; e2 has e1's pixels as a PNG, e3 e1's bytes
    write_bookdb_book(root, "a", "n1", book_text("Near one"), jpeg(cover(30)))
    write_bookdb_book(root, "b", "n2", book_text("Near two"), jpeg(cover(30).resize((400, 600)), quality=80))
    e1 = jpeg(cover(31))
    write_bookdb_book(root, "a", "e1", book_text("Exact one"), e1)
    write_bookdb_book(root, "b", "e2", book_text("Exact two"), png(Image.open(io.BytesIO(e1)).convert("RGB")), "png")
    write_bookdb_book(root, "b", "e3", book_text("Exact three"), e1)
    # every other bad kind
    write_bookdb_book(root, "a", "t1", book_text("Truncated"), jpeg(cover(40))[:4000])
    write_bookdb_book(root, "a", "m1", book_text("No image"), None)
    write_bookdb_book(root, "a", "mt1", book_text(""), jpeg(cover(41)))
    write_bookdb_book(root, "a", "s1", book_text("Small"), jpeg(cover(42, (200, 300))))
    write_bookdb_book(root, "a", "l1", book_text("Landscape"), jpeg(cover(43, (480, 320))))
    write_bookdb_book(root, "a", "q1", book_text("Square"), jpeg(cover(44, (400, 400))))
    write_bookdb_book(root, "b", "u1", "Caf\xe9 title\n".encode("latin-1"), jpeg(cover(45)))
    write_bookdb_book(root, "b", "b1", book_text("Bomb"), png_header(20000, 20000), "png")
    write_bookdb_book(root, "b", "b2", book_text("Bomb warning"), png_header(10000, 10000), "png")
    write_bookdb_book(root, "b", "x1", book_text("Not an image"), b"this is no image")
    (root / "image" / "b" / "orphan.jpg").write_bytes(jpeg(cover(46)))
    return root


def make_jsonl(root: Path) -> Path:
    images = root / "img"
    images.mkdir(parents=True)
    for name, seed in (("j1", 50), ("j2", 51), ("j12", 52), ("j6", 53)):
        (images / f"{name}.jpg").write_bytes(jpeg(cover(seed)))

    def line(**fields: object) -> bytes:
        return json.dumps(fields).encode()

    lines = [
        line(
            id="j1", title="One", publisher="P", genres=["a", "b"], description="D.", author="Ann", image="img/j1.jpg"
        ),
        line(id="j2", title="Two", genres="x, y", image=str((images / "j2.jpg").resolve())),
        b'{"id": "j3", "title": broken',
        b'{"id": "j4", "title": "caf\xe9", "image": "img/j1.jpg"}',
        line(id="j1", title="Again", image="img/j1.jpg"),
        line(id="j6", title="", image="img/j6.jpg"),
        line(id="j7", title="No image"),
        b"[1, 2]",
        line(id="j9", title="Gone", image="img/nope.jpg"),
        b"   ",
        line(id="j11", title="Bad genres", genres=5, image="img/j1.jpg"),
        line(id=12, title="Number id", image="img/j12.jpg"),
    ]
    path = root / "books.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


JSONL_DROPS = {  # source line -> reason
    3: "malformed-record", 4: "not-utf8", 5: "duplicate-id", 6: "missing-title", 7: "missing-image",
    8: "malformed-record", 9: "missing-image", 11: "malformed-record",
}  # fmt: skip


def make_csv(root: Path) -> Path:
    (root / "covers").mkdir(parents=True)
    for name, seed in (("c1", 60), ("c2", 61), ("c5", 62)):
        (root / "covers" / f"{name}.jpg").write_bytes(jpeg(cover(seed)))
    rows = [
        b"id,title,publisher,genres,description,author,image",
        b'c1,First,Pub,"fantasy, magic",Plain.,Ann,covers/c1.jpg',
        b'c2,Second,Pub,"[""sci-fi"", ""space""]","Two\nlines.",Bo,covers/c2.jpg',
        b"c3,Third,Pub,too,many,fields,here,covers/c1.jpg",
        b"c4,Caf\xe9,Pub,,,,covers/c1.jpg",
        b"c5,Fifth,,,,,covers/c5.jpg",
    ]
    path = root / "books.csv"
    path.write_bytes(b"\n".join(rows) + b"\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("raw")
    return {"bookdb": make_bookdb(root / "bookdb"), "jsonl": make_jsonl(root / "jsonl"), "csv": make_csv(root / "csv")}


def options(source: Path, out: Path, **changes: object) -> PrepareOptions:
    settings: dict[str, object] = {"source": source, "out": out, "workers": 1, "test_fraction": 0.25}
    return PrepareOptions(**{**settings, **changes})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def bookdb_run(corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> prep.PrepareResult:
    return prepare(options(corpus["bookdb"], tmp_path_factory.mktemp("out") / "data", workers=2))


def rows_of(result: prep.PrepareResult) -> dict[str, dict[str, Any]]:
    """The metadata rows of both splits, by book id."""
    rows = {}
    for split in ("train_set", "test_set"):
        for line in result.paths.metadata(split).read_text().splitlines():
            row = json.loads(line)
            rows[row["book_id"]] = row
    return rows


def tree(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under a folder: its bytes and modification time."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# What is kept and dropped, and why


def test_bookdb_every_book_counted_with_its_reason(bookdb_run: prep.PrepareResult) -> None:
    summary = bookdb_run.summary
    counts = summary["counts"]
    assert counts["in"] == len(BOOKDB_KEPT) + len(BOOKDB_DROPS) == 32
    assert counts["kept"] == len(BOOKDB_KEPT) and counts["dropped"] == len(BOOKDB_DROPS)
    assert counts["train"] + counts["test"] == counts["kept"] and counts["test"] >= 1
    by_id = {d["id"]: d for d in summary["dropped"]}
    assert {book_id: d["reason"] for book_id, d in by_id.items()} == BOOKDB_DROPS
    expected = {}
    for reason in BOOKDB_DROPS.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert counts["dropped_by_reason"] == expected
    assert by_id["u1"]["source"] == "text/b/u1.txt" and "0xe9" in by_id["u1"]["detail"]
    assert by_id["m1"]["source"] == "text/a/m1.txt"
    assert "truncated" in by_id["t1"]["detail"]
    assert "decompression bomb" in by_id["b1"]["detail"] and "decompression bomb" in by_id["b2"]["detail"]
    assert "200x300" in by_id["s1"]["detail"]
    assert summary["images_without_text"] == ["image/b/orphan.jpg"]


def test_duplicate_groups_keep_the_largest_cover(bookdb_run: prep.PrepareResult) -> None:
    groups = {g["kept"]: g for g in bookdb_run.summary["duplicate_groups"]}
    assert set(groups) == {"e1", "n2"}
    assert groups["e1"]["kind"] == "exact" and [m["id"] for m in groups["e1"]["dropped"]] == ["e2", "e3"]
    assert groups["n2"]["kind"] == "near" and [m["id"] for m in groups["n2"]["dropped"]] == ["n1"]
    assert groups["n2"]["kept_member"]["width"] == 400 and groups["n2"]["dropped"][0]["dhash_distance"] <= 24


def test_output_is_imagefolder_with_every_column(bookdb_run: prep.PrepareResult) -> None:
    out = bookdb_run.paths
    rows = {}
    for split in ("train_set", "test_set"):
        lines = out.metadata(split).read_text().splitlines()
        for row in map(json.loads, lines):
            assert set(row) == {"file_name", "text", "book_id", "title", "publisher", "genres", "description", "author"}
            assert in_test_split(row["book_id"], 42, 0.25) == (split == "test_set")
            with Image.open(out.split(split) / row["file_name"]) as image:
                assert image.mode == "RGB"
                rows[row["book_id"]] = (row, image.size, image.format)
        assert sorted(p.name for p in out.split(split).iterdir()) == sorted(
            ["metadata.jsonl", *(json.loads(line)["file_name"] for line in lines)]
        )
    assert sorted(rows) == sorted(BOOKDB_KEPT)
    row, size, kind = rows["g01"]
    assert row["file_name"] == "g01.jpg" and kind == "JPEG" and size == (320, 480)
    assert row["text"] == ('Book Cover - This book title is "title g01". This book publisher is "harbor lane press". '
                           "This book genres are fantasy , magic , fantasy. a tale . of things !")  # fmt: skip
    assert row["genres"] == ["fantasy", "magic", "fantasy"] and row["description"] == "A tale. Of things!"
    assert rows["rotated"][1] == (320, 480) and rows["rotated"][2] == "PNG"  # turned upright
    assert rows["gray16"][2] == "PNG" and rows["palette"][0]["file_name"] == "palette.png"
    test_books = [json.loads(line) for line in out.test_books.read_text().splitlines()]
    assert [b["id"] for b in test_books] == sorted(r[0]["book_id"] for r in rows.values() if in_test_split(
        r[0]["book_id"], 42, 0.25))  # fmt: skip
    assert set(test_books[0]) == {"id", "title", "publisher", "genres", "description", "author"}


def test_report_has_counts_and_plots(bookdb_run: prep.PrepareResult) -> None:
    out = bookdb_run.paths
    assert json.loads(out.summary.read_text()) == bookdb_run.summary
    tokens = bookdb_run.summary["caption_tokens"]
    assert 10 < tokens["median"] < 75 and tokens["over_budget"] == 0 and "open_clip" in tokens["tokenizer"]
    assert bookdb_run.summary["top_genres"][0] == {"genre": "fantasy", "books": len(BOOKDB_KEPT)}
    page = out.html.read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "near-duplicate" in page and "text/b/u1.txt" in page


def test_jsonl_every_line_accounted(corpus: dict[str, Path], tmp_path: Path) -> None:
    result = prepare(options(corpus["jsonl"], tmp_path / "out"))
    summary = result.summary
    assert summary["format"] == "jsonl"
    assert summary["counts"]["in"] == 11 and summary["counts"]["kept"] == 3
    assert {int(d["source"].split(":")[1]): d["reason"] for d in summary["dropped"]} == JSONL_DROPS
    assert all(d["source"].startswith("books.jsonl:") for d in summary["dropped"])
    by_line = {d["source"]: d for d in summary["dropped"]}
    assert "line 3: not valid JSON" in by_line["books.jsonl:3"]["detail"]
    assert by_line["books.jsonl:5"]["id"] == "j1" and "books.jsonl:1" in by_line["books.jsonl:5"]["detail"]
    rows = list(rows_of(result).values())
    assert sorted(r["book_id"] for r in rows) == ["12", "j1", "j2"]
    assert next(r for r in rows if r["book_id"] == "j1")["author"] == "Ann"
    assert next(r for r in rows if r["book_id"] == "j2")["genres"] == ["x", "y"]


def test_csv_rows_with_their_line_numbers(corpus: dict[str, Path], tmp_path: Path) -> None:
    result = prepare(options(corpus["csv"].parent, tmp_path / "out", format="csv"))
    summary = result.summary
    assert summary["counts"] == {"in": 5, "kept": 3, "train": summary["counts"]["train"], "test": summary["counts"][
        "test"], "dropped": 2, "dropped_by_reason": {"malformed-record": 1, "not-utf8": 1}}  # fmt: skip
    # c2's description spans lines 3-4, so c3 starts on line 5
    assert [(d["source"], d["reason"]) for d in summary["dropped"]] == [
        ("books.csv:5", "malformed-record"), ("books.csv:6", "not-utf8")]  # fmt: skip
    assert "8 fields, the header has 7" in summary["dropped"][0]["detail"]
    rows = rows_of(result)
    assert rows["c1"]["genres"] == ["fantasy", "magic"] and rows["c2"]["genres"] == ["sci-fi", "space"]
    assert rows["c2"]["description"] == "Two lines."  # whitespace folded, as bookdb joins lines
    assert rows["c5"]["publisher"] == ""


# ----------------------------------------------------------------------------------------------
# Split, re-runs, interruptions, dry runs


def many_books(root: Path, ids: range) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for n in ids:
        image = root / f"{n}.jpg"
        if not image.exists():
            image.write_bytes(jpeg(cover(1000 + n)))
        lines.append(json.dumps({"id": f"book-{n}", "title": f"Book {n}", "image": image.name}))
    (root / "books.jsonl").write_text("\n".join(lines) + "\n")
    return root / "books.jsonl"


def splits(result: prep.PrepareResult) -> dict[str, str]:
    return {json.loads(line)["book_id"]: split for split in ("train_set", "test_set")
            for line in result.paths.metadata(split).read_text().splitlines()}  # fmt: skip


def test_split_is_stable_when_books_are_added(tmp_path: Path) -> None:
    source = many_books(tmp_path / "raw", range(40))
    first = prepare(options(source, tmp_path / "out", test_fraction=0.3, seed=7))
    before = splits(first)
    assert first.decoded == 40 and set(before.values()) == {"train_set", "test_set"}
    many_books(tmp_path / "raw", range(60))
    second = prepare(options(source, tmp_path / "out", test_fraction=0.3, seed=7))
    after = splits(second)
    assert {book: after[book] for book in before} == before
    assert second.decoded == 20 and second.reused == 40  # only the new books were decoded
    reached = second.summary["test_fraction"]["reached"]
    assert reached == sum(1 for s in after.values() if s == "test_set") / 60
    assert second.summary["test_fraction"]["asked"] == 0.3


def test_rerun_is_idempotent_and_decodes_nothing(bookdb_run: prep.PrepareResult, corpus: dict[str, Path]) -> None:
    root = bookdb_run.paths.root
    before = tree(root)
    again = prepare(options(corpus["bookdb"], root, workers=2))
    assert again.decoded == 0 and again.reused == len(BOOKDB_KEPT) + 3 + 7  # every image file (kept, duplicates, bad)
    assert tree(root) == before  # the same bytes, and nothing rewritten
    assert again.summary == bookdb_run.summary


def test_two_books_naming_one_image_stay_idempotent(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.jpg").write_bytes(jpeg(cover(70)))
    books = [{"id": book_id, "title": book_id, "image": "a.jpg"} for book_id in ("y", "x")]
    (tmp_path / "raw" / "books.jsonl").write_text("".join(json.dumps(b) + "\n" for b in books))
    first = prepare(options(tmp_path / "raw", tmp_path / "out"))
    assert [(d["id"], d["reason"]) for d in first.summary["dropped"]] == [("y", "exact-duplicate")]
    before = tree(tmp_path / "out")
    again = prepare(options(tmp_path / "raw", tmp_path / "out"))
    assert again.decoded == 0 and tree(tmp_path / "out") == before


def test_changed_seed_moves_files_without_decoding(corpus: dict[str, Path], tmp_path: Path) -> None:
    source = many_books(tmp_path / "raw", range(12))
    prepare(options(source, tmp_path / "out", seed=1))
    moved = prepare(options(source, tmp_path / "out", seed=2))
    assert moved.decoded == 0
    for split in ("train_set", "test_set"):  # exactly the listed files, each a whole JPEG
        listed = {json.loads(line)["file_name"] for line in moved.paths.metadata(split).read_text().splitlines()}
        assert {p.name for p in moved.paths.split(split).iterdir()} == listed | {"metadata.jsonl"}


def test_interrupted_run_leaves_no_dataset_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = many_books(tmp_path / "raw", range(10))
    real = prepare_images.run_job
    calls = {"n": 0}

    def dies_after_four(job: prepare_images.Job) -> prepare_images.JobResult:
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(prepare_images, "run_job", dies_after_four)
    with pytest.raises(KeyboardInterrupt):
        prepare(options(source, tmp_path / "out"))
    out = prep.DatasetPaths(tmp_path / "out")
    assert not out.metadata("train_set").exists() and not out.metadata("test_set").exists()
    images = [p for s in ("train_set", "test_set") for p in out.split(s).iterdir()]
    assert len(images) == 4 and not [p for p in images if p.name.startswith(".")]
    for path in images:
        with Image.open(path) as image:
            image.load()
    monkeypatch.setattr(prepare_images, "run_job", real)
    resumed = prepare(options(source, tmp_path / "out"))
    assert resumed.decoded == 6 and resumed.reused == 4 and resumed.summary["counts"]["kept"] == 10


def test_killed_run_leaves_whole_files_and_resumes(tmp_path: Path) -> None:
    """kill -9 in the middle: no metadata, no torn image under a real name; the next run finishes the job."""
    import signal
    import subprocess
    import sys
    import time

    raw = tmp_path / "raw"
    raw.mkdir()
    lines = []
    for n in range(160):
        (raw / f"{n}.jpg").write_bytes(jpeg(cover(2000 + n).convert("CMYK")))  # converted: written as PNG
        lines.append(json.dumps({"id": f"b{n}", "title": f"Book {n}", "image": f"{n}.jpg"}))
    (raw / "books.jsonl").write_text("\n".join(lines) + "\n")
    out = prep.DatasetPaths(tmp_path / "out")
    command = [sys.executable, "-m", "cover_hpc.cli", "prepare-data", str(raw), str(out.root), "--workers", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.cache.is_file() and out.cache.read_bytes().count(b"\n") >= 10:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.metadata("train_set").exists() and not out.metadata("test_set").exists()
    written = [
        p for split in ("train_set", "test_set") for p in out.split(split).iterdir() if not p.name.startswith(".")
    ]
    assert 10 <= len(written) < 160
    for path in written:
        with Image.open(path) as image:
            image.load()
    resumed = prepare(options(raw, out.root, workers=2))
    assert resumed.summary["counts"]["kept"] == 160 and resumed.reused >= 10 and resumed.decoded <= 150
    assert sorted(p.name for p in out.split("train_set").iterdir() if p.name.startswith(".")) == []


def test_dry_run_writes_nothing(corpus: dict[str, Path], bookdb_run: prep.PrepareResult, tmp_path: Path) -> None:
    result = prepare(options(corpus["bookdb"], tmp_path / "out", dry_run=True))
    assert not (tmp_path / "out").exists()
    assert result.summary["counts"] == bookdb_run.summary["counts"]
    assert result.summary["dropped"] == bookdb_run.summary["dropped"]
    assert "dry run, nothing written" in prep.describe(result) and "text/b/u1.txt: not-utf8" in prep.describe(result)


# ----------------------------------------------------------------------------------------------
# The output as its readers read it


def test_datasets_imagefolder_loads_both_splits(bookdb_run: prep.PrepareResult) -> None:
    import datasets

    loaded = datasets.load_dataset("imagefolder", data_dir=str(bookdb_run.paths.root))
    counts = bookdb_run.summary["counts"]
    assert {name: len(split) for name, split in loaded.items()} == {"train": counts["train"], "test": counts["test"]}
    columns = {"image", "text", "book_id", "title", "publisher", "genres", "description", "author"}
    assert set(loaded["train"].column_names) == columns and set(loaded["test"].column_names) == columns
    assert loaded["train"][0]["image"].mode == "RGB"


def test_trainer_scan_reads_the_output(bookdb_run: prep.PrepareResult) -> None:
    from cover_hpc.spec.schema import DataConfig
    from cover_hpc.store.data import scan

    out = bookdb_run.paths
    config = DataConfig(train_dir=str(out.split("train_set")), test_dir=str(out.split("test_set")))
    samples, bad = scan(out.split("train_set"), config, decode=True)
    assert bad == [] and len(samples) == bookdb_run.summary["counts"]["train"]
    assert all(s.caption.startswith("Book Cover - This book title is") for s in samples)


# ----------------------------------------------------------------------------------------------
# Bad input: clear errors through the command, never a traceback


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from cover_hpc.cli import main

    code = main(["prepare-data", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_command_prints_counts_and_progress_lines(corpus: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    code, out, err = run_cli(capsys, str(corpus["jsonl"]), str(tmp_path / "out"), "--workers", "2")
    assert code == 0 and "3 of 11 books kept" in out and "report" in out
    assert "prepare-data: decoding images 3/3 (100%)" in err  # not a terminal: log lines, no bar


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: [str(tmp / "nowhere"), str(tmp / "out")], "source not found"),
        (lambda tmp: [str(tmp), str(tmp.parent / "out-empty")], "no books in"),
        (lambda tmp: [str(tmp), str(tmp / "out")], "is inside SOURCE"),
    ],
)
def test_bad_paths_are_clear_errors(make: object, message: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    if message == "is inside SOURCE":
        many_books(tmp_path, range(1))
    code, _, err = run_cli(capsys, *make(tmp_path))  # type: ignore[operator]
    assert code == 1 and message in err and "Traceback" not in err


def test_unknown_format_is_refused(corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(capsys, str(corpus["jsonl"]), str(tmp_path / "out"), "--format", "xml")
    assert exit_info.value.code == 2 and "invalid choice: 'xml'" in capsys.readouterr().err
    with pytest.raises(PrepareError, match="unknown format 'xml'"):
        prepare(options(corpus["jsonl"], tmp_path / "out", format="xml"))
    weird = tmp_path / "books.txt"
    weird.write_text("{}\n")
    with pytest.raises(PrepareError, match="give --format jsonl or csv"):
        prepare(options(weird, tmp_path / "out"))


def test_out_holding_another_dataset_needs_overwrite(corpus: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "out"
    assert run_cli(capsys, str(corpus["jsonl"]), str(out))[0] == 0
    code, _, err = run_cli(capsys, str(corpus["csv"]), str(out))
    assert code == 1 and "holds a dataset prepared from" in err and "--overwrite" in err
    code, printed, _ = run_cli(capsys, str(corpus["csv"]), str(out), "--overwrite")
    assert code == 0 and "3 of 5 books kept" in printed
    assert json.loads(prep.DatasetPaths(out).summary.read_text())["format"] == "csv"
    foreign = tmp_path / "foreign"
    (foreign / "train_set").mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, str(corpus["csv"]), str(foreign))
    assert code == 1 and "did not write (notes.txt, train_set)" in err
    assert run_cli(capsys, str(corpus["csv"]), str(foreign), "--overwrite")[0] == 0
    assert (foreign / "notes.txt").read_text() == "mine"  # only prepare-data's own paths are replaced


def test_unusable_files_are_clear_errors(tmp_path: Path) -> None:
    utf16 = tmp_path / "utf16" / "books.jsonl"
    utf16.parent.mkdir()
    utf16.write_text('{"id": "a"}\n', encoding="utf-16")
    with pytest.raises(PrepareError, match="UTF-16"):
        prepare(options(utf16, tmp_path / "out"))
    headless = tmp_path / "headless.csv"
    headless.write_text("title,image\nA,a.jpg\n")
    with pytest.raises(PrepareError, match="name an 'id' column"):
        prepare(options(headless, tmp_path / "out2"))
    with pytest.raises(PrepareError, match="--test-fraction must be in"):
        prepare(options(headless, tmp_path / "out3", test_fraction=1.5))


def test_output_names_keep_ids_apart() -> None:
    assert prep.output_stem("book-1") == "book-1"
    names = {prep.output_stem(book_id) for book_id in ("a/b", "a_b", "a:b", "書名", "書目", "." * 3)}
    assert len(names) == 6 and all("/" not in n and not n.startswith(".") for n in names)


def test_split_is_a_threshold_on_a_hash() -> None:
    held_out = [in_test_split(f"id-{n}", 42, 0.08) for n in range(20000)]
    assert abs(sum(held_out) / len(held_out) - 0.08) < 0.01
    assert not any(in_test_split(f"id-{n}", 42, 0.0) for n in range(100))


@pytest.fixture
def _three_cpus(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2}, raising=False)
    yield


def test_default_workers_are_the_cpus_this_process_may_use(_three_cpus: None) -> None:
    assert prep.default_workers() == 3
