"""Labelled title images for checking OCR: random book titles typeset over busy backgrounds.

Deterministic from a seed. ``benchmarks/ocr_engines.py`` measures with them which OCR engine reads
titles best, and the OCR tests read some back. Titles have 1-12 words in mixed case, with digits,
accented Latin letters and some punctuation; backgrounds are multi-scale noise, gradients, random
shapes and the demo covers' art, at SDXL's portrait cover sizes. Two styles:

- ``easy``: the title on a solid band of a contrasting colour, as a clean cover sets it;
- ``busy``: the title straight over the background, black or white, whichever contrasts more with
  the mean of the pixels behind it (no band, no outline).

The typesetting here is only what a labelled set needs; it is not the cover typesetter.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from cover_hpc.demo.covers import font_path

SIZES = ((896, 1152), (832, 1216), (768, 1024))  # (width, height): portrait cover sizes SDXL makes
BACKGROUNDS = ("noise", "gradient", "shapes", "demo")
STYLES = ("easy", "busy")

WORDS = (
    "the", "of", "and", "a", "in", "night", "garden", "river", "secret", "house", "last", "light",
    "winter", "city", "stone", "queen", "silent", "empire", "letters", "storm", "glass", "memory",
    "harbor", "crown", "shadow", "wolf", "summer", "map", "island", "machine", "dream", "fire",
    "orchard", "lantern", "mountain", "signal", "daughter", "kingdom", "promise", "forgotten",
)  # fmt: skip
ACCENTED = (
    "café", "élan", "naïve", "über", "señor", "crème", "brûlée", "déjà", "façade", "Zoë", "Ångström",
    "jalapeño", "résumé", "São", "Málaga", "Dvořák", "Škoda", "Bogotá", "Zürich", "Kraków", "Pérez",
    "mañana", "Mötley", "cliché", "rosé", "Göteborg", "Łódź", "Ørsted",
)  # fmt: skip
NUMBERS = ("1984", "2049", "7", "42", "13", "101", "3", "1066", "9", "88", "2")
# fonts tried in this order where installed (Debian's fonts-dejavu-core/-extra, fonts-liberation)
FONT_FILES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansCondensed-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerifCondensed.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSerif-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSerif-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSansNarrow-Regular.ttf",
)
MAX_LINES = 3


@dataclass(frozen=True)
class TitleImage:
    title: str
    image: Image.Image
    background: str  # one of BACKGROUNDS
    style: str  # one of STYLES
    font: str  # file name of the font the title is set in


def installed_fonts() -> list[Path]:
    """The fonts of FONT_FILES that are installed; DejaVu Sans/Serif Bold (always found) if none."""
    found = [Path(name) for name in FONT_FILES if Path(name).is_file()]
    return found or [font_path(bold=True, serif=False), font_path(bold=True, serif=True)]


def random_title(rng: random.Random) -> str:
    """A title of 1-12 words: common words, accented words and numbers, in one of four casings."""
    words = []
    for _ in range(rng.randint(1, 12)):
        pool = rng.choices((WORDS, ACCENTED, NUMBERS), weights=(6, 3, 1))[0]
        words.append(rng.choice(pool))
    if len(words) > 2 and rng.random() < 0.3:
        cut = rng.randrange(1, len(words) - 1)
        words[cut] += rng.choice((":", ",", "'s"))
    if rng.random() < 0.15:
        words[-1] += rng.choice(("!", "?", "."))
    casing = rng.choices(("title", "upper", "lower", "as is"), weights=(4, 2, 1, 2))[0]
    title = " ".join(words)
    if casing == "title":
        return " ".join(word[:1].upper() + word[1:] for word in words)
    return title.upper() if casing == "upper" else title.lower() if casing == "lower" else title


def demo_art(demo_dir: str | Path) -> list[Image.Image]:
    """The text-free middle of each demo cover (``make_demo_data``): ``draw_cover`` sets the title
    above the top third and the author in the bottom 60 pixels, and draws its motif in between."""
    art = []
    for path in sorted(Path(demo_dir).glob("*_set/*.jpg")):
        with Image.open(path) as cover:
            width, height = cover.size
            art.append(cover.convert("RGB").crop((0, height // 3, width, height - 60)))
    return art


def _noise(size: tuple[int, int], gen: np.random.Generator) -> Image.Image:
    width, height = size
    layers = []
    for cells in (4, 16, 64):  # coarse blotches, mid detail, fine grain
        small = gen.integers(0, 256, size=(cells * height // width + 1, cells, 3), dtype=np.uint8)
        layers.append(np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC), dtype=np.float32))
    grain = gen.normal(0, 24, size=(height, width, 3))
    mixed = 0.45 * layers[0] + 0.35 * layers[1] + 0.2 * layers[2] + grain
    return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8))


def _gradient(size: tuple[int, int], gen: np.random.Generator) -> Image.Image:
    width, height = size
    start, end = gen.integers(0, 256, size=(2, 3)).astype(np.float32)
    angle = gen.uniform(0, np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xs / width * np.cos(angle) + ys / height * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    # a few soft bands across the ramp, as painted skies and lit backdrops have
    t = np.clip(t + 0.08 * np.sin(t * gen.uniform(6, 20) + gen.uniform(0, 6)), 0, 1)
    pixels = start + (end - start) * t[..., None] + gen.normal(0, 3, size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _shapes(size: tuple[int, int], rng: random.Random) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(40, 120)):
        color = tuple(rng.randrange(256) for _ in range(3))
        x, y = rng.randrange(width), rng.randrange(height)
        extent = rng.randint(10, width // 3)
        kind = rng.choice(("ellipse", "rectangle", "line"))
        if kind == "line":
            draw.line([(x, y), (x + rng.randint(-extent, extent), y + rng.randint(-extent, extent))],
                      fill=color, width=rng.randint(2, 12))  # fmt: skip
        else:
            getattr(draw, kind)([x, y, x + extent, y + rng.randint(10, width // 3)], fill=color)
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 2.5)))


def background(kind: str, size: tuple[int, int], rng: random.Random,
               art: Sequence[Image.Image] = ()) -> Image.Image:  # fmt: skip
    """A busy background of ``kind`` (one of BACKGROUNDS) at ``size`` (width, height). ``demo``
    needs ``art`` (see :func:`demo_art`): one piece, scaled up to the size with grain added."""
    gen = np.random.default_rng(rng.getrandbits(32))
    if kind == "noise":
        return _noise(size, gen)
    if kind == "gradient":
        return _gradient(size, gen)
    if kind == "shapes":
        return _shapes(size, rng)
    if kind == "demo":
        if not art:
            raise ValueError("background 'demo' needs the demo covers' art (demo_art(make_demo_data(...).root))")
        scaled = np.asarray(rng.choice(art).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
        return Image.fromarray(np.clip(scaled + gen.normal(0, 12, size=scaled.shape), 0, 255).astype(np.uint8))
    raise ValueError(f"unknown background {kind!r}; one of {', '.join(BACKGROUNDS)}")


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str] | None:
    """Greedy word wrap into lines at most ``width`` wide; None when a single word is wider."""
    lines: list[str] = []
    for word in text.split():
        if font.getlength(word) > width:
            return None
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _fit(text: str, font_file: Path, width: int, start: int) -> tuple[ImageFont.FreeTypeFont, list[str]]:
    """The largest font size from ``start`` down that sets ``text`` in at most MAX_LINES lines."""
    for size in range(start, 11, -2):
        font = ImageFont.truetype(str(font_file), size=size)
        lines = _wrap(text, font, width)
        if lines is not None and len(lines) <= MAX_LINES:
            return font, lines
    raise ValueError(f"title {text!r} does not fit {width} px in {MAX_LINES} lines")


def _luminance(pixels: np.ndarray) -> float:
    return float((pixels.astype(np.float32) @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)).mean())


def typeset(image: Image.Image, title: str, style: str, rng: random.Random, font_file: Path) -> Image.Image:
    """``image`` with ``title`` centred in its top, middle or bottom band, in ``style``."""
    width, height = image.size
    margin = int(width * rng.uniform(0.07, 0.12))
    font, lines = _fit(title, font_file, width - 2 * margin, start=int(width * rng.uniform(0.07, 0.12)))
    line_height = int(font.size * 1.25)
    block = line_height * len(lines)
    top = {"top": int(height * 0.08), "middle": (height - block) // 2, "bottom": int(height * 0.9) - block}[
        rng.choice(("top", "middle", "bottom"))
    ]
    out = image.copy()
    draw = ImageDraw.Draw(out)
    pad = font.size // 2
    box = (0, top - pad, width, top + block + pad)
    if style == "easy":
        dark_band = rng.random() < 0.5
        band = tuple(rng.randint(0, 50) if dark_band else rng.randint(215, 255) for _ in range(3))
        draw.rectangle(box, fill=band)
        ink = tuple(rng.randint(225, 255) if dark_band else rng.randint(0, 40) for _ in range(3))
    elif style == "busy":
        behind = _luminance(np.asarray(out.crop(box)).reshape(-1, 3))
        ink = (0, 0, 0) if behind > 128 else (255, 255, 255)
    else:
        raise ValueError(f"unknown style {style!r}; one of {', '.join(STYLES)}")
    for index, line in enumerate(lines):
        draw.text((width // 2, top + index * line_height), line, font=font, fill=ink, anchor="ma")
    return out


def title_images(count: int, seed: int = 0, art: Sequence[Image.Image] = (),
                 styles: Sequence[str] = STYLES) -> list[TitleImage]:  # fmt: skip
    """``count`` random titles, each typeset in every style of ``styles`` over the same background.
    Backgrounds cycle through BACKGROUNDS (``demo`` only when ``art`` is given)."""
    rng = random.Random(seed)
    fonts = installed_fonts()
    kinds = [kind for kind in BACKGROUNDS if kind != "demo" or art]
    samples = []
    for index in range(count):
        title = random_title(rng)
        kind = kinds[index % len(kinds)]
        font_file = rng.choice(fonts)
        base = background(kind, rng.choice(SIZES), rng, art)
        layout_seed = rng.getrandbits(32)
        for style in styles:
            image = typeset(base, title, style, random.Random(layout_seed), font_file)
            samples.append(TitleImage(title, image, kind, style, font_file.name))
    return samples
