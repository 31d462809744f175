"""Finished covers: a book's title and author typeset over generated art, placed and coloured to be read.

No model is involved: :func:`typeset` takes any image. The rules (issue 13):

- **Placement**: the title goes in the calmest of three bands (top, middle, bottom thirds of the area inside
  the margins), the one with the least detail under the text box: the mean Sobel gradient magnitude of the
  luma (PosterLayout's "Rea"). The author goes in the calmest band left.
- **Fit**: the title is wrapped to at most 3 lines (balanced breaks) and set as large as fits inside margins
  of at least 6% of the width; the author is smaller. Long titles shrink; words are never cut or hyphenated.
  Below the minimum legible size, :class:`TextDoesNotFit` is raised and no cover is made.
- **Colour**: the colour with the highest WCAG 2.x contrast (L1 + 0.05) / (L2 + 0.05) against the
  background pixels behind the glyphs (the glyph mask, grown by a few pixels), measured against both the
  darkest and the lightest of them. Below 4.5:1, a soft full-width scrim band (or an outline, where the
  scrim would have to pass ``max_scrim_alpha`` on art that is not busy) is added and the contrast measured
  again on the pixels as they then are. Art busier than ``max_detail`` under the text gets a scrim that
  calms it even where the colour reads. A cover under 4.5:1 is never returned (:class:`ContrastUnreachable`).
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
from PIL import Image, ImageDraw, ImageFont

from cover_hpc.spec.vocab import FONT_ROLES

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]  # left, top, right, bottom (right and bottom exclusive), in pixels
WHITE: RGB = (255, 255, 255)
BLACK: RGB = (0, 0, 0)
BANDS = ("top", "middle", "bottom")
Remedy = Literal["auto", "scrim", "outline"]


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
    """Text still under the target after its scrim or outline: the cover is refused, never returned below it."""


def describe_character(character: str) -> str:
    return f"{character!r} (U+{ord(character):04X} {unicodedata.name(character, 'unnamed character')})"


# ------------------------------------------------------------------------------------- options and result


@dataclass(frozen=True, kw_only=True)
class TypesetOptions:
    """Sizes are fractions of the image (``margin`` of the width; the rest of the height)."""

    margin: float = 0.06  # each side; the title's ink stays inside
    title_lines: int = 3
    author_lines: int = 2
    title_min: float = 0.028  # smallest legible title: 33 px at 1152 px high (18 pt on a 9-inch-high print)
    title_max: float = 0.14  # a one-word title stops growing here
    author_min: float = 0.018  # 21 px at 1152 px high (12 pt printed)
    author_scale: float = 0.55  # the author at most this fraction of the title's size
    min_px: int = 12  # no text below this, whatever the image size
    target_contrast: float = 4.5  # WCAG AA for normal text; may be raised (7 for AAA), never lowered
    max_scrim_alpha: float = 0.75  # contrast that needs a stronger scrim gets an outline instead (calm art only)
    max_detail: float = 0.08  # busier art under the text (mean Sobel magnitude) is calmed by a scrim
    remedy: Remedy = "auto"  # what is added below the target: auto (scrim, else outline), scrim, outline
    colours: tuple[RGB, ...] = (WHITE, BLACK)  # text colour candidates; the best contrast wins
    word_space: float = 0.0  # least space between words, in em; 0 keeps the font's own (0.25-0.33 em)

    def __post_init__(self) -> None:
        problems = [
            f"margin: got {self.margin}; must be at least 0.06 (6% of the width)" if self.margin < 0.06 else "",
            f"target_contrast: got {self.target_contrast}; must be at least 4.5" if self.target_contrast < 4.5 else "",
            f"title_lines: got {self.title_lines}; must be 1 to 3" if not 1 <= self.title_lines <= 3 else "",
            f"remedy: got {self.remedy!r}; must be auto, scrim or outline"
            if self.remedy not in ("auto", "scrim", "outline") else "",
            "colours: give at least one colour" if not self.colours else "",
            f"max_scrim_alpha: got {self.max_scrim_alpha}; must be in (0, 1]"
            if not 0 < self.max_scrim_alpha <= 1 else "",
            f"max_detail: got {self.max_detail}; must be greater than 0" if self.max_detail <= 0 else "",
            f"word_space: got {self.word_space}; must be 0 or more" if self.word_space < 0 else "",
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
    line_boxes: tuple[Box, ...]  # ink box of each line, outline included
    baselines: tuple[int, ...]  # y of each line's baseline
    box: Box  # their union
    band: str
    band_detail: dict[str, float]  # mean Sobel magnitude under this box in each band it could go in
    detail: float  # the same under the box as finished (after a scrim), glyphs left out
    font_file: str
    font_size: int
    colour: str  # "#rrggbb"
    contrast: float  # min of the two below: the figure that must reach the target
    contrast_darkest: float  # against the darkest background pixel under the glyphs
    contrast_lightest: float  # against the lightest one
    background_luminance: tuple[float, float]  # WCAG relative luminance of those two pixels
    remedy: str  # none, scrim or outline
    scrim: dict[str, Any] | None  # colour, alpha, rows it covers at full strength, feather
    outline: dict[str, Any] | None  # colour, width in pixels


@dataclass(frozen=True)
class Layout:
    width: int
    height: int
    margin_px: int
    genre_role: str  # serif, sans, display or "custom" (a font file given)
    title: TextBlock
    author: TextBlock | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def contrast(self) -> float:
        return min(block.contrast for block in (self.title, self.author) if block is not None)


@dataclass(frozen=True)
class TypesetResult:
    image: Image.Image
    layout: Layout
    timings_ms: dict[str, float] = dataclasses.field(default_factory=dict)  # layout (fit, place), render


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


def best_colour(darkest: float, lightest: float, colours: Sequence[RGB]) -> tuple[RGB, float, float]:
    """The colour whose worse contrast against the darkest and lightest background wins; and both contrasts."""
    scored = []
    for colour in colours:
        own = relative_luminance(colour)
        scored.append((min(contrast_ratio(own, darkest), contrast_ratio(own, lightest)), colour, own))
    _, colour, own = max(scored, key=lambda item: item[0])
    return colour, contrast_ratio(own, darkest), contrast_ratio(own, lightest)


def hex_colour(colour: RGB) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


# ---------------------------------------------------------------------------------------------- fonts

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
Faces = tuple[str, str]  # file names of the title face and the author face
ROLE_FACES: dict[str, tuple[Faces, ...]] = {
    # first installed pair wins; Debian packages: fonts-urw-base35, fonts-liberation, fonts-dejavu-*
    "serif": (("P052-Bold.otf", "P052-Roman.otf"), ("LiberationSerif-Bold.ttf", "LiberationSerif-Regular.ttf"),
              ("DejaVuSerif-Bold.ttf", "DejaVuSerif.ttf")),
    "sans": (("LiberationSans-Bold.ttf", "LiberationSans-Regular.ttf"),
             ("NimbusSans-Bold.otf", "NimbusSans-Regular.otf"), ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf")),
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


def outline_width(size: int) -> int:
    return max(2, round(size * 0.06))


def grow_radius(size: int) -> int:
    """Pixels around each glyph that count as behind it: the anti-aliased edge and the art touching it."""
    return max(1, round(size * 0.025))


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


def _best_breaks(words: Sequence[tuple[str, str]], lines: int, width_of: Any) -> tuple[tuple[str, ...], float]:
    """The break into ``lines`` lines whose widest line is narrowest (balanced lines), and that width."""
    count = len(words)
    best: tuple[float, tuple[int, ...]] | None = None
    for cuts in _cuts(count, lines):
        bounds = (0, *cuts, count)
        widest = max(width_of(a, b) for a, b in itertools.pairwise(bounds))
        if best is None or widest < best[0]:
            best = (widest, bounds)
    assert best is not None
    bounds = best[1]
    return tuple(_join(words[a:b]) for a, b in itertools.pairwise(bounds)), best[0]


def fit(text: str, face: str, box: tuple[int, int], max_lines: int, sizes: tuple[int, int], role: str,
        outline: bool = False, word_space: float = 0.0) -> SetText:  # fmt: skip
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
    estimates = []
    for count in range(1, min(max_lines, len(words)) + 1):
        lines, widest = _best_breaks(words, count, width_of)
        stroke_share = 0.12 if outline else 0.0
        by_width = box[0] / (widest / REFERENCE_SIZE + stroke_share)
        by_height = box[1] / ((count - 1) * LEADING + 1.15 + stroke_share)
        estimates.append((min(by_width, by_height, largest), -count, lines))
    best: SetText | None = None
    for estimate, _, lines in sorted(estimates, reverse=True):
        if best is not None and estimate < best.size:
            break
        candidate = _shrink_to_fit(lines, face, math.floor(estimate), box, smallest, outline, word_space)
        if candidate is not None and (best is None or candidate.size > best.size):
            best = candidate
    if best is None:
        raise TextDoesNotFit(role, text, max(e[0] for e in estimates), smallest, max_lines)
    return best


def _shrink_to_fit(lines: Sequence[str], face: str, size: int, box: tuple[int, int], smallest: int,
                   outline: bool, word_space: float) -> SetText | None:  # fmt: skip
    while size >= smallest:
        block = set_lines(lines, face, size, outline_width(size) if outline else 0, word_space)
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


def mean_detail(detail: np.ndarray, box: Box) -> float:
    left, top, right, bottom = box
    return float(detail[top:bottom, left:right].mean())


def place(block: SetText, band: Box) -> tuple[int, int]:
    """Top-left of the block's ink, centred in the band."""
    left, top, right, bottom = band
    return left + (right - left - block.width) // 2, top + (bottom - top - block.height) // 2


def _shift(box: Box, origin: tuple[int, int]) -> Box:
    return box[0] + origin[0], box[1] + origin[1], box[2] + origin[0], box[3] + origin[1]


def _block_box(block: SetText, origin: tuple[int, int]) -> Box:
    return _shift((0, 0, block.width, block.height), origin)


def _choose_band(detail: np.ndarray, block: SetText, candidates: dict[str, Box]) -> tuple[str, dict[str, float]]:
    scores = {
        name: round(mean_detail(detail, _block_box(block, place(block, box))), 5) for name, box in candidates.items()
    }
    return min(scores, key=lambda name: scores[name]), scores  # ties: the first band (top)


# -------------------------------------------------------------------------------- glyphs, scrim, outline


def _region(box: Box, pad: int, size: tuple[int, int]) -> Box:
    return max(0, box[0] - pad), max(0, box[1] - pad), min(size[0], box[2] + pad), min(size[1], box[3] + pad)


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
    """Boolean dilation by a square of side 2 * radius + 1 (separable, in numpy)."""
    out = mask.copy()
    for axis in (0, 1):
        source, grown = out, out.copy()
        for step in range(1, radius + 1):
            ahead = [slice(None)] * 2
            behind = [slice(None)] * 2
            ahead[axis], behind[axis] = slice(step, None), slice(None, -step)
            grown[tuple(ahead)] |= source[tuple(behind)]
            grown[tuple(behind)] |= source[tuple(ahead)]
        out = grown
    return out


@dataclass(frozen=True)
class Measure:
    colour: RGB
    darkest: float  # luminance of the darkest background pixel under the glyphs
    lightest: float
    contrast_darkest: float
    contrast_lightest: float

    @property
    def contrast(self) -> float:
        return min(self.contrast_darkest, self.contrast_lightest)


def measure(canvas: Image.Image, region: Box, under: np.ndarray, colours: Sequence[RGB]) -> Measure:
    """The best text colour against the canvas pixels under ``under`` (a mask of ``region``), and its contrast."""
    pixels = np.asarray(canvas.crop(region))[under]
    lum = luminance(pixels)
    darkest, lightest = float(lum.min()), float(lum.max())
    colour, against_darkest, against_lightest = best_colour(darkest, lightest, colours)
    return Measure(colour, darkest, lightest, against_darkest, against_lightest)


def _blend(pixels: np.ndarray, towards: RGB, alpha: np.ndarray | float) -> np.ndarray:
    mixed = pixels.astype(np.float32) * (1 - alpha) + np.asarray(towards, dtype=np.float32) * alpha
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def scrim_needed(pixels: np.ndarray, options: TypesetOptions) -> tuple[float, RGB]:
    """The least scrim alpha (and its colour, black or white) that lifts the best text colour to the target.

    Searched on the pixels that bind (the lightest for a dark scrim, the darkest for a light one); the
    caller measures the result on every pixel and strengthens the scrim if rounding left it short.
    """
    lum = luminance(pixels)
    keep = min(len(lum), 4096)
    results = []
    text_luminances = [relative_luminance(colour) for colour in options.colours]
    for towards, sign in ((BLACK, -1), (WHITE, 1)):
        # a dark scrim carries the lightest text colour, and the lightest pixels bind it; a light one the reverse
        own = max(text_luminances) if towards == BLACK else min(text_luminances)
        subset = pixels[np.argpartition(sign * lum, keep - 1)[:keep]]

        def worst(alpha: float, subset: np.ndarray = subset, towards: RGB = towards, own: float = own) -> float:
            blended = luminance(_blend(subset, towards, alpha))
            return min(contrast_ratio(own, float(blended.min())), contrast_ratio(own, float(blended.max())))

        if worst(1.0) < options.target_contrast:
            continue
        low, high = 0.0, 1.0
        for _ in range(12):
            middle = (low + high) / 2
            low, high = (low, middle) if worst(middle) >= options.target_contrast + 0.02 else (middle, high)
        results.append((high, towards))
    if not results:
        raise ContrastUnreachable(f"no text colour of {options.colours} reaches {options.target_contrast}:1 even on a "
                                  "solid scrim; add black or white to the colours")  # fmt: skip
    return min(results)


def apply_scrim(canvas: Image.Image, base: Image.Image, rows: tuple[int, int], feather: int, alpha: float,
                towards: RGB) -> None:  # fmt: skip
    """A full-width band over ``rows`` at ``alpha``, fading to nothing over ``feather`` px above and below."""
    top, bottom = max(0, rows[0] - feather), min(canvas.height, rows[1] + feather)
    y = np.arange(top, bottom, dtype=np.float32)
    outside = np.maximum(rows[0] - y, y - (rows[1] - 1)).clip(0, None) / max(feather, 1)
    ramp = 1 - np.clip(outside, 0, 1)
    strength = (alpha * ramp * ramp * (3 - 2 * ramp))[:, None, None]  # smoothstep: no visible edge
    strip = np.asarray(base.crop((0, top, canvas.width, bottom)))
    canvas.paste(Image.fromarray(_blend(strip, towards, strength)), (0, top))


@dataclass(frozen=True)
class _Draft:
    """Where one text goes, before its colour is known."""

    role: str
    text: str
    block: SetText
    band: str
    band_box: Box
    band_detail: dict[str, float]
    sizes: tuple[int, int]
    max_lines: int


def _finish(canvas: Image.Image, draft: _Draft, options: TypesetOptions) -> TextBlock:
    """Measure behind the glyphs; add a scrim or outline where the best colour falls short or the art is too
    busy; draw; record."""
    block = draft.block
    origin = place(block, draft.band_box)
    radius = grow_radius(block.size)
    region = _region(_block_box(block, origin), radius + 1, canvas.size)
    under = grow(np.asarray(glyph_mask(block, origin, region)) > 0, radius)
    found = measure(canvas, region, under, options.colours)
    busy = draft.band_detail[draft.band]
    calm_alpha = 1 - options.max_detail / busy if busy > options.max_detail else 0.0
    scrim: dict[str, Any] | None = None
    outline: dict[str, Any] | None = None
    if found.contrast < options.target_contrast or calm_alpha > 0:
        if found.contrast < options.target_contrast:
            alpha, towards = scrim_needed(np.asarray(canvas.crop(region))[under], options)
        else:  # legible colour, busy art: calm it, darkening under light text, lightening under dark
            alpha, towards = 0.0, BLACK if relative_luminance(found.colour) > 0.5 else WHITE
        use_outline = options.remedy == "outline" or (
            options.remedy == "auto" and not calm_alpha and alpha > options.max_scrim_alpha
        )
        outlined = _outlined(draft, found.colour, options) if use_outline else None
        if outlined is not None:
            block, origin, outline_colour = outlined
            region = _region(_block_box(block, origin), radius + 1, canvas.size)
            canvas.paste(outline_colour, region, glyph_mask(block, origin, region, block.stroke))
            under = grow(np.asarray(glyph_mask(block, origin, region)) > 0, radius)
            outline = {"colour": hex_colour(outline_colour), "width": block.stroke}
        else:
            scrim = _scrim_until(canvas, region, under, block, max(alpha, calm_alpha), towards, options)
        found = measure(canvas, region, under, options.colours)
    if found.contrast < options.target_contrast:
        raise ContrastUnreachable(f"the {draft.role} reaches only {found.contrast:.2f}:1 after the "
                                  f"{'outline' if outline else 'scrim'}; this is a bug, please report it")  # fmt: skip
    detail = mean_detail(detail_map(canvas.crop(region)), (0, 0, region[2] - region[0], region[3] - region[1]))
    canvas.paste(found.colour, region, glyph_mask(block, origin, region))
    return _record(draft, block, origin, found, scrim, outline, detail)


def _outlined(draft: _Draft, colour: RGB, options: TypesetOptions) -> tuple[SetText, tuple[int, int], RGB] | None:
    """The text refitted with room for an outline, and the outline's colour: the farthest from the text's."""
    try:
        block = fit(draft.text, draft.block.face, _box_size(draft.band_box), draft.max_lines, draft.sizes,
                    draft.role, outline=True, word_space=options.word_space)  # fmt: skip
    except TextDoesNotFit:
        if options.remedy == "outline":
            raise
        return None  # no room for the outline at a legible size: a scrim instead
    own = relative_luminance(colour)
    outline_colour = max((BLACK, WHITE), key=lambda c: contrast_ratio(own, relative_luminance(c)))
    return block, place(block, draft.band_box), outline_colour


def _scrim_until(canvas: Image.Image, region: Box, under: np.ndarray, block: SetText, alpha: float,
                 towards: RGB, options: TypesetOptions) -> dict[str, Any]:  # fmt: skip
    """Apply the scrim; strengthen it in small steps while rounding leaves the measured contrast short."""
    base = canvas.copy()
    pad = max(grow_radius(block.size) + 1, round(block.size * 0.3))
    rows = (max(0, region[1] - pad), min(canvas.height, region[3] + pad))
    feather = round(block.size * 0.6)
    while True:
        apply_scrim(canvas, base, rows, feather, alpha, towards)
        if measure(canvas, region, under, options.colours).contrast >= options.target_contrast or alpha >= 1:
            return {"colour": hex_colour(towards), "alpha": round(alpha, 4), "rows": list(rows), "feather": feather}
        alpha = min(1.0, alpha + 0.02)


def _box_size(box: Box) -> tuple[int, int]:
    return box[2] - box[0], box[3] - box[1]


def _record(draft: _Draft, block: SetText, origin: tuple[int, int], found: Measure, scrim: dict[str, Any] | None,
            outline: dict[str, Any] | None, detail: float) -> TextBlock:  # fmt: skip
    return TextBlock(
        role=draft.role, text=draft.text, lines=block.lines,
        line_boxes=tuple(_shift(box, origin) for box in block.line_boxes),
        baselines=tuple(origin[1] + y for _, y in block.origins), box=_block_box(block, origin),
        band=draft.band, band_detail=draft.band_detail, detail=round(detail, 5),
        font_file=block.face, font_size=block.size,
        colour=hex_colour(found.colour), contrast=round(found.contrast, 3),
        contrast_darkest=round(found.contrast_darkest, 3), contrast_lightest=round(found.contrast_lightest, 3),
        background_luminance=(round(found.darkest, 5), round(found.lightest, 5)),
        remedy="outline" if outline else "scrim" if scrim else "none", scrim=scrim, outline=outline,
    )  # fmt: skip


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
    smallest = max(options.min_px, math.ceil(options.author_min * height))
    largest = max(math.floor(options.author_scale * title_size), min(smallest, math.floor(title_size * 0.85)))
    return smallest, largest


def typeset(image: Image.Image, title: str, *, author: str | None = None, genres: Sequence[str] = (),
            font: str | None = None, options: TypesetOptions | None = None) -> TypesetResult:  # fmt: skip
    """Typeset ``title`` (and ``author``) over ``image``; the image passed in is left as it is.

    ``font``: None (by ``genres``), a role (serif, sans, display) or a font file. Raises a
    :class:`TypesetError` (text that does not fit, a missing glyph) rather than return a poor cover.
    """
    options = options or TypesetOptions()
    started = time.perf_counter()
    canvas = to_rgb(image)
    width, height = canvas.size
    title = clean_text(title, "title")
    author = clean_text(author, "author") if author and author.strip() else None
    fonts = font_set(genres, font)
    title_face = choose_face(title, fonts, "title")
    author_face = choose_face(author, fonts, "author") if author else None
    margin_px = math.ceil(options.margin * width)
    regions = bands(width, height, margin_px)
    detail = detail_map(canvas)
    room = _box_size(regions["top"])
    sizes = _sizes(options, height)
    block = fit(title, title_face, room, options.title_lines, sizes, "title", word_space=options.word_space)
    band, scores = _choose_band(detail, block, regions)
    drafts = [_Draft("title", title, block, band, regions[band], scores, sizes, options.title_lines)]
    if author and author_face:
        left = {name: box for name, box in regions.items() if name != band}
        author_sizes = _author_sizes(options, height, block.size)
        author_block = fit(author, author_face, room, options.author_lines, author_sizes, "author",
                           word_space=options.word_space)  # fmt: skip
        author_band, author_scores = _choose_band(detail, author_block, left)
        drafts.append(_Draft("author", author, author_block, author_band, left[author_band], author_scores,
                             author_sizes, options.author_lines))  # fmt: skip
    laid_out = time.perf_counter()
    blocks = [_finish(canvas, draft, options) for draft in drafts]
    layout = Layout(width, height, margin_px, fonts.role, blocks[0], blocks[1] if len(blocks) > 1 else None)
    timings = {"layout": (laid_out - started) * 1e3, "render": (time.perf_counter() - laid_out) * 1e3}
    return TypesetResult(canvas, layout, timings)


def typeset_file(source: str | Path, out: str | Path, *, title: str, author: str | None = None,
                 genres: Sequence[str] = (), font: str | None = None,
                 options: TypesetOptions | None = None) -> TypesetResult:  # fmt: skip
    """Read ``source``, typeset, and write ``out`` whole (nothing is written when a TypesetError is raised)."""
    from cover_hpc.store.atomic import save_image

    try:
        with Image.open(source) as image:
            image.load()
            result = typeset(image, title, author=author, genres=genres, font=font, options=options)
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
