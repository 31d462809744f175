"""Finished covers: a book's title and author typeset over generated art, placed and treated to be read.

No model is involved: :func:`typeset` takes any image. The rules (issues 13 and 22):

- **Size**: the cover is made at the size asked for (an ebook's 1600x2560, or the art's own size by
  default): the art is resampled once (Lanczos, scaled to cover and centred, never stretched) and the
  lettering is rendered at the output size, so it stays sharp.
- **Fit**: the title is wrapped to at most 3 lines (balanced breaks), exactly as given (case, diacritics,
  punctuation), and set as large as fits inside margins of at least 6% of the width. The author is set at
  no less than ``author_min_scale`` (0.4) of the title's size: the title shrinks to make room. Words are
  never cut or hyphenated. Below the minimum legible size, :class:`TextDoesNotFit` is raised.
- **Where the eye goes**: OpenCV's spectral-residual saliency map (contrib module) above its Otsu threshold,
  and the faces scikit-image's LBP cascade finds, mark the subject. Lettering over the subject costs, over a
  face costs more than any treatment.
- **Legible by measurement**: for each text in each band (top, middle, bottom third), the pixels right
  around the glyphs (2 px to 15% of the size out) are measured: the WCAG 2.x contrast of the worst 1% of
  them against the text colour, and the art's texture energy (mean Sobel magnitude, PosterLayout's "Rea").
  The treatments covers use, in the order they are preferred: none (calm art that reads), a panel in from
  the nearest edge, in the art's own hue darkened or lightened to 7:1 against the text, solid on busy art and
  fading into it, a wash over the whole art (at most 40%), and a soft shadow of the opposite colour only
  where nothing else goes (machine readers lose the letters in a halo).
  A treatment counts only if the contrast reaches the target (4.5:1) and the texture left around the
  letters is calm. Never a band through the middle of the art: panels start at the cover's edge.
- **Choice**: each way that reads is scored by the salient share and faces it covers, the band (the middle
  costs a little), and how much art it hides; the title and author are chosen together. Where either has a
  line that page readers take for part of the picture beside it (fewer than 8 letters, or under 6.5 times as
  wide as high), the two are stacked in one band on one panel. On art busy all over (as the cover reduced to
  one bit shows it), panels grow until at most 20% of the cover is busy. The record (:class:`Layout`) holds
  every figure, so a cover can be checked without the typesetter.
- **Read whole**: the finished cover is read as a page by tesseract's Latin-script model (where installed).
  A page reader's layout analysis drops lettering beside art it takes for a picture or a halftone, whatever
  the contrast; where a text is not found exactly, the art is washed step by step (or, where every text was
  found but misread, the lettering set in other faces) and the layout chosen again, until the page reads.
- **Type**: faces by genre from Debian's font packages (serif, sans, display), overridable; a character
  that no face of the set or its fallbacks has raises :class:`MissingGlyph`, naming it.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from cover_hpc.spec.vocab import FONT_ROLES

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]  # left, top, right, bottom (right and bottom exclusive), in pixels
WHITE: RGB = (255, 255, 255)
BLACK: RGB = (0, 0, 0)
BANDS = ("top", "middle", "bottom")


# ----------------------------------------------------------------------------------------------- errors


class TypesetError(ValueError):
    """A book whose cover cannot be finished; the message says why and what to change."""


class TextDoesNotFit(TypesetError):
    def __init__(self, role: str, text: str, needed: float, minimum: int, lines: int) -> None:
        self.role, self.text, self.needed, self.minimum = role, text, needed, minimum
        if needed < 1:  # an image so small that the margins leave no room at all
            super().__init__(
                f"the {role} {text!r} does not fit: the image leaves no room inside its margins for text of the "
                f"minimum legible size of {minimum} px; use a larger image"
            )
            return
        super().__init__(
            f"the {role} {text!r} does not fit: in at most {lines} lines inside the margins it would have to be "
            f"set at {needed:.0f} px, below the minimum legible size of {minimum} px; shorten it or use a "
            "larger image"
        )


class MissingGlyph(TypesetError):
    def __init__(self, role: str, characters: Sequence[str], fonts: Sequence[str]) -> None:
        self.role, self.characters = role, tuple(characters)
        names = ", ".join(describe_character(c) for c in characters)
        super().__init__(f"the {role} has characters no font available to it can draw: {names} (fonts tried: "
                         f"{', '.join(fonts)}); install a font that has them and pass it as the font")  # fmt: skip


class ContrastUnreachable(TypesetError):
    """No place and treatment brings the text to the target: the cover is refused, never returned below it."""


def describe_character(character: str) -> str:
    return f"{character!r} (U+{ord(character):04X} {unicodedata.name(character, 'unnamed character')})"


# ------------------------------------------------------------------------------------- options and result

Treatment = Literal["auto", "shadow", "wash", "panel"]
Stacking = Literal["weak", "always", "never"]
# In the order they are preferred, for machine readers as much as for the eye: a panel is the most
# reliably read (tesseract reads lettering best on a clean field); a wash leaves the art's texture under
# the letters; a halo around each letter reads to the eye, but machine readers lose the letters in it
# (docs/PERFORMANCE.md, "Finished covers on any art"), so a shadow is used only where nothing else goes.
TREATMENTS = ("none", "panel", "wash", "shadow")
STACKING = ("weak", "always", "never")  # TypesetOptions.stacking


@dataclass(frozen=True, kw_only=True)
class TypesetOptions:
    """Sizes are fractions of the image (``margin`` of the width; the rest of the height)."""

    margin: float = 0.06  # each side; the title's ink stays inside
    title_lines: int = 3
    author_lines: int = 2
    title_min: float = 0.028  # smallest legible title: 33 px at 1152 px high (18 pt on a 9-inch-high print)
    # a one-word title stops growing here: 6% of the height (154 px of 2560) is as large as machine readers
    # still read whole; past ~190 px tesseract misreads letters and past ~300 px it loses the line
    # (docs/PERFORMANCE.md, "Finished covers on any art")
    title_max: float = 0.06
    author_min: float = 0.018  # 21 px at 1152 px high (12 pt printed)
    author_scale: float = 0.55  # the author at most this fraction of the title's size
    author_min_scale: float = 0.4  # ... and at least this one (the title shrinks to make room)
    min_px: int = 12  # no text below this, whatever the image size
    target_contrast: float = 4.5  # WCAG AA for normal text; may be raised (7 for AAA), never lowered
    panel_contrast: float = 7.0  # a panel's colour against its text (WCAG AAA): panels are where art is hardest
    calm_detail: float = 0.035  # texture energy (mean Sobel magnitude) under text above which art counts as busy
    max_wash: float = 0.4  # the strongest wash over the whole art; more would be a grey veil
    treatment: Treatment = "auto"  # what goes under the text: auto (the least that reads), or one forced
    # text colour candidates: the best contrast wins, the first where two read (a panel of either shade):
    # dark on light first, as print is; tesseract misread white sans lettering on dark panels in 3-6 of 30
    # sub-pixel placements, black on light in none (docs/PERFORMANCE.md, "Finished covers on any art")
    colours: tuple[RGB, ...] = (BLACK, WHITE)
    word_space: float = 0.0  # least space between words, in em; 0 keeps the font's own (0.25-0.33 em)
    # title and author as one group in one band, the author on the art's side: "weak" where either has a line that
    # page readers take for part of the picture beside it (see weak_line), "always", or "never" (title and
    # author in separate bands where each reads best)
    stacking: Stacking = "weak"

    def __post_init__(self) -> None:
        problems = [
            f"margin: got {self.margin}; must be at least 0.06 (6% of the width)" if self.margin < 0.06 else "",
            f"target_contrast: got {self.target_contrast}; must be at least 4.5" if self.target_contrast < 4.5 else "",
            f"panel_contrast: got {self.panel_contrast}; must be at least target_contrast"
            if self.panel_contrast < self.target_contrast else "",
            f"title_lines: got {self.title_lines}; must be 1 to 3" if not 1 <= self.title_lines <= 3 else "",
            f"treatment: got {self.treatment!r}; must be auto, shadow, wash or panel"
            if self.treatment not in ("auto", "shadow", "wash", "panel") else "",
            "colours: give at least one colour" if not self.colours else "",
            f"max_wash: got {self.max_wash}; must be in [0, 1)" if not 0 <= self.max_wash < 1 else "",
            f"calm_detail: got {self.calm_detail}; must be greater than 0" if self.calm_detail <= 0 else "",
            f"author_min_scale: got {self.author_min_scale}; must be in (0, author_scale]"
            if not 0 < self.author_min_scale <= self.author_scale else "",
            f"word_space: got {self.word_space}; must be 0 or more" if self.word_space < 0 else "",
            f"stacking: got {self.stacking!r}; must be one of {', '.join(STACKING)}"
            if self.stacking not in STACKING else "",
        ]  # fmt: skip
        problems = [p for p in problems if p]
        if problems:
            raise ValueError("invalid typesetting options: " + "; ".join(problems))


@dataclass(frozen=True)
class TextBlock:
    """The layout record of one piece of text (title or author), as drawn."""

    role: str
    text: str
    lines: tuple[str, ...]
    line_boxes: tuple[Box, ...]  # ink box of each line
    baselines: tuple[int, ...]  # y of each line's baseline
    words: tuple[tuple[str, int, int], ...]  # each word and where it is drawn: its left baseline point (PIL "ls")
    box: Box  # their union
    band: str  # top, middle or bottom: where it went
    band_detail: dict[str, float]  # texture energy (mean Sobel magnitude) of the art under it in each band tried
    band_salient: dict[str, float]  # share of the art's salient region under it in each band tried
    detail: float  # texture energy around the glyphs as finished (its treatment included)
    salient_share: float  # share of the salient region (subject, faces) under its ink box
    on_face: bool  # its box overlaps a face found in the art (avoided wherever another place reads)
    font_file: str
    font_size: int
    colour: str  # "#rrggbb"
    contrast: float  # WCAG contrast of the worst 5% of the pixels right around the glyphs: must reach the target
    contrast_worst: float  # the worst 1% (what the typesetter itself holds to the target)
    background_luminance: tuple[float, float]  # 5th and 95th percentile of those pixels' relative luminance
    treatment: str  # none, shadow, wash or panel
    treatment_detail: dict[str, Any] | None  # its colour, strength and extent


@dataclass(frozen=True)
class Layout:
    width: int
    height: int
    margin_px: int
    genre_role: str  # serif, sans, display or "custom" (a font file given)
    title: TextBlock
    author: TextBlock | None
    art_size: tuple[int, int]  # the art as given (width, height); resampled once to (width, height) if different
    salient_area: float  # share of the cover that the saliency map and face finder mark as subject
    faces: tuple[Box, ...]
    # whether every text is ink, and the pixels around it paper, when a page reader cuts each colour channel at
    # the cover's own threshold (tesseract's binarisation); False where no place passed and the layout was
    # chosen without that check (the cover reads to the eye, a page reader may lose it)
    page_reader_binarised: bool = True
    # the finished cover read whole by a page reader (:func:`typeset`): checked (False: no reader, and why), the
    # reader, what it read, whether each text was found in it exactly, and how many covers were tried
    page_read: dict[str, Any] | None = None
    art_wash: dict[str, Any] | None = None  # the whole art washed (colour, alpha) before the layout, where it was

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def contrast(self) -> float:
        return min(block.contrast for block in (self.title, self.author) if block is not None)


@dataclass(frozen=True)
class TypesetResult:
    image: Image.Image
    layout: Layout
    timings_ms: dict[str, float] = dataclasses.field(default_factory=dict)  # layout (fit, place), render, page_read


# --------------------------------------------------------------------------------------------- colour


def _srgb_to_linear(value: np.ndarray) -> np.ndarray:
    value = value / 255.0
    return np.where(value <= 0.04045, value / 12.92, ((value + 0.055) / 1.055) ** 2.4)


_LINEAR = _srgb_to_linear(np.arange(256, dtype=np.float64))
_WEIGHTS = np.array([0.2126, 0.7152, 0.0722])


def luminance(pixels: np.ndarray) -> np.ndarray:
    """WCAG relative luminance of uint8 sRGB pixels (..., 3)."""
    return np.asarray(_LINEAR[pixels] @ _WEIGHTS)


def relative_luminance(colour: RGB) -> float:
    return float(luminance(np.array(colour, dtype=np.uint8)))


def contrast_ratio(first: float, second: float) -> float:
    """WCAG 2.x contrast of two relative luminances: (lighter + 0.05) / (darker + 0.05)."""
    return (max(first, second) + 0.05) / (min(first, second) + 0.05)


def hex_colour(colour: RGB) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


# ---------------------------------------------------------------------------------------------- fonts

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
Faces = tuple[str, str]  # file names of the title face and the author face
ROLE_FACES: dict[str, tuple[Faces, ...]] = {
    # first installed pair wins; Debian packages: fonts-urw-base35, fonts-liberation, fonts-dejavu-*
    "serif": (("P052-Bold.otf", "P052-Roman.otf"), ("LiberationSerif-Bold.ttf", "LiberationSerif-Regular.ttf"),
              ("DejaVuSerif-Bold.ttf", "DejaVuSerif.ttf")),
    # Nimbus Sans first: tesseract read "Chen Wei" in it at 60-120 px, "Chen Wel" in Liberation Sans and DejaVu
    # Sans at 84-120 (docs/PERFORMANCE.md, "Finished covers on any art")
    # and the author in bold too: reversed out of a dark ground, the regular weight's thin strokes were lost at
    # author sizes (tesseract read "Nalaatsyommtclaliaal" for Ahmed Rahimi, "Jurgen Branat" on flat navy): on flat
    # navy, black and red the 57 sans books of the benchmark's books read 53-54 with the regular author, 56 with the
    # bold one (the 57th is "lyer"), and on cream 56 either way (docs/PERFORMANCE.md, "the reader's floor")
    "sans": (("NimbusSans-Bold.otf", "NimbusSans-Bold.otf"),
             ("LiberationSans-Bold.ttf", "LiberationSans-Bold.ttf"), ("DejaVuSans-Bold.ttf", "DejaVuSans-Bold.ttf")),
    "display": (("URWBookman-Demi.otf", "URWBookman-Light.otf"), ("C059-Bold.otf", "C059-Roman.otf"),
                ("DejaVuSerif-Bold.ttf", "DejaVuSerif.ttf")),
}  # fmt: skip
assert tuple(ROLE_FACES) == FONT_ROLES, "a role named in the spec vocabulary has no faces"
# after the genre's faces, for characters they lack: DejaVu (Greek, Cyrillic, ...), then CJK (fonts-wqy-microhei)
FALLBACK_FACES: tuple[Faces, ...] = (
    ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf"),
    ("wqy-microhei.ttc", "wqy-microhei.ttc"),
)
# genre words, most specific first: a book's first genre with a match decides; "fiction" alone means serif
GENRE_WORDS = (
    ("display", ("fantasy", "horror", "paranormal", "supernatural", "gothic", "dragons", "magic", "vampires")),
    ("sans", ("science fiction", "sci-fi", "scifi", "space opera", "cyberpunk", "dystopia", "thriller", "suspense",
              "crime", "mystery", "espionage", "action", "business", "nonfiction", "self help", "technology")),
    ("serif", ("literary", "literature", "romance", "historical", "history", "classics", "poetry", "memoir",
               "biography", "love")),
)  # fmt: skip


@functools.cache
def installed_fonts() -> dict[str, Path]:
    """Font files by name: Debian's folders first, then the DejaVu copy matplotlib ships (tests anywhere)."""
    found: dict[str, Path] = {}
    for folder in FONT_DIRS:
        for root, _, files in os.walk(folder):
            for name in files:
                found.setdefault(name, Path(root) / name)
    try:
        import matplotlib

        for path in sorted((Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf").glob("*.ttf")):
            found.setdefault(path.name, path)
    except ImportError:
        pass
    return found


def genre_role(genres: Sequence[str]) -> str:
    for genre in genres:
        text = f" {re.sub(r'[^a-z0-9-]+', ' ', genre.lower())} "
        for role, words in GENRE_WORDS:
            if any(f" {word} " in text for word in words):
                return role
    return "serif"


@dataclass(frozen=True)
class FontSet:
    role: str  # serif, sans, display, or custom: a font file given by the user, used alone (no fallback)
    faces: tuple[Faces, ...]  # installed (title, author) pairs to try in order, as paths


def font_set(genres: Sequence[str] = (), font: str | None = None) -> FontSet:
    """The faces for a book: ``font`` is a role (serif, sans, display), a font file, or None (by genre)."""
    if font and font not in ROLE_FACES:
        path = Path(font).expanduser()
        if not path.is_file():
            raise TypesetError(f"font {font!r}: not a role ({', '.join(ROLE_FACES)}) and no such font file")
        try:
            _cmap(str(path))
            _font(str(path), REFERENCE_SIZE)
        except Exception as error:  # fontTools and FreeType each raise their own kinds
            raise TypesetError(f"font {font!r}: not a font file that can be read ({error})") from error
        return FontSet("custom", ((str(path), str(path)),))
    role = font or genre_role(genres)
    installed = installed_fonts()
    faces = tuple(
        (str(installed[title]), str(installed[author]))
        for title, author in (*ROLE_FACES[role], *FALLBACK_FACES)
        if title in installed and author in installed
    )
    if not faces:
        raise TypesetError("no fonts found: install Debian's fonts-dejavu-core (or matplotlib, which ships DejaVu)")
    return FontSet(role, faces)


@functools.cache
def _cmap(path: str) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    with TTFont(path, fontNumber=0, lazy=True) as font:
        return frozenset(font.getBestCmap() or {})


def _needs_glyph(character: str) -> bool:
    """Spaces and invisible format characters (joiners) are laid out, not drawn from the font's cmap."""
    return not character.isspace() and unicodedata.category(character) != "Cf"


def choose_face(text: str, fonts: FontSet, role: str) -> str:
    """The first face of the set that has every character of ``text``; else :class:`MissingGlyph`."""
    which = 0 if role == "title" else 1
    wanted = {c for c in text if _needs_glyph(c)}
    best: tuple[int, set[str]] | None = None
    for pair in fonts.faces:
        missing = {c for c in wanted if ord(c) not in _cmap(pair[which])}
        if not missing:
            return pair[which]
        best = best if best is not None and len(best[1]) <= len(missing) else (len(missing), missing)
    assert best is not None
    raise MissingGlyph(role, sorted(best[1]), [Path(pair[which]).name for pair in fonts.faces])


@functools.lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size=size, index=0)


# ------------------------------------------------------------------------------------------------ text


def clean_text(text: str, role: str) -> str:
    """NFC, runs of whitespace (line breaks included) as one space; control characters refused."""
    text = " ".join(unicodedata.normalize("NFC", text).split())
    bad = [c for c in text if unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn")]
    if bad:
        raise TypesetError(f"the {role} has characters that are not text: {', '.join(map(describe_character, bad))}")
    if not text:
        raise TypesetError(f"the {role} is empty")
    return text


def _breaks_around(character: str) -> bool:
    """CJK ideographs and kana: a line may break before or after each."""
    return unicodedata.east_asian_width(character) in ("W", "F") and character.isalpha()


def tokens(text: str) -> list[tuple[str, str]]:
    """(separator before, word) pairs; a line never breaks inside a word, so no word is ever cut."""
    result: list[tuple[str, str]] = []
    for index, word in enumerate(text.split(" ")):
        separator = " " if index else ""
        piece = ""
        for character in word:
            if _breaks_around(character):
                if piece:
                    result.append((separator, piece))
                    separator, piece = "", ""
                result.append((separator, character))
                separator = ""
            else:
                piece += character
        if piece:
            result.append((separator, piece))
    return result


def _join(words: Sequence[tuple[str, str]]) -> str:
    return "".join((separator if index else "") + word for index, (separator, word) in enumerate(words))


def _cuts(count: int, lines: int) -> list[tuple[int, ...]]:
    """Every way to cut ``count`` words into ``lines`` non-empty lines (titles are short: O(count^2))."""
    return list(itertools.combinations(range(1, count), lines - 1))


# ------------------------------------------------------------------------------------------------- fit

REFERENCE_SIZE = 100  # widths are measured once at this size, then scaled
LEADING = 1.2  # baseline to baseline, as a multiple of the size


@dataclass(frozen=True)
class SetText:
    """Lines set in one face and size; coordinates relative to the top-left of the block's ink."""

    lines: tuple[str, ...]
    face: str
    size: int
    stroke: int
    origins: tuple[tuple[int, int], ...]  # each line's left baseline point (PIL anchor "ls")
    pieces: tuple[tuple[tuple[str, int], ...], ...]  # each line's words and their x from the line's origin
    line_boxes: tuple[Box, ...]
    width: int
    height: int


def word_gap(font: ImageFont.FreeTypeFont, size: int, word_space: float) -> float:
    """The space between words: the font's own, or ``word_space`` em where that is wider (display type often
    has wider word spaces; they did not change how often OCR reads titles exactly: 0.4 and 0.55 em where it
    found the lines itself, 0.33 and 0.4 em where it read the lines of :func:`line_crops`; docs/PERFORMANCE.md)."""
    return max(float(font.getlength(" ")), word_space * size)


def _set_line(font: ImageFont.FreeTypeFont, line: str, gap: float, stroke: int) -> tuple[list[tuple[str, int]], Box]:
    pieces, boxes, x = [], [], 0.0
    for word in line.split(" "):
        left, top, right, bottom = (int(v) for v in font.getbbox(word, anchor="ls", stroke_width=stroke))
        pieces.append((word, round(x)))
        boxes.append((round(x) + left, top, round(x) + right, bottom))
        x += font.getlength(word) + gap
    box = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    return pieces, box


def set_lines(lines: Sequence[str], face: str, size: int, stroke: int = 0, word_space: float = 0.0) -> SetText:
    font, pitch = _font(face, size), round(size * LEADING)
    gap = word_gap(font, size, word_space)
    measured = [_set_line(font, line, gap, stroke) for line in lines]
    boxes = [box for _, box in measured]
    width = max(right - left for left, _, right, _ in boxes)
    top = min(box[1] + index * pitch for index, box in enumerate(boxes))
    bottom = max(box[3] + index * pitch for index, box in enumerate(boxes))
    origins, line_boxes = [], []
    for index, (left, upper, right, lower) in enumerate(boxes):
        x, y = (width - (right - left)) // 2 - left, index * pitch - top
        origins.append((x, y))
        line_boxes.append((x + left, y + upper, x + right, y + lower))
    pieces = tuple(tuple(line_pieces) for line_pieces, _ in measured)
    return SetText(tuple(lines), face, size, stroke, tuple(origins), pieces, tuple(line_boxes), width, bottom - top)


# A designer breaks a title by sense and keeps a short word with the word it leads ("Essays / on Surveillance",
# not "Essays on / Surveillance"). Tesseract's English model, reading a line that ends in one, added a full stop
# after it ("Essays on. Surveillance", "Second Chances in. Portofino") or ran it into the next line ("Notes ona
# Quiet Life", from "Notes on a / Quiet Life"): a break after such a word counts as a line this much wider.
SHORT_WORD_LETTERS = 2  # a word of 1-2 letters and no digits ("a", "on", "in", "Dr.", "I") leads the next word
STRANDED_PENALTY = 0.25


def _strands(word: str) -> bool:
    """Whether a line ending in ``word`` strands a short word that leads the next one."""
    letters = sum(c.isalpha() for c in word)
    return 1 <= letters <= SHORT_WORD_LETTERS and not any(c.isdigit() or _breaks_around(c) for c in word)


def _best_breaks(words: Sequence[tuple[str, str]], lines: int, width_of: Any) -> tuple[tuple[str, ...], float, float]:
    """The break into ``lines`` lines whose widest line is narrowest (balanced lines), that width, and the choice's
    handicap: each line ending in a short word counts as ``STRANDED_PENALTY`` wider (1 where none does)."""
    count = len(words)
    best: tuple[float, float, tuple[int, ...]] | None = None
    for cuts in _cuts(count, lines):
        bounds = (0, *cuts, count)
        widest = max(width_of(a, b) for a, b in itertools.pairwise(bounds))
        stranded = sum(_strands(words[cut - 1][1]) for cut in cuts)
        handicap = 1 + STRANDED_PENALTY * stranded
        if best is None or widest * handicap < best[0] * best[1]:
            best = (widest, handicap, bounds)
    assert best is not None
    bounds = best[2]
    return tuple(_join(words[a:b]) for a, b in itertools.pairwise(bounds)), best[0], best[1]


def fit(text: str, face: str, box: tuple[int, int], max_lines: int, sizes: tuple[int, int], role: str,
        word_space: float = 0.0) -> SetText:  # fmt: skip
    """``text`` in at most ``max_lines`` lines, as large as fits ``box`` (width, height) within ``sizes``."""
    words, smallest, largest = tokens(text), sizes[0], max(sizes)
    reference = _font(face, REFERENCE_SIZE)
    gap, length = word_gap(reference, REFERENCE_SIZE, word_space), functools.cache(reference.getlength)

    @functools.cache
    def width_of(first: int, last: int) -> float:
        pieces = _join(words[first:last]).split(" ")
        return sum(length(piece) for piece in pieces) + gap * (len(pieces) - 1)

    at_smallest = width_of(0, len(words)) * smallest / REFERENCE_SIZE
    if at_smallest > max_lines * box[0]:  # hopeless whatever the breaks: say so before trying them all
        raise TextDoesNotFit(role, text, box[0] * max_lines / at_smallest * smallest, smallest, max_lines)
    estimates = []  # (the size it would take, handicapped for stranded short words; -lines; the lines; handicap)
    for count in range(1, min(max_lines, len(words)) + 1):
        lines, widest, handicap = _best_breaks(words, count, width_of)
        by_width = box[0] / (widest / REFERENCE_SIZE)
        by_height = box[1] / ((count - 1) * LEADING + 1.15)
        estimates.append((min(by_width, by_height, largest) / handicap, -count, lines, handicap))
    best: SetText | None = None
    best_score = 0.0
    for score, _, lines, handicap in sorted(estimates, reverse=True):
        if best is not None and score < best_score:
            break
        candidate = _shrink_to_fit(lines, face, math.floor(score * handicap), box, smallest, word_space)
        if candidate is not None and (best is None or candidate.size / handicap > best_score):
            best, best_score = candidate, candidate.size / handicap
    if best is None:
        raise TextDoesNotFit(role, text, max(e[0] * e[3] for e in estimates), smallest, max_lines)  # unhandicapped
    return best


def _shrink_to_fit(lines: Sequence[str], face: str, size: int, box: tuple[int, int], smallest: int,
                   word_space: float) -> SetText | None:  # fmt: skip
    while size >= smallest:
        block = set_lines(lines, face, size, 0, word_space)
        if block.width <= box[0] and block.height <= box[1]:
            return block
        scale = min(box[0] / block.width, box[1] / block.height)
        size = min(size - 1, math.floor(size * scale))
    return None


# ------------------------------------------------------------------------------------------- placement


def bands(width: int, height: int, margin_px: int) -> dict[str, Box]:
    """Top, middle and bottom thirds of the area inside the margins."""
    inner = height - 2 * margin_px
    edges = [margin_px + round(inner * k / 3) for k in range(4)]
    return {name: (margin_px, edges[k], width - margin_px, edges[k + 1]) for k, name in enumerate(BANDS)}


def detail_map(image: Image.Image) -> np.ndarray:
    """Sobel gradient magnitude of the luma (0..1), kernels scaled by 1/4 so a black-to-white step reads 1."""
    luma = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    if min(luma.shape) < 3:
        return np.zeros_like(luma)
    vertical = luma[:-2] + 2 * luma[1:-1] + luma[2:]
    horizontal = luma[:, :-2] + 2 * luma[:, 1:-1] + luma[:, 2:]
    gx = vertical[:, 2:] - vertical[:, :-2]
    gy = horizontal[2:] - horizontal[:-2]
    return np.pad(np.sqrt(gx * gx + gy * gy) / 4.0, 1, mode="edge")


BUSY_CHANGES = 0.04  # one-bit changes per pixel (across and down) above which a tile of the cover is busy ...
BUSY_HEIGHT = 2560  # ... on a cover this high (an ebook's); a cover n times as high is busy at 1/n of that
# a cover with more of its area busy than this gets larger lettering fields: with grass over 33% of a page
# tesseract split large lettering at the dots of its i's and its accents ("Orb it", "R ésumé"), over 18% it did not
BUSY_MAX = 0.2


def busy_share(image: Image.Image, text: Sequence[Box] = ()) -> float:
    """The share of ``image`` that is fine, busy texture as a page reader sees it: reduced to one bit at its own
    global (Otsu) threshold, tiles of 1/40 of its height where the bit changes more than ``BUSY_CHANGES`` times a
    pixel (at ``BUSY_HEIGHT``; in proportion at other heights, as a photograph's edges are). Tiles that touch
    a box in ``text`` (the lettering) do not count. Art busy nearly everywhere (noise,
    grass, fine stripes, a halftone screen) leaves a page reader nowhere to find the text's lines from:
    tesseract reads none on covers of fine diagonal stripes until the pattern is under 40% of the cover. At
    full size, not reduced: 4 px stripes or 16 px noise, which a reduced measure of texture energy took for calm,
    are what tesseract's halftone finder sees (docs/PERFORMANCE.md, "Finished covers on any art")."""
    pixels = np.asarray(image)
    bits = grey(pixels) < otsu(grey_histogram(pixels))
    changes = np.zeros(bits.shape, dtype=np.float32)
    changes[:, 1:] += bits[:, 1:] != bits[:, :-1]
    changes[1:] += bits[1:] != bits[:-1]
    tile = max(2, image.height // 40)
    rows, cols = bits.shape[0] // tile, bits.shape[1] // tile
    if not rows or not cols:
        return 0.0
    threshold = BUSY_CHANGES * BUSY_HEIGHT / image.height  # the same art at another size: as busy
    busy = changes[: rows * tile, : cols * tile].reshape(rows, tile, cols, tile).mean(axis=(1, 3)) > threshold
    for left, top, right, bottom in text:
        busy[top // tile : -(-bottom // tile), left // tile : -(-right // tile)] = False
    return float(busy.mean())


def mean_detail(detail: np.ndarray, box: Box) -> float:
    left, top, right, bottom = box
    return float(detail[top:bottom, left:right].mean())


# ---------------------------------------------------------------------------------- where the eye goes

SALIENCY_SIDE = 256  # the saliency map is computed on the art scaled to this longest side
FACE_SIDE = 256  # and faces are looked for at this one


@functools.cache
def _cv2() -> Any:
    """OpenCV with its contrib saliency module (opencv-contrib-python-headless), or a TypesetError saying so."""
    try:
        import cv2
    except ImportError as error:
        raise TypesetError(f"OpenCV is not installed ({error}); pip install opencv-contrib-python-headless") from None
    if not hasattr(cv2, "saliency"):
        raise TypesetError("OpenCV's saliency module is missing: the plain opencv-python build lacks it; "
                           "pip install opencv-contrib-python-headless (at opencv-python's version)")  # fmt: skip
    return cv2


@functools.cache
def _face_finder() -> Any:
    """scikit-image's LBP frontal-face cascade detector (OpenCV 5's wheels ship no cascades)."""
    try:
        from skimage import data
        from skimage.feature import Cascade
    except ImportError as error:
        raise TypesetError(f"scikit-image is not installed ({error}): its face detector keeps lettering off "
                           "faces; pip install scikit-image") from None  # fmt: skip
    return Cascade(data.lbp_frontal_face_cascade_filename())


@dataclass(frozen=True)
class Attention:
    """Where the eye goes on the art: OpenCV's spectral-residual saliency map (Hou and Zhang 2007) above its
    Otsu threshold, and the faces OpenCV's frontal-face cascade finds, each grown by a fifth."""

    salient: np.ndarray  # bool, the art's size
    faces: tuple[Box, ...]
    _integral: np.ndarray = dataclasses.field(repr=False)

    @classmethod
    def of(cls, image: Image.Image) -> Attention:
        cv2 = _cv2()
        width, height = image.size
        small = image.copy()
        small.thumbnail((SALIENCY_SIDE, SALIENCY_SIDE), Image.Resampling.BILINEAR)
        bgr = np.ascontiguousarray(np.asarray(small)[:, :, ::-1])
        found, saliency = cv2.saliency.StaticSaliencySpectralResidual_create().computeSaliency(bgr)
        mask = np.zeros((small.height, small.width), dtype=np.uint8)
        if found and float(saliency.max()) > 0:
            scaled = np.clip(saliency / float(saliency.max()) * 255, 0, 255).astype(np.uint8)
            scaled = cv2.GaussianBlur(scaled, (0, 0), max(1.0, SALIENCY_SIDE / 128))
            _, mask = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        salient = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST) > 0
        faces = []
        look = image.copy()
        look.thumbnail((FACE_SIDE, FACE_SIDE), Image.Resampling.BILINEAR)
        scale = width / look.width
        grey = np.asarray(look.convert("L"), dtype=np.float32) / 255
        found_faces = _face_finder().detect_multi_scale(img=grey, scale_factor=1.2, step_ratio=1, min_size=(24, 24),
                                                        max_size=look.size, min_neighbor_number=4)  # fmt: skip
        for face in found_faces:
            x, y, w, h = face["c"], face["r"], face["width"], face["height"]
            pad_x, pad_y = w * 0.2, h * 0.2
            box = (max(0, round((x - pad_x) * scale)), max(0, round((y - pad_y) * scale)),
                   min(width, round((x + w + pad_x) * scale)), min(height, round((y + h + pad_y) * scale)))  # fmt: skip
            faces.append(box)
            salient[box[1] : box[3], box[0] : box[2]] = True
        integral = np.pad(salient.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        return cls(salient, tuple(faces), integral)

    @property
    def area(self) -> float:
        return float(self._integral[-1, -1]) / max(1, self.salient.size)

    def share(self, box: Box) -> float:
        """The share of the salient region inside ``box`` (0 where the art has none)."""
        total = float(self._integral[-1, -1])
        if total == 0:
            return 0.0
        left, top, right, bottom = (max(0, v) for v in box)
        right, bottom = min(right, self.salient.shape[1]), min(bottom, self.salient.shape[0])
        if right <= left or bottom <= top:
            return 0.0
        i = self._integral
        return float(i[bottom, right] - i[top, right] - i[bottom, left] + i[top, left]) / total

    def on_face(self, box: Box) -> bool:
        return any(box[0] < f[2] and f[0] < box[2] and box[1] < f[3] and f[1] < box[3] for f in self.faces)


# ---------------------------------------------------------------------------------- glyphs and treatments


def glyph_mask(block: SetText, origin: tuple[int, int], region: Box, stroke: int = 0) -> Image.Image:
    """The block's glyphs (with a stroke of ``stroke`` px) as an 8-bit coverage mask of ``region``."""
    mask = Image.new("L", (region[2] - region[0], region[3] - region[1]), 0)
    draw, font = ImageDraw.Draw(mask), _font(block.face, block.size)
    for pieces, (x, y) in zip(block.pieces, block.origins, strict=True):
        for word, offset in pieces:
            position = (origin[0] + x + offset - region[0], origin[1] + y - region[1])
            draw.text(position, word, font=font, fill=255, anchor="ls", stroke_width=stroke, stroke_fill=255)
    return mask


def grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """Boolean dilation by a square of side 2 * radius + 1."""
    if radius <= 0:
        return mask.copy()
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), dtype=np.uint8)
    return np.asarray(_cv2().dilate(mask.astype(np.uint8), kernel), dtype=bool)


def ring_radius(size: int) -> int:
    """How far around each glyph its background is measured: the art the eye reads the letter against."""
    return max(3, round(size * 0.15))


def glyph_ring(glyphs: np.ndarray, size: int) -> np.ndarray:
    """The pixels right around the glyphs: from 2 px out (past the anti-aliased edge) to :func:`ring_radius`."""
    return grow(glyphs, ring_radius(size)) & ~grow(glyphs, 1)


MEASURE_SAMPLE = 20_000
MIDDLE_COST = 0.3  # what setting a text across the middle costs, against half the salient region under it
ONE_BIT_MARGIN = 12  # grey levels between the one-bit threshold and the text, and the pixels around it


@dataclass(frozen=True)
class Measure:
    colour: RGB
    worst5: float  # contrast of the worst 5% of the ring's pixels against the colour
    worst1: float  # of the worst 1%
    luminance: tuple[float, float]  # 5th and 95th percentile of the ring's luminance


def measure(pixels: np.ndarray, colours: Sequence[RGB]) -> Measure:
    """The colour whose worst 1% of contrasts against ``pixels`` (the ring, (n, 3) uint8) is best, and its figures."""
    if len(pixels) > MEASURE_SAMPLE:  # an even sample: percentiles of 20,000 pixels are as good as of all
        pixels = pixels[:: math.ceil(len(pixels) / MEASURE_SAMPLE)]
    lum = luminance(pixels) if len(pixels) else np.zeros(1)
    best: Measure | None = None
    for colour in colours:
        own = relative_luminance(colour)
        contrasts = (np.maximum(lum, own) + 0.05) / (np.minimum(lum, own) + 0.05)
        worst1, worst5 = (float(v) for v in np.percentile(contrasts, (1, 5)))
        found = Measure(colour, worst5, worst1, (float(np.percentile(lum, 5)), float(np.percentile(lum, 95))))
        if best is None or found.worst1 > best.worst1:
            best = found
    assert best is not None
    return best


def grey(pixels: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma in 0-255 (what a scanner, a fax or a one-bit display reduces colour to)."""
    values = pixels.reshape(-1, 3).astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return values.reshape(pixels.shape[:-1])


def _channel_histograms(pixels: np.ndarray) -> np.ndarray:
    """The 256-bin histogram of each of the three channels, (3, 256)."""
    return np.stack([np.bincount(pixels[..., c].ravel(), minlength=256)[:256] for c in range(3)]).astype(np.int64)


def grey_histogram(pixels: np.ndarray) -> np.ndarray:
    return np.bincount(np.clip(np.rint(grey(pixels)), 0, 255).astype(np.int64).ravel(), minlength=256)


def otsu(histogram: np.ndarray) -> float:
    """The global threshold (Otsu's) of a 256-bin histogram: pixels above it are the light side."""
    counts = histogram.astype(np.float64)
    total = counts.sum()
    if total <= 0:
        return 127.5
    levels = np.arange(256, dtype=np.float64)
    weight = np.cumsum(counts)
    mass = np.cumsum(counts * levels)
    below, above = weight[:-1], total - weight[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mass[-1] * below / total - mass[:-1]) ** 2 / (below * above)
    between = np.nan_to_num(between, nan=-1.0)
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))  # between two levels, any cut is as good:
    return float(best.mean()) + 0.5  # the middle of the gap


def minority_threshold(histogram: np.ndarray) -> tuple[float, int]:
    """One channel's threshold and which side of it a page reader takes for ink, as tesseract's binariser
    does (``src/ccstruct/otsuthr.cpp``): Otsu's threshold ``t`` (the middle of the run of equal bests: where
    two levels are far apart, any cut between them splits the pixels alike); the side holding under a quarter
    of the pixels is ink (1: at or below t, 0: above t), -1 where neither side is under a quarter (the
    channel says nothing)."""
    counts = histogram.astype(np.float64)
    total = counts.sum()
    levels = np.arange(256, dtype=np.float64)
    below = np.cumsum(counts)[:-1]
    mass = np.cumsum(counts * levels)[:-1]
    above = total - below
    with np.errstate(divide="ignore", invalid="ignore"):
        between = ((mass[-1] + counts[-1] * 255 - mass) / above - mass / below) ** 2 * below * above
    between = np.where((below > 0) & (above > 0), np.nan_to_num(between, nan=-1.0), -1.0)
    if total <= 0 or between.max() < 0:
        return 127.0, -1
    first = int(np.argmax(between))  # tesseract keeps the first of equal bests; no pixel lies between it and
    last = first  # the last of the run of equal bests after it, so any cut in the run splits them alike: its
    while last + 1 < len(between) and between[last + 1] >= between[first] * (1 - 1e-9):  # middle is the
        last += 1  # cut the margins are kept from (the threshold may move that far as more is set)
    t = (first + last) / 2
    if below[first] > total * 0.75:
        return t, 0
    if below[first] < total * 0.25:
        return t, 1
    return t, -1


def reader_ink(pixels: np.ndarray, thresholds: Sequence[tuple[float, int]], margin: float = 0.0) -> np.ndarray:
    """Which of ``pixels`` (..., 3) a per-channel binariser marks as ink: any channel that says anything puts
    it on its ink side (by more than ``margin`` where margin > 0; within ``margin`` of a threshold counts
    as ink when ``margin`` < 0, the doubtful case)."""
    ink = np.zeros(pixels.shape[:-1], dtype=bool)
    for channel, (t, side) in enumerate(thresholds):
        values = pixels[..., channel].astype(np.float64)
        if side == 0:
            ink |= values > t + margin
        elif side == 1:
            ink |= values <= t - margin
    return ink


def reader_thresholds(histograms: np.ndarray) -> list[tuple[float, int]]:
    """:func:`minority_threshold` of each channel; where no channel says anything, the one whose smaller side
    is the smallest speaks, as in tesseract."""
    found = [minority_threshold(h) for h in histograms]
    if all(side < 0 for _, side in found):
        best, best_side, best_gap = 0, 1, -1.0
        for channel, histogram in enumerate(histograms):
            t, _ = found[channel]
            below = float(histogram[: int(t) + 1].sum())
            total = float(histogram.sum())
            side = 1 if below < total * 0.5 else 0
            gap = total - below if side else below
            if gap > best_gap:
                best, best_side, best_gap = channel, side, gap
        found[best] = (found[best][0], best_side)
    return found


def _blend(pixels: np.ndarray, towards: RGB | np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    mixed = pixels.astype(np.float32) * (1 - alpha) + np.asarray(towards, dtype=np.float32) * alpha
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _smoothstep(ramp: np.ndarray) -> np.ndarray:
    ramp = np.clip(ramp, 0, 1)
    return ramp * ramp * (3 - 2 * ramp)


def panel_colour(art: np.ndarray, text: RGB, contrast: float) -> RGB:
    """The art's own mean colour, darkened (under light text) or lightened (under dark) just until ``text``
    reaches ``contrast`` against it: a panel in the cover's palette rather than a grey one."""
    mean = art.reshape(-1, 3).mean(axis=0) if art.size else np.zeros(3)
    own = relative_luminance(text)
    towards = BLACK if own > 0.5 else WHITE
    for step in range(0, 101, 2):
        candidate = tuple(int(v) for v in _blend(mean[None], towards, step / 100)[0])
        if contrast_ratio(own, relative_luminance(candidate)) >= contrast:  # type: ignore[arg-type]
            return candidate  # type: ignore[return-value]
    return towards


@dataclass(frozen=True)
class _Draft:
    """Where one text goes, before its treatment is known."""

    role: str
    text: str
    block: SetText


@dataclass
class _Attempt:
    """One text in one band with one treatment, drawn on a copy of the region it changes."""

    band: str
    origin: tuple[int, int]
    treatment: str
    cost: float
    found: Measure
    detail: float
    salient: float
    on_face: bool
    patch: Image.Image  # the cover's pixels over ``patch_box`` as finished, text included
    patch_box: Box
    record: dict[str, Any] | None
    wash: dict[str, Any] | None = None  # a new wash over the whole art, laid before the patch

    def draw_on(self, canvas: Image.Image) -> None:
        if self.wash is not None:
            canvas.paste(Image.fromarray(_blend(np.asarray(canvas), _wash_towards(self.wash), self.wash["alpha"])))
        canvas.paste(self.patch, self.patch_box[:2])


def _wash_towards(record: dict[str, Any]) -> RGB:
    """What a wash record blends the art towards (black or white)."""
    return BLACK if record["colour"] == hex_colour(BLACK) else WHITE


# A text line that a page reader's layout analysis trusts as text: at least this many letters or digits, its ink at
# least this many times as wide as high (tesseract's strong text line: 8 blobs and an aspect of 5). Lettering
# short of either, standing alone beside a picture, is taken for part of the picture and dropped: "Ashes" or
# "Orbit" on a clean panel, 50-250 px from a photograph, was never read on the whole cover; set next to an author
# line it read at 30 px from it (docs/PERFORMANCE.md, "Finished covers on any art").
STRONG_LINE_GLYPHS = 8
STRONG_LINE_ASPECT = 6.5  # tesseract asks 5 of its partition's box, which runs past the ink (accents, descenders)
GROUP_CALM = 0.1  # a stacked group goes plain only where the ground is this much calmer than calm_detail
STACK_GAP = 0.45  # em of the title between its ink and that of an author stacked with it


def weak_line(block: SetText) -> bool:
    """Whether any line of ``block`` is short of a strong text line (STRONG_LINE_GLYPHS, STRONG_LINE_ASPECT)."""
    for line, (left, top, right, bottom) in zip(block.lines, block.line_boxes, strict=True):
        if sum(character.isalnum() for character in line) < STRONG_LINE_GLYPHS:
            return True
        if right - left < STRONG_LINE_ASPECT * (bottom - top):
            return True
    return False


def stack_origins(title: SetText, author: SetText, band: str,
                  box: Box) -> tuple[tuple[int, int], tuple[int, int]] | None:  # fmt: skip
    """The title and the author set as one group in the top or bottom band: the title at the cover's edge, the
    author on the art's side of it, each centred. None in the middle, or where the group does not fit the band."""
    left, top, right, bottom = box
    gap = round(STACK_GAP * title.size)
    total = title.height + gap + author.height
    if band == "middle" or total > bottom - top:
        return None
    title_x, author_x = left + (right - left - title.width) // 2, left + (right - left - author.width) // 2
    if band == "top":
        return (title_x, top), (author_x, top + title.height + gap)
    return (title_x, bottom - title.height), (author_x, bottom - total)


def _place(block: SetText, band: str, box: Box) -> tuple[int, int]:
    """Top-left of the block's ink in its band: at the band's outer edge for top and bottom (where a panel
    from the cover's edge stays short), centred in the middle."""
    left, top, right, bottom = box
    x = left + (right - left - block.width) // 2
    if band == "top":
        return x, top
    if band == "bottom":
        return x, bottom - block.height
    return x, top + (bottom - top - block.height) // 2


class _Typesetter:
    """One cover's art, what is known of it, and the text set so far."""

    def __init__(self, canvas: Image.Image, options: TypesetOptions, margin_px: int, attention: Attention,
                 wash: dict[str, Any] | None = None, lettered: bool = False, grow_px: int = 0,
                 reader_check: bool = True) -> None:  # fmt: skip
        self.canvas, self.options, self.margin_px, self.attention = canvas, options, margin_px, attention
        self.reader_check = reader_check  # hold each text to a page reader's per-channel binarisation too
        self.grow_px = grow_px  # how much further than the text's own margin a panel's solid part runs
        self.wash = wash  # the wash over the whole art, once one text has asked for it
        # once a text is drawn, no new wash: it would tint the letters already set (and their contrast)
        self.lettered = lettered
        self.measured: dict[tuple[str, str], tuple[float, float]] = {}  # (role, band): art's detail, salient share
        self.regions = bands(canvas.width, canvas.height, margin_px)
        self.histogram = grey_histogram(np.asarray(canvas))  # for the cover's global threshold
        self._channel_counts: np.ndarray | None = None  # for a page reader's, per channel (when first asked)

    def one_bit(self, patch: np.ndarray, box: Box, new_wash: dict[str, Any] | None, text: tuple[float, int]) -> float:
        """The cover's global (Otsu) threshold with ``patch`` laid over ``box`` (and ``new_wash`` over the art),
        and ``text`` (its grey level, its pixel count) drawn on it."""
        histogram, under = self.histogram, np.asarray(self.canvas.crop(box))
        if new_wash is not None:  # the whole art washed: its histogram from a quarter of its pixels each way
            towards = _wash_towards(new_wash)
            histogram = grey_histogram(_blend(np.asarray(self.canvas)[::4, ::4], towards, new_wash["alpha"])) * 16
            under = _blend(under, towards, new_wash["alpha"])
        under = grey_histogram(under)
        lettered = np.clip(histogram - under, 0, None) + grey_histogram(patch)
        lettered[min(255, max(0, round(text[0])))] += text[1]
        return otsu(lettered)

    def reader_bits(self, patch: np.ndarray, box: Box, new_wash: dict[str, Any] | None,
                    text: tuple[RGB, int]) -> list[tuple[float, int]]:  # fmt: skip
        """A page reader's per-channel thresholds (:func:`reader_thresholds`) of the cover with ``patch`` laid
        over ``box`` (and ``new_wash`` over the art), and ``text`` (its colour, its pixel count) drawn on it."""
        if self._channel_counts is None:
            self._channel_counts = _channel_histograms(np.asarray(self.canvas))
        histograms, under = self._channel_counts, np.asarray(self.canvas.crop(box))
        if new_wash is not None:
            towards = _wash_towards(new_wash)
            histograms = _channel_histograms(_blend(np.asarray(self.canvas)[::4, ::4], towards, new_wash["alpha"])) * 16
            under = _blend(under, towards, new_wash["alpha"])
        lettered = np.clip(histograms - _channel_histograms(under), 0, None) + _channel_histograms(patch)
        for channel in range(3):
            lettered[channel, text[0][channel]] += text[1]
        return reader_thresholds(lettered)

    def applied(self, attempt: _Attempt) -> _Typesetter:
        """A typesetter for the next text, on a copy of the cover with ``attempt`` drawn."""
        canvas = self.canvas.copy()
        attempt.draw_on(canvas)
        wash = attempt.wash or self.wash
        return _Typesetter(canvas, self.options, self.margin_px, self.attention, wash, lettered=True,
                           grow_px=self.grow_px, reader_check=self.reader_check)  # fmt: skip

    def attempts(self, draft: _Draft, band: str, origin: tuple[int, int] | None = None, group: Box | None = None,
                 panel: bool = True) -> list[_Attempt]:  # fmt: skip
        """Every treatment that makes ``draft`` read in ``band``, cheapest (least art hidden) first.

        ``origin``: where the text goes (by default, placed in the band); ``group``: the ink box of all the text
        set together with it, which a panel runs behind; ``panel``: False where a panel would cover text already
        set (a stacked author goes on the title's panel)."""
        block, options = draft.block, self.options
        origin = origin or _place(block, band, self.regions[band])
        ink = _block_box(block, origin)
        reach = max(ring_radius(block.size) + 2, round(block.size * 0.3))
        region = _region(ink, reach, self.canvas.size)
        glyphs = np.asarray(glyph_mask(block, origin, region)) > 0
        ring = glyph_ring(glyphs, block.size)
        art = np.asarray(self.canvas.crop(region))
        detail = mean_detail(detail_map(Image.fromarray(art)), (0, 0, *_box_size(region)))
        if group is not None:  # the panel behind the whole group is solid where any of its ground is busy
            around = np.asarray(self.canvas.crop(_region(group, reach, self.canvas.size)))
            detail = max(detail, mean_detail(detail_map(Image.fromarray(around)), (0, 0, *around.shape[1::-1])))
        salient, on_face = self.attention.share(ink), self.attention.on_face(ink)
        # lettering over the subject, over a face, or across the middle of the art (where subjects usually are,
        # and where page readers lost plain lettering beside the photo: 0.1 -> 0.3 read 4 more of 60 photo
        # covers whole, docs/PERFORMANCE.md): the middle is for art whose top and bottom are worse
        base_cost = 2.0 * salient + (3.0 if on_face else 0.0) + (MIDDLE_COST if band == "middle" else 0.0)
        self.measured[(draft.role, band)] = (round(detail, 5), round(salient, 5))
        forced = options.treatment
        found: list[_Attempt] = []

        def keep(treatment: str, patch: Image.Image, box: Box, record: dict[str, Any] | None, extra: float,
                 new_wash: dict[str, Any] | None = None) -> bool:  # fmt: skip
            """Whether ``patch`` makes the text read; if so, it is one of the found attempts."""
            pixels = np.asarray(patch.crop(_shift(region, (-box[0], -box[1]))))
            after = measure(pixels[ring], options.colours)
            if after.worst1 < options.target_contrast:
                return False
            # the lettering must survive reduction to one bit at the cover's own global threshold (a fax, a
            # photocopy, an e-ink thumbnail, an OCR engine's binarisation): the text on one side and all but
            # 1% of the pixels around it on the other, with room for the threshold to move as the rest is set
            text_grey = float(grey(np.asarray([after.colour], dtype=np.float32))[0])
            threshold = self.one_bit(np.asarray(patch), box, new_wash, (text_grey, int(glyphs.sum())))
            around = grey(pixels[ring]) if ring.any() else np.asarray([255.0 - text_grey])
            if text_grey > threshold:
                if not text_grey > threshold + ONE_BIT_MARGIN or np.percentile(around, 99) > threshold - ONE_BIT_MARGIN:
                    return False
            elif not text_grey < threshold - ONE_BIT_MARGIN or np.percentile(around, 1) < threshold + ONE_BIT_MARGIN:
                return False
            if self.reader_check:
                # and at a page reader's: each channel thresholded on its own, its smaller side taken for ink (on a
                # cover mostly low in blue, a light panel is the blue channel's ink, and black text on it its paper)
                bits = self.reader_bits(np.asarray(patch), box, new_wash, (after.colour, int(glyphs.sum())))
                text_ink = reader_ink(np.asarray([after.colour]), bits, ONE_BIT_MARGIN)[0]
                ring_ink = reader_ink(pixels[ring], bits, -ONE_BIT_MARGIN) if ring.any() else np.zeros(1, bool)
                if not text_ink or ring_ink.mean() > 0.01:
                    return False
            left_detail = mean_detail(detail_map(Image.fromarray(pixels)), (0, 0, *_box_size(region)))
            if treatment in ("none", "wash") and left_detail > options.calm_detail * 1.5:
                return False  # reads by contrast, but the texture would still stop a reader
            rank = TREATMENTS.index(treatment) * 0.15
            drawn = patch.copy()
            drawn.paste(after.colour, _shift(region, (-box[0], -box[1])), glyph_mask(block, origin, region))
            found.append(_Attempt(band, origin, treatment, base_cost + rank + extra, after, round(left_detail, 5),
                                  salient, on_face, drawn, box, record, new_wash))  # fmt: skip
            return True

        # a group set together has a weak line: plain on the calm floor of a photograph, such a title was still lost
        # (97 of 104 covers read with a panel behind every group, 96 with plain lettering on calm ground; at a third
        # of calm_detail, 2 photo floors still lost theirs); on flat ground (a plain colour, a gradient) it reads plain
        calm = detail <= options.calm_detail * (1.0 if group is None else GROUP_CALM)
        if forced == "auto" and calm and self.wash is None:
            keep("none", self.canvas.crop(region), region, None, 0.0)
        if found:  # plain lettering on calm art is the cheapest way in this band
            return found
        if forced in ("auto", "wash") and self.wash is not None and calm:  # the wash the title asked for
            keep("wash", self.canvas.crop(region), region, self.wash, 0.0)
        elif forced in ("auto", "wash") and self.wash is None and not self.lettered and (calm or forced == "wash"):
            self._wash(region, ring, keep)
        if forced in ("auto", "panel") and band != "middle" and panel:  # never a stripe through the middle of the art
            self._panel(block, group or ink, band, detail, keep)
        # (not for a stacked author: a halo beside plain title lettering is what page readers lost most)
        if forced == "shadow" or (forced == "auto" and not found and panel and detail <= 1.5 * options.calm_detail):
            self._shadow(block, origin, region, glyphs, art, keep)
        return sorted(found, key=lambda attempt: attempt.cost)

    def _shadow(self, block: SetText, origin: tuple[int, int], region: Box, glyphs: np.ndarray, art: np.ndarray,
                keep: Any) -> None:  # fmt: skip
        """A soft halo of the colour opposite the text's, solid out to the measured ring and fading past it."""
        ring = glyph_ring(glyphs, block.size)
        light = measure(art[ring], (WHITE,)).worst5 >= measure(art[ring], (BLACK,)).worst5
        halo_colour = BLACK if light else WHITE
        solid = ring_radius(block.size) + 1
        core = grow(glyphs, solid).astype(np.float32)
        soft = np.asarray(Image.fromarray((core * 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(max(1.0, solid * 0.6))), dtype=np.float32) / 255  # fmt: skip
        alpha = np.maximum(core, np.clip(soft * 1.2, 0, 1))[:, :, None] * 0.92
        alpha = np.where(core[:, :, None] > 0, 1.0, alpha)
        patch = Image.fromarray(_blend(art, halo_colour, alpha))
        keep("shadow", patch, region, {"colour": hex_colour(halo_colour), "radius": solid}, 0.0)

    def _wash(self, region: Box, ring: np.ndarray, keep: Any) -> None:
        """A uniform tint over the whole art, as weak as reads (at most ``max_wash``)."""
        options = self.options
        behind = np.asarray(self.canvas.crop(region))[ring]
        alphas = [round(float(a), 2) for a in np.arange(0.1, options.max_wash + 1e-9, 0.05)]
        for towards in (BLACK, WHITE):

            def reads(index: int, towards: RGB = towards) -> bool:
                washed = _blend(behind, towards, alphas[index])
                return measure(washed, options.colours).worst1 >= options.target_contrast + 0.1

            if not alphas or not reads(len(alphas) - 1):
                continue  # not even the strongest wash reads: no weaker one will
            low, high = 0, len(alphas) - 1  # the weakest that reads (contrast grows with the wash)
            while low < high:
                middle = (low + high) // 2
                low, high = (low, middle) if reads(middle) else (middle + 1, high)
            washed = Image.fromarray(_blend(np.asarray(self.canvas.crop(region)), towards, alphas[low]))
            record = {"colour": hex_colour(towards), "alpha": alphas[low]}
            keep("wash", washed, region, record, alphas[low], new_wash=record)  # the whole art is washed if chosen

    def _panel(self, block: SetText, ink: Box, band: str, detail: float, keep: Any) -> None:
        """A full-width panel in from the nearest edge, in the art's palette: solid (or, on calm art, as opaque
        as reads) behind the text and a margin beyond it, then fading into the art."""
        options, (width, height) = self.options, self.canvas.size
        pad = max(ring_radius(block.size) + 2, round(block.size * 0.45)) + self.grow_px
        fade = max(4, round(block.size * 0.9))
        if band == "top":
            solid_rows = (0, min(height, ink[3] + pad))
            box = (0, 0, width, min(height, solid_rows[1] + fade))
        else:
            solid_rows = (max(0, ink[1] - pad), height)
            box = (0, max(0, solid_rows[0] - fade), width, height)
        art = np.asarray(self.canvas.crop(box))
        rows = np.arange(box[1], box[3], dtype=np.float32)
        outside = np.maximum(solid_rows[0] - rows, rows - (solid_rows[1] - 1)).clip(0, None) / fade
        ramp = _smoothstep(1 - outside)[:, None, None]
        under = art[max(0, solid_rows[0] - box[1]) : solid_rows[1] - box[1]]
        salient_extra = 0.5 * self.attention.share(box)  # the art under the panel (its text is counted already)
        for text in options.colours:
            colour = panel_colour(under, text, options.panel_contrast)
            towards = BLACK if relative_luminance(text) > 0.5 else WHITE
            strength = 1.0 if detail > options.calm_detail or self.grow_px else 0.85  # grown: over busy art
            for deeper in (0.0, 0.25, 0.5, 0.75, 1.0):  # the art's hue as long as the lettering survives one bit
                shade = _blend(np.asarray([colour]), towards, deeper)[0]
                patch = Image.fromarray(_blend(art, shade, ramp * strength))
                record = {"colour": hex_colour(tuple(int(v) for v in shade)), "alpha": strength,  # type: ignore[arg-type]
                          "edge": band, "rows": list(solid_rows), "fade": fade}  # fmt: skip
                if keep("panel", patch, box, record, salient_extra):
                    break


def _block_box(block: SetText, origin: tuple[int, int]) -> Box:
    return _shift((0, 0, block.width, block.height), origin)


def _shift(box: Box, origin: tuple[int, int]) -> Box:
    return box[0] + origin[0], box[1] + origin[1], box[2] + origin[0], box[3] + origin[1]


def _region(box: Box, pad: int, size: tuple[int, int]) -> Box:
    return max(0, box[0] - pad), max(0, box[1] - pad), min(size[0], box[2] + pad), min(size[1], box[3] + pad)


def _box_size(box: Box) -> tuple[int, int]:
    return box[2] - box[0], box[3] - box[1]


# ---------------------------------------------------------------------------------------------- entry


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy; transparency over white, as the data loader reads covers (without importing torch)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _sizes(options: TypesetOptions, height: int) -> tuple[int, int]:
    smallest = max(options.min_px, math.ceil(options.title_min * height))
    return smallest, max(smallest, math.floor(options.title_max * height))


def _author_sizes(options: TypesetOptions, height: int, title_size: int) -> tuple[int, int]:
    """At least ``author_min_scale`` of the title (and the absolute minimum), at most ``author_scale`` of it."""
    smallest = max(options.min_px, math.ceil(options.author_min * height),
                   math.ceil(options.author_min_scale * title_size))  # fmt: skip
    return smallest, max(smallest, math.floor(options.author_scale * title_size))


MAX_SIDE = 12000  # an output side above this is a mistake (a 300 dpi print of 40 inches)


def resample(art: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    """``art`` at ``size`` (width, height), resampled once (Lanczos): scaled to cover it and centred, so a
    different aspect is cropped, never stretched. None keeps the art's own size."""
    if size is None or tuple(size) == art.size:
        return art
    width, height = (int(v) for v in size)
    if not (16 <= width <= MAX_SIDE and 16 <= height <= MAX_SIDE):
        raise TypesetError(f"output size {width}x{height}: each side must be 16 to {MAX_SIDE} px")
    scale = max(width / art.width, height / art.height)
    seen_w, seen_h = width / scale, height / scale
    left, top = (art.width - seen_w) / 2, (art.height - seen_h) / 2
    return art.resize((width, height), Image.Resampling.LANCZOS, box=(left, top, left + seen_w, top + seen_h))


def _fit_texts(title: str, title_face: str, author: str | None, author_face: str | None, room: tuple[int, int],
               options: TypesetOptions, height: int) -> tuple[SetText, SetText | None]:  # fmt: skip
    """The title as large as fits, and the author no smaller than ``author_min_scale`` of it: where the author
    does not fit at that size, the title is set smaller until it does."""
    smallest, largest = _sizes(options, height)
    while True:
        block = fit(title, title_face, room, options.title_lines, (smallest, largest), "title",
                    word_space=options.word_space)  # fmt: skip
        if not author or not author_face:
            return block, None
        try:
            author_sizes = _author_sizes(options, height, block.size)
            return block, fit(author, author_face, room, options.author_lines, author_sizes,
                              "author", word_space=options.word_space)  # fmt: skip
        except TextDoesNotFit:
            if block.size <= smallest:
                raise
            largest = max(smallest, block.size - max(1, block.size // 12))


def _record(draft: _Draft, attempt: _Attempt, detail: dict[str, float], salient: dict[str, float]) -> TextBlock:
    block, origin, found = draft.block, attempt.origin, attempt.found
    return TextBlock(
        role=draft.role, text=draft.text, lines=block.lines,
        line_boxes=tuple(_shift(box, origin) for box in block.line_boxes),
        baselines=tuple(origin[1] + y for _, y in block.origins),
        words=tuple((word, origin[0] + x + offset, origin[1] + y)
                    for pieces, (x, y) in zip(block.pieces, block.origins, strict=True) for word, offset in pieces),
        box=_block_box(block, origin), band=attempt.band, band_detail=detail, band_salient=salient,
        detail=attempt.detail,
        salient_share=round(attempt.salient, 4), on_face=attempt.on_face,
        font_file=block.face, font_size=block.size, colour=hex_colour(found.colour),
        contrast=round(found.worst5, 3), contrast_worst=round(found.worst1, 3),
        background_luminance=(round(found.luminance[0], 5), round(found.luminance[1], 5)),
        treatment=attempt.treatment, treatment_detail=attempt.record,
    )  # fmt: skip


def _choose(setter: _Typesetter, draft: _Draft, bands_left: Sequence[str]) -> list[_Attempt]:
    """Every way ``draft`` reads in ``bands_left``, cheapest first."""
    found = sorted((a for band in bands_left for a in setter.attempts(draft, band)), key=lambda a: a.cost)
    if not found:
        raise ContrastUnreachable(f"the {draft.role} reaches {setter.options.target_contrast}:1 in no place with "
                                  f"treatment {setter.options.treatment!r}; use treatment 'auto'")  # fmt: skip
    return found


# On art busy all over, each panel's solid part grows (a share of the height added to its margin) by what is left
# busy past BUSY_MAX, shared among the panels, in steps of GROWTH_STEP, until the panels' growth reaches
# GROWTH_MAX of the height in all (a stacked title and author have one panel, which may grow to all of it)
GROWTH_STEP = 0.05
GROWTH_MAX = 0.5


def _next_growth(grow: float, busy: float, panels: int) -> float | None:
    """The growth of each panel to try after ``grow`` left ``busy`` of the cover busy, or None to stop."""
    if panels == 0 or busy <= BUSY_MAX or grow * panels >= GROWTH_MAX - 1e-9:
        return None
    steps = max(1, math.ceil((busy - BUSY_MAX) / panels / GROWTH_STEP - 1e-9))
    return min(GROWTH_MAX / panels, grow + steps * GROWTH_STEP)


def _lay_out(setter: _Typesetter, title_draft: _Draft,
             author_draft: _Draft | None) -> tuple[_Attempt, _Typesetter, _Attempt | None]:  # fmt: skip
    """The title's and the author's places and treatments, chosen together: the cheapest pair. Where either has
    a weak line (:func:`weak_line`; ``stacking`` "weak"), or always (``stacking`` "always"), the two are set as one
    group in the top or bottom band, the author on the title's panel, wherever a group reads; apart otherwise."""
    Candidate = tuple[float, _Attempt, _Typesetter, _Attempt | None]
    stacking = setter.options.stacking
    if author_draft is not None and (stacking == "always" or (stacking == "weak" and (
            weak_line(title_draft.block) or weak_line(author_draft.block)))):  # fmt: skip
        stacked = _stacked(setter, title_draft, author_draft)
        if stacked is not None:
            return stacked[1], stacked[2], stacked[3]
    best: Candidate | None = None
    seen_bands: set[str] = set()
    for attempt in _choose(setter, title_draft, BANDS):
        if attempt.band in seen_bands:  # the cheapest way in each band is enough to pair the author with
            continue
        seen_bands.add(attempt.band)
        after = setter.applied(attempt)
        candidate: Candidate = (attempt.cost, attempt, after, None)
        if author_draft is not None:
            left = [band for band in BANDS if band != attempt.band]
            author_options = _choose(after, author_draft, left)
            candidate = (attempt.cost + 0.5 * author_options[0].cost, attempt, after, author_options[0])
        if best is None or candidate[0] < best[0]:
            best = candidate
    assert best is not None
    return best[1], best[2], best[3]


def _stacked(setter: _Typesetter, title_draft: _Draft,
             author_draft: _Draft) -> tuple[float, _Attempt, _Typesetter, _Attempt] | None:  # fmt: skip
    """The cheapest way to set the title and the author as one group (:func:`stack_origins`), or None."""
    best: tuple[float, _Attempt, _Typesetter, _Attempt] | None = None
    for band in ("top", "bottom"):
        origins = stack_origins(title_draft.block, author_draft.block, band, setter.regions[band])
        if origins is None:
            continue
        title_box, author_box = _block_box(title_draft.block, origins[0]), _block_box(author_draft.block, origins[1])
        group = (min(title_box[0], author_box[0]), min(title_box[1], author_box[1]),
                 max(title_box[2], author_box[2]), max(title_box[3], author_box[3]))  # fmt: skip
        for attempt in setter.attempts(title_draft, band, origins[0], group):
            after = setter.applied(attempt)
            author_options = after.attempts(author_draft, band, origins[1], panel=False)
            if author_options:
                cost = attempt.cost + 0.5 * author_options[0].cost
                if best is None or cost < best[0]:
                    best = (cost, attempt, after, author_options[0])
                break
    return best


# Where the finished cover's page read (see :func:`typeset`) does not find a text: the art is washed, step by step,
# before the layout is chosen again on it; (towards, alpha): the art's mean colour, or white. Tesseract lost the
# whole page over slanted colour stripes, wavy lines, noise on a gradient, a relief map and scans of print (11 of
# 103 covers of the unseen set) and read 9 of them after one of these; which step reads is not monotonic
# (one stripes cover read at 0.4 and 0.6 and not at 0.8), so each is tried in turn (docs/PERFORMANCE.md).
ART_WASHES: tuple[tuple[str, float], ...] = (("mean", 0.4), ("mean", 0.6), ("mean", 0.8), ("white", 0.85))
NEAR_READ = 0.75  # a text read at least this similar (but not exactly) was found and misread: its letters are at fault


def _wash_art(canvas: Image.Image, towards: str, alpha: float) -> tuple[Image.Image, dict[str, Any]]:
    pixels = np.asarray(canvas)
    colour = WHITE if towards == "white" else tuple(int(v) for v in np.rint(pixels.reshape(-1, 3).mean(axis=0)))
    washed = Image.fromarray(_blend(pixels, colour, alpha))  # type: ignore[arg-type]
    return washed, {"colour": hex_colour(colour), "alpha": alpha}  # type: ignore[arg-type]


def resolve_page_reader(reader: Any = "auto") -> tuple[Any, str | None]:
    """The reader :func:`typeset` checks a finished cover with, and why there is none: ``"auto"`` loads
    Debian's tesseract with its Latin-script model reading the whole page (:func:`cover_hpc.metrics.ocr.
    load_page_reader`), None where it is not installed; None checks nothing; any object with ``read(image)``."""
    if reader is None:
        return None, "no page reader asked for"
    if not isinstance(reader, str):
        return reader, None
    if reader != "auto":
        raise ValueError(f"page_reader: got {reader!r}; 'auto', None or a reader object")
    from cover_hpc.metrics import ocr

    try:
        return ocr.load_page_reader(), None
    except ocr.OcrUnavailable as error:
        return None, str(error)


# what a reader may write for the same mark: typographic quotes and dashes as ASCII (a page read, not a proof)
_SAME_MARKS = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})
PAGE_READ_KEPT = 1000  # characters of what the page reader read kept in the record (art that is print reads long)


def _page_text(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).translate(_SAME_MARKS).split())


def found_in(text: str, read: str) -> bool:
    """Whether ``text`` is in ``read`` exactly, white space, compatibility forms (ligatures) and typographic
    quotes and dashes aside (each line of a text is read as a line)."""
    return _page_text(text) in _page_text(read)


def not_latin(texts: Sequence[str]) -> list[str]:
    """The letters of ``texts`` outside the Latin script, which a Latin-script page reader cannot read."""
    return sorted(
        {c for text in texts for c in text if c.isalpha() and not unicodedata.name(c, "").startswith("LATIN")}
    )


def nearest_read(text: str, read: str) -> float:
    """How close the nearest run of words in ``read`` is to ``text`` (1 - edit distance / length)."""
    from cover_hpc.metrics import ocr

    wanted, words = text.split(), read.split()
    best = 0.0
    for start in range(max(1, len(words) - len(wanted) + 1)):
        window = " ".join(words[start : start + len(wanted)])
        best = max(best, 1 - ocr.levenshtein(" ".join(wanted), window) / max(1, len(" ".join(wanted))))
    return best


@dataclass
class _Composed:
    image: Image.Image
    layout: Layout


def _compose(canvas: Image.Image, art: Image.Image, title: str, author: str | None, fonts: FontSet,
             options: TypesetOptions, attention: Attention) -> _Composed:  # fmt: skip
    """The title and author fitted in ``fonts`` and laid out over ``canvas`` (the art at its output size)."""
    width, height = canvas.size
    title_face = choose_face(title, fonts, "title")
    author_face = choose_face(author, fonts, "author") if author else None
    margin_px = math.ceil(options.margin * width)
    regions = bands(width, height, margin_px)
    title_block, author_block = _fit_texts(title, title_face, author, author_face, _box_size(regions["top"]),
                                           options, height)  # fmt: skip
    title_draft = _Draft("title", title, title_block)
    author_draft = _Draft("author", author, author_block) if author_block is not None and author else None
    laid: tuple[_Typesetter, _Attempt, _Typesetter, _Attempt | None] | None = None
    grow: float | None = 0.0
    reader_check = True  # off only where no layout at all survives a page reader's per-channel binarisation
    while grow is not None:  # on art busy all over, panels grow until enough of the cover is calm
        try:
            setter = _Typesetter(canvas, options, margin_px, attention, grow_px=round(grow * height),
                                 reader_check=reader_check)  # fmt: skip
            chosen, after, author_attempt = _lay_out(setter, title_draft, author_draft)
        except TypesetError:
            if laid is None and reader_check:
                reader_check = False
                continue
            if laid is None:  # no layout at all: the error is the cover's
                raise
            break  # larger panels leave no place that reads: the last layout stands
        laid = (setter, chosen, after, author_attempt)
        finished = after.canvas.copy()
        if author_attempt is not None:
            author_attempt.draw_on(finished)
        panels = [a for a in (chosen, author_attempt) if a is not None and a.treatment == "panel"]
        placed = ((title_draft, chosen), (author_draft, author_attempt))
        lettering = [_block_box(draft.block, a.origin) for draft, a in placed if draft is not None and a is not None]
        grow = _next_growth(grow, busy_share(finished, lettering) if panels else 0.0, len(panels))
    assert laid is not None
    setter, chosen, after, author_attempt = laid
    image = after.canvas.copy()
    if author_attempt is not None:
        author_attempt.draw_on(image)

    def figures(measured: dict[tuple[str, str], tuple[float, float]], role: str, which: int) -> dict[str, float]:
        return {band: values[which] for (own, band), values in measured.items() if own == role}

    title_record = _record(title_draft, chosen, figures(setter.measured, "title", 0),
                           figures(setter.measured, "title", 1))  # fmt: skip
    author_record = None
    if author_attempt is not None and author_draft is not None:
        author_record = _record(author_draft, author_attempt, figures(after.measured, "author", 0),
                                figures(after.measured, "author", 1))  # fmt: skip
    layout = Layout(width, height, margin_px, fonts.role, title_record, author_record, art.size,
                    round(attention.area, 4), attention.faces, setter.reader_check)  # fmt: skip
    return _Composed(image, layout)


def typeset(image: Image.Image, title: str, *, author: str | None = None, genres: Sequence[str] = (),
            font: str | None = None, options: TypesetOptions | None = None,
            size: tuple[int, int] | None = None, page_reader: Any = "auto") -> TypesetResult:  # fmt: skip
    """Typeset ``title`` (and ``author``) over ``image``; the image passed in is left as it is.

    ``size``: the finished cover's (width, height); the art is resampled once to it and the lettering set at
    it. ``font``: None (by ``genres``), a role (serif, sans, display) or a font file. Raises a
    :class:`TypesetError` (text that does not fit, a missing glyph) rather than return a poor cover.

    Where each text goes and what goes under it is chosen together: every band (top, middle, bottom) and
    every treatment (none on calm art, a shadow, a wash over the whole art, a panel in from the nearest edge)
    that makes the worst 1% of the pixels around the glyphs reach the target contrast on art left calm
    enough to read, and keeps the text and the pixels around it apart when the cover is reduced to one bit
    (in grey, and as a page reader does it, channel by channel: ``Layout.page_reader_binarised``), is
    scored by how much of the salient region and of any face it covers and how much art it hides; the
    cheapest wins, the title first and the author in the best band left, or (``stacking``) the two as one
    group in the top or bottom band. On art busy all over, the panels then grow (see :func:`busy_share`).

    ``page_reader`` (see :func:`resolve_page_reader`; by default tesseract's Latin-script model where installed) then
    reads the finished cover whole, as a page: where a text is not found in what it read, the art's
    letters are blamed when every text was found but misread (capital I read as l: the lettering is set
    again in another genre's faces), and the art otherwise: it is washed (``ART_WASHES``) and the layout
    chosen again, until a cover reads. None reading, the first layout stands. ``Layout.page_read`` records
    what was read, what was changed (``Layout.art_wash``, ``genre_role``) and how many covers were tried.
    """
    options = options or TypesetOptions()
    started = time.perf_counter()
    art = to_rgb(image)
    canvas = resample(art, size)
    title = clean_text(title, "title")
    author = clean_text(author, "author") if author and author.strip() else None
    fonts = font_set(genres, font)
    attention = Attention.of(canvas)
    laid_out = time.perf_counter()
    composed = _compose(canvas, art, title, author, fonts, options, attention)
    rendered = time.perf_counter()
    reader, why_not = resolve_page_reader(page_reader)
    foreign = not_latin([text for text in (title, author) if text])
    if reader is not None and foreign:
        reader, why_not = None, f"the page reader reads the Latin script only, not {''.join(foreign[:8])}"
    if reader is None:
        layout = dataclasses.replace(composed.layout, page_read={"checked": False, "why": why_not})
    else:
        composed = _checked(composed, reader, canvas, art, title, author, fonts, font, options, attention)
        layout = composed.layout
    timings = {
        "layout": (laid_out - started) * 1e3,
        "render": (rendered - laid_out) * 1e3,
        "page_read": (time.perf_counter() - rendered) * 1e3,
    }  # reading it, and any covers laid out again
    return TypesetResult(composed.image, layout, timings)


def _read(reader: Any, image: Image.Image) -> tuple[str | None, str | None]:
    """What ``reader`` reads on ``image``, or the reason it could not read (it failed, it timed out)."""
    try:
        return str(reader.read(image)), None
    except Exception as error:  # a reader that fails leaves the cover as designed, with the reason
        return None, f"{type(error).__name__}: {error}"


def _checked(first: _Composed, reader: Any, canvas: Image.Image, art: Image.Image, title: str, author: str | None,
             fonts: FontSet, font: str | None, options: TypesetOptions, attention: Attention) -> _Composed:  # fmt: skip
    """``first`` read whole by ``reader``; where a text is not found, the changes ``typeset`` describes, in turn."""
    texts = [text for text in (title, author) if text]
    name = getattr(reader, "description", None) or getattr(reader, "name", type(reader).__name__)
    read, error = _read(reader, first.image)
    tries = 1

    def record(composed: _Composed, read: str | None, wash: dict[str, Any] | None, error: str | None = None,
               checked: bool = True) -> _Composed:  # fmt: skip
        found = {role: found_in(text, read or "") for role, text in zip(("title", "author"), texts, strict=False)}
        if read is not None and len(read) > PAGE_READ_KEPT:
            read = read[:PAGE_READ_KEPT] + "\u2026"
        page = {"checked": checked, "reader": name, "read": read, "found": found,
                "reads": checked and all(found.values()), "tries": tries, "error": error}  # fmt: skip
        return _Composed(composed.image, dataclasses.replace(composed.layout, page_read=page, art_wash=wash))

    if error is not None:
        return record(first, read, None, error, checked=False)
    if all(found_in(text, read or "") for text in texts):
        return record(first, read, None)
    misread = all(nearest_read(text, read or "") >= NEAR_READ for text in texts)
    other = "serif" if fonts.role != "serif" else "sans"
    steps: list[tuple[FontSet, tuple[str, float] | None]] = [(fonts, wash) for wash in ART_WASHES]
    if font is None:  # faces chosen by genre, not by the user
        face_step = (font_set((), other), None)
        steps.insert(0 if misread else len(steps), face_step)
    for step_fonts, wash in steps:
        ground, wash_record = _wash_art(canvas, *wash) if wash else (canvas, None)
        try:
            composed = _compose(ground, art, title, author, step_fonts, options, attention)
        except TypesetError:
            continue  # the other faces lack a character, or nothing fits: the next change
        again, error = _read(reader, composed.image)
        tries += 1
        if error is not None:  # a reader that fails (or hangs past its timeout) once is not asked again
            return record(first, read, None, error)
        if all(found_in(text, again or "") for text in texts):
            return record(composed, again, wash_record)
    return record(first, read, None)  # nothing read better: the cover as first designed, marked unread


def typeset_file(source: str | Path, out: str | Path, *, title: str, author: str | None = None,
                 genres: Sequence[str] = (), font: str | None = None, options: TypesetOptions | None = None,
                 size: tuple[int, int] | None = None, page_reader: Any = "auto") -> TypesetResult:  # fmt: skip
    """Read ``source``, typeset, and write ``out`` whole (nothing is written when a TypesetError is raised)."""
    from cover_hpc.store.atomic import save_image

    try:
        with Image.open(source) as image:
            image.load()
            result = typeset(image, title, author=author, genres=genres, font=font, options=options, size=size,
                             page_reader=page_reader)  # fmt: skip
    except Image.DecompressionBombError as error:  # Pillow's guard against a small file of huge pixels
        raise TypesetError(f"{error} (a cover is typically under 2 MP); resize the image first") from None
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_image(result.image, Path(out))
    return result


# ------------------------------------------------------------------------------------------ read-back


def text_crop(result: TypesetResult, block: TextBlock) -> Image.Image:
    """One text block as OCR should see it: cropped with a margin, then centred on a square of the colour
    around it. OCR detectors rescale an image by its sides; a long thin crop would be blown up several
    times, and the detector then splits words into fragments."""
    pad = max(8, round(block.font_size * 0.4))
    crop = result.image.crop(_region(block.box, pad, result.image.size))
    pixels = np.asarray(crop)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    side = max(crop.size)
    square = Image.new("RGB", (side, side), tuple(int(v) for v in np.median(border, axis=0)))
    square.paste(crop, ((side - crop.width) // 2, (side - crop.height) // 2))
    return square


# Where a typeset line is read from, in em of its size: from READ_ABOVE above its baseline to READ_BELOW below
# it (further where the ink reaches further), and READ_SIDE beyond its ink on either side. The recogniser
# scales what it is given to 48 px high, so this fixes how large the type is in what it sees whatever the
# line holds: a crop tight around a line in capitals blows the capitals up to the full height, and PP-OCRv4
# then drops the spaces between words (docs/PERFORMANCE.md, "Typesetting").
READ_ABOVE, READ_BELOW, READ_SIDE = 0.8, 0.28, 0.15


def line_crops(result: TypesetResult, block: TextBlock, above: float = READ_ABOVE, below: float = READ_BELOW,
               side: float = READ_SIDE) -> list[Image.Image]:  # fmt: skip
    """Each line of a text block cropped from the finished cover as the recogniser should see it."""
    size, (width, height) = block.font_size, result.image.size
    crops = []
    for (left, top, right, bottom), baseline in zip(block.line_boxes, block.baselines, strict=True):
        top, bottom = min(top, baseline - round(above * size)), max(bottom, baseline + round(below * size))
        pad = round(side * size)
        crops.append(result.image.crop((max(0, left - pad), max(0, top), min(width, right + pad), min(height, bottom))))
    return crops


def read_back(result: TypesetResult, engine: Any = "auto", *, second: Any = "auto",
              frame: tuple[float, float, float] = (READ_ABOVE, READ_BELOW, READ_SIDE)) -> dict[str, Any]:  # fmt: skip
    """OCR each typeset text from the finished cover: what was read, its similarity, exact match.

    ``engine``: an engine from :func:`cover_hpc.metrics.ocr.load_ocr`, or the name to load one with. The layout is
    known, so each line of each text is read on its own from :func:`line_crops` (recognition only, one
    batch per text) and the lines joined by spaces; the title is compared with the title alone. ``frame``:
    the crop's reach above and below the baseline and to the sides, in em (calibration). An engine without
    ``read_lines`` reads each text from :func:`text_crop`, finding its lines itself.

    ``second``: a second reader for each line the first did not read exactly (what each line should
    say is known from the layout): ``"auto"`` loads :func:`cover_hpc.metrics.ocr.load_second_reader`, None
    reads with the first engine alone. A line counts as read when either reader reads it exactly;
    otherwise the first engine's reading stands. So a cover fails the check only when neither of two
    recognisers of different families reads one of its lines: a glyph missing, clipped or lost in
    its background fails both, a letter one recogniser has no class for fails only that one. Per
    text: ``read`` (the readings used), ``similarity``, ``exact``, ``first`` (the first engine's
    reading and whether it alone was exact) and ``readers`` (whose reading each line used).
    """
    from cover_hpc.metrics import ocr

    reader = ocr.load_ocr(engine) if isinstance(engine, str) else engine
    read_lines = getattr(reader, "read_lines", None)
    if isinstance(second, str):
        second = ocr.load_second_reader() if second == "auto" else ocr.load_ocr(second)
    if second is not None and (read_lines is None or second.name == reader.name):
        second = None  # nothing to confirm line by line, or the same recogniser again
    record: dict[str, Any] = {"engine": reader.name, "second": second.name if second is not None else None}
    for block in (result.layout.title, result.layout.author):
        if block is None:
            continue
        if read_lines is None:
            read = reader.read(text_crop(result, block))
            first, readers = read, [reader.name]
        else:
            crops = line_crops(result, block, *frame)
            lines = list(read_lines(crops))
            first, readers = " ".join(lines), [reader.name] * len(lines)
            if second is not None:
                for index, (expected, got) in enumerate(zip(block.lines, lines, strict=True)):
                    if ocr.exact_match(expected, got):
                        continue
                    (again,) = second.read_lines([crops[index]])
                    if ocr.exact_match(expected, again):
                        lines[index], readers[index] = again, second.name
            read = " ".join(lines)
        similarity = round(ocr.title_similarity(block.text, read), 4)
        record[block.role] = {"read": read, "similarity": similarity, "exact": ocr.exact_match(block.text, read),
                              "first": {"read": first, "exact": ocr.exact_match(block.text, first)},
                              "readers": readers}  # fmt: skip
    return record
