"""The OCR module: title normalisation and scores with known values, the engines reading back titles
typeset on known images, and the errors for a missing engine."""

from __future__ import annotations

import importlib.abc
import random
import shutil
import sys
from pathlib import Path
from typing import cast

import pytest
from PIL import Image, ImageDraw, ImageFont

from cover_hpc.demo.covers import font_path
from cover_hpc.demo.title_images import background, demo_art, typeset
from cover_hpc.metrics import ocr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Café Élan", "cafe elan"),
        ("  The   NIGHT'S\tGarden:  a Novel!  ", "the nights garden a novel"),
        ("Dvořák in São Paulo, 1984", "dvorak in sao paulo 1984"),
        ("Łódź, Ørsted & Straße", "lodz orsted strasse"),
        ("ÆTHER Œuvre Þing Đurđevac Ðóttir ışık", "aether oeuvre thing durdevac dottir isik"),
        ("ﬁre — “quoted” …", "fire quoted"),
        ("", ""),
        ("¡¿ — !?", ""),
    ],
)
def test_normalise_title(text: str, expected: str) -> None:
    assert ocr.normalise_title(text) == expected


@pytest.mark.parametrize(("a", "b", "distance"), [("kitten", "sitting", 3), ("", "abc", 3), ("flaw", "lawn", 2),
                                                   ("same", "same", 0)])  # fmt: skip
def test_levenshtein(a: str, b: str, distance: int) -> None:
    assert ocr.levenshtein(a, b) == distance == ocr.levenshtein(b, a)


def test_title_similarity_and_exact_match() -> None:
    assert ocr.title_similarity("", "") == 1.0
    assert ocr.title_similarity("?!", " ") == 1.0  # both empty once normalised
    assert ocr.title_similarity("Dune", "") == 0.0
    assert ocr.title_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert ocr.title_similarity("The Café", "THE CAFE!") == 1.0
    assert ocr.title_similarity("The Cafe", "The Cafe 42") == pytest.approx(1 - 3 / 11)
    assert ocr.exact_match("Crème Brûlée: 2049", "creme brulee 2049")
    assert ocr.exact_match("", "...")
    assert not ocr.exact_match("The Cafe", "The Cafes")


def test_reading_order_groups_lines_top_to_bottom_then_left_to_right() -> None:
    boxes = [(200, 240, 50, "Garden"), (100, 150, 300, "Night"), (105, 148, 20, "The"), (198, 238, 10, "Secret")]
    assert ocr._reading_order(boxes) == "The Night Secret Garden"


class FakeEngine:
    name = "fake"

    def __init__(self, reads: list[str]) -> None:
        self.reads = iter(reads)

    def read(self, image: Image.Image) -> str:
        return next(self.reads)


def test_ocr_title_scores() -> None:
    images = [Image.new("RGB", (8, 8))] * 3
    scores = ocr.ocr_title_scores(FakeEngine(["The Café", "kitten", ""]), images, ["the cafe", "sitting", "Dune"])
    assert scores["engine"] == "fake" and scores["count"] == 3
    assert scores["mean_similarity"] == pytest.approx((1 + (1 - 3 / 7) + 0) / 3)
    assert scores["exact_match_rate"] == pytest.approx(1 / 3)
    assert [row["exact"] for row in scores["per_image"]] == [True, False, False]
    assert scores["per_image"][1] == {"title": "sitting", "read": "kitten", "similarity": pytest.approx(4 / 7),
                                      "exact": False}  # fmt: skip
    empty = ocr.ocr_title_scores(FakeEngine([]), [], [])
    assert empty["count"] == 0 and empty["mean_similarity"] is None and empty["exact_match_rate"] is None
    with pytest.raises(ValueError, match="2 images but 1 titles"):
        ocr.ocr_title_scores(FakeEngine([]), images[:2], ["one"])


def test_missing_engines_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ocr.OcrUnavailable, match=r"rapidocr-onnxruntime.*requirements\.txt"):
        ocr.load_ocr()
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ocr.OcrUnavailable, match="apt-get install tesseract-ocr tesseract-ocr-eng"):
        ocr.load_ocr("tesseract")
    with pytest.raises(ValueError, match="unknown OCR engine 'easyocr'; one of auto, rapidocr, tesseract"):
        ocr.load_ocr("easyocr")


class _NoLibGL(importlib.abc.MetaPathFinder):
    """Makes importing rapidocr fail as it does where opencv-python's libGL.so.1 is missing."""

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name == "rapidocr_onnxruntime":
            raise ImportError("libGL.so.1: cannot open shared object file: No such file or directory")


def test_missing_libgl_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "rapidocr_onnxruntime", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_NoLibGL(), *sys.meta_path])
    with pytest.raises(ocr.OcrUnavailable, match="install Debian's libgl1"):
        ocr.load_ocr("rapidocr")


# Known titles on known images (seeded), at a cover size: clean ones on a band, busy ones straight
# over a gradient and over the demo covers' art, set black or white by the background's mean.
CLEAN = [
    ("The Café at 42 Rue Dvořák", "noise"),
    ("SILENT EMPIRE: 1984", "shapes"),
    ("a map of the forgotten kingdom and the last queen's letters", "gradient"),
    ("Zürich Nights", "demo"),
]
BUSY = [("The Lantern Keeper", "gradient"), ("Señor Orchard 2049", "demo"), ("Winter Harbor", "gradient")]
SIZE = (768, 1024)


def _known_image(title: str, kind: str, style: str, art: list[Image.Image], index: int) -> Image.Image:
    rng = random.Random(f"ocr-test-{index}")
    base = background(kind, SIZE, rng, art)
    return typeset(base, title, style, rng, font_path(bold=True, serif=index % 2 == 1))


@pytest.fixture(scope="module")
def art(demo_data_dir: Path) -> list[Image.Image]:
    return demo_art(demo_data_dir)


@pytest.fixture(scope="module")
def rapidocr() -> ocr.OcrEngine:
    return ocr.load_ocr("auto", threads=2)


def test_rapidocr_reads_back_known_titles(rapidocr: ocr.OcrEngine, art: list[Image.Image]) -> None:
    assert rapidocr.name == "rapidocr"
    clean = [_known_image(title, kind, "easy", art, i) for i, (title, kind) in enumerate(CLEAN)]
    scores = ocr.ocr_title_scores(rapidocr, clean, [title for title, _ in CLEAN])
    for row in scores["per_image"]:
        assert row["similarity"] >= 0.9, row
    busy = [_known_image(title, kind, "busy", art, i) for i, (title, kind) in enumerate(BUSY)]
    scores = ocr.ocr_title_scores(rapidocr, busy, [title for title, _ in BUSY])
    assert scores["mean_similarity"] >= 0.9, scores["per_image"]


def test_rapidocr_reads_nothing_from_a_blank_image(rapidocr: ocr.OcrEngine) -> None:
    assert rapidocr.read(Image.new("RGB", SIZE, (30, 60, 90))) == ""


def _line(text: str, size: int = 60) -> Image.Image:
    """One line in capitals, framed as cover_hpc.typeset.line_crops frames a typeset line: the type at
    about 1.1 em of the crop's height, whatever the line holds."""
    font = ImageFont.truetype(str(font_path(bold=True, serif=True)), size)
    width = round(font.getlength(text)) + size // 3
    image = Image.new("RGB", (width, round(size * 1.08)), (235, 230, 220))
    ImageDraw.Draw(image).text((size // 6, round(size * 0.8)), text, font=font, fill=(20, 20, 20), anchor="ls")
    return image


def test_rapidocr_reads_known_lines_with_their_spaces(rapidocr: ocr.OcrEngine) -> None:
    reader = cast(ocr.LineReader, rapidocr)
    lines = ["WINTER FIRE A MACHINE", "MEMORY CLOCKWORK 1984", "Café Noir"]
    assert [ocr.normalise_title(read) for read in reader.read_lines([_line(text) for text in lines])] == [
        ocr.normalise_title(text) for text in lines
    ]
    assert reader.read_lines([]) == []


def test_rapidocr_knows_which_letters_it_can_answer(rapidocr: ocr.OcrEngine) -> None:
    characters = cast(ocr.RapidOcr, rapidocr).characters
    assert {"a", "Z", "7", "é", "ü", " "} <= characters
    assert not {"Ł", "ø", "Æ", "ñ"} & characters  # read as another letter: t or L, o or 0, E or AE, n


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract (optional engine) is not installed")
def test_tesseract_reads_back_a_clean_title(art: list[Image.Image]) -> None:
    title, kind = CLEAN[0]
    engine = ocr.load_ocr("tesseract")
    read = engine.read(_known_image(title, kind, "easy", art, 0))
    assert ocr.title_similarity(title, read) >= 0.9, read
    (line,) = cast(ocr.TesseractOcr, engine).read_lines([_line("MEMORY CLOCKWORK")])
    assert ocr.title_similarity("MEMORY CLOCKWORK", line) >= 0.9, line
