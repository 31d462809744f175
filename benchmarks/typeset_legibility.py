"""Finished covers measured from outside the typesetter (issue 22 item 4): real photographs and busy
patterns, typeset by ``cover_hpc.typeset.typeset``, then read back and
measured with tools of this script's own.

    python benchmarks/typeset_legibility.py [--set tuned|unseen|fresh|wallpapers|both|all] [--size 1600x2560]
                                            [--limit N] [--workers 2] [--json out.json] [--out DIR]

Four sets, each measured and reported on its own (``--set all``, the default, runs the four; ``both`` the
first two):
- tuned (104 covers): the set the typesetter's constants were set on, session after session. Its figures
  say how the typesetter does on art it has been fitted to, not on new art.
- unseen (103 covers: 60 crops of 12 photographs and scans at 5 new places, 43 new patterns, 48 new
  books, seed 2027): made after those constants were set and never tuned on. Its figures are the ones
  that say how the typesetter does on art it has not seen; once a change is made because of its misses
  it is tuned too, and a new unseen set has to be drawn (docs/PERFORMANCE.md). It was: the typesetter's
  page read and its wash steps were made for its misses.
- fresh (103 covers: 63 crops, 3 places each, of 21 photographs from six other packages on PyPI, 40
  patterns whose every parameter is drawn from seed 2028, 48 more books): drawn after that change, never
  tuned on. Its photographs are inside scipy 1.9.3's wheel (the raccoon), imgaug's (the quokka),
  ultralytics' (a bus, two men), and the source archives of insightface (people at a card table),
  Pillow (beach, cliffs, a cabin, a frozen pond) and opencv-python (baboon, fruits, a building, Starry
  Night, aloe, apple, orange, squirrel, a street, a dog cut-out, a notebook, graffiti). The first run
  fetches those six archives with ``pip download --no-deps`` (about 180 MB, nothing installed) into
  ~/.cache/cover-hpc/typeset-fresh and checks each photograph's sha256.
- wallpapers (115 covers: 75 crops, 3 places each, of 25 photographs in three of Debian 12's wallpaper
  packages, lomiri-wallpapers-16.04, lomiri-wallpapers-20.04 and mate-backgrounds, fetched with
  ``apt-get download`` (about 74 MB, nothing installed); 40 patterns from seed 2029; the fresh set's books
  paired with other art): a second set drawn after the fresh set's one run, never tuned on.
  photos:   scikit-learn's sample photographs (china, flower; scikit-learn comes with the [track]
            extra's MLflow), scikit-image's coins, moon, page and text (printed text: art that is
            itself lettering), cell, clock_motion, color, horse and logo (cut-outs, laid on a tinted card),
            and matplotlib's Jacksboro fault elevation model drawn as a shaded relief map;
  patterns: noise at new scales, blotches, fine stripes at 15-120 degrees, a pinstripe, a zigzag,
            halftone screens, polka dots, checkerboards, gradients (conic, plasma), flat colours,
            splits, pages of body text in columns, a Mondrian, salt and pepper, plaid, wavy lines,
            concentric squares, brick lines, grid lines, scan lines and a vignette over noise.

The tuned set (the same every run: 60 photo crops, 44 patterns):
  photos:   4 crops at the cover's 2:3 aspect (full height, 85%, 70% and 55% of it, at different
            places) of each real photograph shipped in the installed scikit-image (skimage/data:
            astronaut, chelsea, coffee, rocket, motorcycles, hubble, retina, ihc, camera, brick, grass,
            gravel) and matplotlib (mpl-data/sample_data: grace_hopper, Minduka_Present_Blue_Pack),
            each resized once with LANCZOS to the cover size;
  patterns: colour and grey noise at several scales, fine stripes (2-6 px period) of many saturated
            colours horizontal, vertical and diagonal, checkerboards, linear and radial gradients,
            mid-grey, and nasty ones (half-black/half-white splits, a page of small random letters,
            moire rings), seeded.
Titles and authors (48 in each set, with case, punctuation, digits, apostrophes and é) and genres are
cycled over the art. é is the only accented letter: Debian's English model (tessdata "fast") reads ñ ö ü ë í á ç è
û å as the plain letter even in black on white paper (checked in DejaVu Serif and URW Bookman), so
they would measure the reader, not the typesetter. The art is handed to typeset() at the cover size
(and ``size=`` is passed too where typeset accepts it). A TypesetError (or any other exception, marked
BUG) is a failed cover, with its reason, and counts as a miss in every figure: unread, and under 4.5.
``--limit N`` takes the first N photo crops and the first N patterns.

Measured on each finished cover:
  read:     Debian's tesseract CLI, default English model and page segmentation, on the WHOLE cover
            (``tesseract cover.png stdout -l eng``; the typesetter checks itself with another reader).
            A text is read exactly when the output, whitespace runs collapsed to one space, contains
            it as given (case, accents, punctuation; both NFC). Secondary: the whole cover again in
            tesseract's sparse-text mode (``--psm 11``, "find as much text as possible in no particular
            order": a cover is not a page of columns), tesseract ``--psm 6`` on a
            crop of each block (its box padded by half the font size), and the whole-cover rate with
            accents, typographic quotes and dashes folded (to say what the misses are, not the metric);
  contrast: the worst-glyph contrast, from the pixels alone: glyph pixels are those inside the block's
            line boxes within 8 levels of its text colour; the ring around them runs from 2 px to
            r = max(3, round(0.12 x font size)) px out (glyph pixels left out); each ring pixel's WCAG
            2.x contrast with the text colour; the block's figure is the 5th percentile of its ring,
            the cover's the lower of title and author (target: >= 4.5 on every cover);
  salient:  OpenCV contrib's fine-grained static saliency of the raw art, thresholded by Otsu (or the
            top 15% of pixels where Otsu marks under 0.5% or over 50% of the cover: the method is
            recorded per cover); the share of that region under the text's line boxes. Patterns have no
            subject, so the photos' figure is the meaningful one;
  time:     milliseconds in typeset() (perf_counter), median and p95, and the whole run's wall time.

Prints a table of figures, every miss with what was read, and a last line summarising it all.
``--json`` writes every per-cover record; ``--out`` saves the finished covers and a contact sheet of
the misses. Tesseract runs in a pool of ``--workers`` threads (each tesseract with OMP_THREAD_LIMIT=1)
while the main thread typesets the next cover. 1600x2560 (an ebook cover, the default) takes about 4-5
minutes on a shared 2-core box; ``--size 1024x1536`` about half that.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from common import header, table, write_json
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from cover_hpc.typeset import TypesetError, typeset

DEFAULT_SIZE = (1600, 2560)
CROPS = ((1.0, 0.5, 0.5), (0.85, 0.0, 0.0), (0.7, 1.0, 1.0), (0.55, 0.3, 0.7))  # height share, x, y place
COLOUR_TOLERANCE = 8  # a glyph pixel is within this many levels (each channel) of the text colour
SEED = 22

# skimage/data and matplotlib's sample_data: (package, file name, short name)
PHOTOS = (
    ("skimage", "astronaut.png", "astronaut"),
    ("skimage", "chelsea.png", "chelsea"),
    ("skimage", "coffee.png", "coffee"),
    ("skimage", "rocket.jpg", "rocket"),
    ("skimage", "motorcycle_left.png", "motorcycle_left"),
    ("skimage", "motorcycle_right.png", "motorcycle_right"),
    ("skimage", "hubble_deep_field.jpg", "hubble"),
    ("skimage", "retina.jpg", "retina"),
    ("skimage", "ihc.png", "ihc"),
    ("skimage", "camera.png", "camera"),
    ("skimage", "brick.png", "brick"),
    ("skimage", "grass.png", "grass"),
    ("skimage", "gravel.png", "gravel"),
    ("matplotlib", "grace_hopper.jpg", "grace_hopper"),
    ("matplotlib", "Minduka_Present_Blue_Pack.png", "minduka"),
)

FANTASY, THRILLER, ROMANCE, SF, NONE = ["fantasy"], ["thriller"], ["romance"], ["science fiction"], []
BOOKS: tuple[tuple[str, str, list[str]], ...] = (
    ("Ashes", "Mara Quinn", THRILLER),
    ("The Glass Orchard", "Renée Marchetti", ROMANCE),
    ("Nine Lanterns for the Drowned King", "Tobias Wren", FANTASY),
    ("Signal 47", "J. R. Okafor", SF),
    ("What the River Didn't Say", "Ana Pérez", NONE),
    ("Café Nocturne", "Léa Fournier", ROMANCE),
    ("The Last Summer at Millerhof", "Greta Schoenberg", NONE),
    ("Cold Harbour", "Daniel Price", THRILLER),
    ("A Map of Forgotten Stars", "Ines Okonkwo-Baptiste", SF),
    ("Iron & Ivy", "Rosalind Crane", FANTASY),
    ("The Curious Case of Mr. Peabody's Umbrella", "Edith March", NONE),
    ("Midnight in Sevilla", "Javier Méndez", ROMANCE),
    ("Dead Reckoning", "Sam Hollis", THRILLER),
    ("Children of the Seventh Moon", "Ayla Demir", FANTASY),
    ("1984 Revisited: Essays on Surveillance", "Martin Koehler", NONE),
    ("The Weight of Small Things", "Claire Dubois", NONE),
    ("Orbit", "K. Nakamura", SF),
    ("Love, Actually Maybe", "Poppy Sinclair", ROMANCE),
    ("The Silence Between Us", "Noah Ellery", THRILLER),
    ("Where the Wild Crows Gather in Winter", "Bjorn Lindqvist", FANTASY),
    ("Protocol Zero", "Lena Vogt", THRILLER),
    ("Madame Ortiz and the Lost Recipe", "Carmen Ibarra", NONE),
    ("Starfall Academy, Book 2", "R. T. Holloway", SF),
    ("The Baker's Daughter", "Amélie Laurent", ROMANCE),
    ("Beneath", "Owen Marsh", THRILLER),
    ("A Crown of Salt and Bone", "Isolde Varga", FANTASY),
    ("Letters to Zoé", "Frédéric Bélanger", ROMANCE),
    ("The 12th Hour", "David Kim", THRILLER),
    ("Quiet Machines", "Priya Raman", SF),
    ("How to Grow a Garden in 30 Days", "Susan Whitfield", NONE),
    ("The Dragon Who Couldn't Fly", "Molly O'Brien", FANTASY),
    ("Red Light, Green Light", "Marcus Hale", THRILLER),
    ("Under the Jacaranda", "Zoe Adeyemi", ROMANCE),
    ("Europa Rising", "Dr. Helen Park", SF),
    ("The Lighthouse Keeper's Almanac", "Thomas Gérard", NONE),
    ("Shadows over Heidelberg", "Jurgen Brandt", THRILLER),
    ("Wren", "Elena Ruiz", FANTASY),
    ("Everything We Never Told Our Mothers About the Sea", "Nadia Haddad", NONE),
    ("Summer of '69", "Georgia Bell", ROMANCE),
    ("The Andromeda Variable", "Chen Wei", SF),
    ("Soufflé for Beginners", "Chloé Mercier", NONE),
    ("Blood Moon Over Ravenhall", "Victor Ashdown", FANTASY),
    ("No Way Back", "Lucy Grant", THRILLER),
    ("The Girl with the Copper Key", "Sofia Lindstrom", FANTASY),
    ("Half a World Away", "Emma Thornton-Hughes", ROMANCE),
    ("Terminal Velocity", "Ray Okoro", SF),
    ("A Brief History of Almost Everything Else", "Prof. Arthur Finch", NONE),
    ("Résumé", "Lucia Herrera", ROMANCE),
)

QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})


@dataclass
class Cover:
    index: int
    kind: str  # photo or pattern
    name: str  # photo and crop, or pattern
    art: Image.Image
    title: str
    author: str
    genres: list[str]
    set: str = "tuned"


@dataclass
class Pending:
    record: dict[str, Any]
    whole: Future[str] | None = None
    sparse: Future[str] | None = None  # the whole cover again, in tesseract's sparse-text mode (psm 11)
    crops: dict[str, Future[str]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ art


def photo_path(package: str, name: str) -> Path:
    """A photograph shipped inside an installed package, found through the package itself."""
    if package == "skimage":
        import skimage.data

        return Path(skimage.data.__file__).parent / name
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / name


def crop_portrait(photo: Image.Image, size: tuple[int, int], share: float, fx: float, fy: float) -> Image.Image:
    """The 2:3 (size's aspect) window of ``share`` of the largest such window, placed at (fx, fy) of the
    room left, resized once with LANCZOS."""
    width, height = size
    aspect = width / height
    full_h = min(photo.height, photo.width / aspect)
    crop_h = full_h * share
    crop_w = crop_h * aspect
    left = (photo.width - crop_w) * fx
    top = (photo.height - crop_h) * fy
    return photo.resize(size, Image.Resampling.LANCZOS, box=(left, top, left + crop_w, top + crop_h))


def photo_art(size: tuple[int, int]) -> list[tuple[str, Image.Image]]:
    art = []
    for package, file_name, short in PHOTOS:
        with Image.open(photo_path(package, file_name)) as opened:
            photo = opened.convert("RGB")
        for number, (share, fx, fy) in enumerate(CROPS):
            art.append((f"{short}#{number}", crop_portrait(photo, size, share, fx, fy)))
    return art


def _stripes(size: tuple[int, int], period: int, direction: str, colours: list[tuple[int, int, int]]) -> np.ndarray:
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    position = {"h": y, "v": x, "d": x + y, "a": x - y + height}[direction]
    palette = np.array(colours, dtype=np.uint8)
    return palette[(position // period) % len(colours)]


def _upscaled_noise(rng: np.random.Generator, size: tuple[int, int], scale: int, channels: int) -> np.ndarray:
    width, height = size
    small = rng.integers(0, 256, (math.ceil(height / scale), math.ceil(width / scale), channels), dtype=np.uint8)
    big = np.repeat(np.repeat(small, scale, axis=0), scale, axis=1)[:height, :width]
    return np.repeat(big, 3, axis=2) if channels == 1 else big


def _checker(size: tuple[int, int], cell: int, first: tuple[int, int, int], second: tuple[int, int, int]) -> np.ndarray:
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    even = (((x // cell) + (y // cell)) % 2 == 0)[..., None]
    return np.where(even, np.array(first, np.uint8), np.array(second, np.uint8))


def _ramp(values: np.ndarray, start: tuple[int, int, int], end: tuple[int, int, int]) -> np.ndarray:
    t = np.clip(values, 0, 1)[..., None]
    return (np.array(start) * (1 - t) + np.array(end) * t).round().astype(np.uint8)


def _letters(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A page of small random letters in several colours: art that looks like text to a reader."""
    width, height = size
    image = Image.new("RGB", size, (235, 230, 215))
    draw = ImageDraw.Draw(image)
    font_size = max(10, height // 90)
    font = ImageFont.load_default(size=font_size)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789   "
    for top in range(0, height, int(font_size * 1.3)):
        line = "".join(alphabet[i] for i in rng.integers(0, len(alphabet), width // max(1, font_size // 2)))
        colour = tuple(int(v) for v in rng.integers(0, 160, 3))
        draw.text((2, top), line, fill=colour, font=font)
    return np.asarray(image)


SATURATED = [(255, 0, 0), (255, 128, 0), (255, 255, 0), (0, 200, 0), (0, 255, 255), (0, 0, 255), (255, 0, 255)]


def pattern_art(size: tuple[int, int], seed: int = SEED) -> list[tuple[str, Image.Image]]:
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    u, v = x / max(1, width - 1), y / max(1, height - 1)
    radius = np.hypot(u - 0.5, (v - 0.5) * height / width) / 0.9
    made: list[tuple[str, np.ndarray]] = []
    for scale in (1, 2, 4, 8, 16, 32):
        made.append((f"colour noise {scale}px", _upscaled_noise(rng, size, scale, 3)))
    for scale in (1, 4):
        made.append((f"grey noise {scale}px", _upscaled_noise(rng, size, scale, 1)))
    for scale in (2, 6):
        picks = rng.integers(0, len(SATURATED), (math.ceil(height / scale), math.ceil(width / scale)))
        small = np.array(SATURATED, np.uint8)[picks]
        made.append((f"saturated noise {scale}px", np.repeat(np.repeat(small, scale, 0), scale, 1)[:height, :width]))
    stripe_cases = [("d", 2, 7), ("d", 3, 7), ("d", 4, 3), ("d", 6, 5), ("a", 2, 5), ("a", 5, 7),
                    ("h", 2, 7), ("h", 4, 2), ("h", 6, 4), ("v", 2, 7), ("v", 3, 2), ("v", 5, 6)]  # fmt: skip
    for direction, period, count in stripe_cases:
        start = int(rng.integers(0, len(SATURATED)))
        colours = [SATURATED[(start + 2 * i) % len(SATURATED)] for i in range(count)]
        if count == 2:
            colours = [(255, 255, 255), (0, 0, 0)] if period % 2 else [(255, 0, 0), (0, 255, 255)]
        name = {"h": "horizontal", "v": "vertical", "d": "diagonal", "a": "anti-diagonal"}[direction]
        made.append((f"{name} stripes {period}px x{count}", _stripes(size, period, direction, colours)))
    tartan = (_stripes(size, 3, "h", SATURATED).astype(np.uint16) + _stripes(size, 5, "v", SATURATED[::-1])) // 2
    made.append(("tartan 3px x 5px", tartan.astype(np.uint8)))
    made.append(("vertical stripes 2px red/green", _stripes(size, 2, "v", [(255, 0, 0), (0, 255, 0)])))
    hue = np.stack([np.sin(2 * np.pi * (u * 3 + k / 3)) for k in range(3)], axis=-1)
    made.append(("hue sweep across", ((hue + 1) * 127.5).round().astype(np.uint8)))
    made.append(("checker b/w 2px", _checker(size, 2, (0, 0, 0), (255, 255, 255))))
    made.append(("checker b/w 8px", _checker(size, 8, (0, 0, 0), (255, 255, 255))))
    made.append(("checker b/w 64px", _checker(size, 64, (0, 0, 0), (255, 255, 255))))
    made.append(("checker colour 4px", _checker(size, 4, (255, 0, 0), (0, 0, 255))))
    made.append(("checker colour 32px", _checker(size, 32, (255, 255, 0), (128, 0, 255))))
    made.append(("gradient white to black down", _ramp(v, (255, 255, 255), (0, 0, 0))))
    made.append(("gradient black to white down", _ramp(v, (0, 0, 0), (255, 255, 255))))
    made.append(("gradient white to black across", _ramp(u, (255, 255, 255), (0, 0, 0))))
    made.append(("gradient diagonal", _ramp((u + v) / 2, (250, 240, 200), (20, 10, 60))))
    made.append(("gradient red to blue down", _ramp(v, (255, 40, 0), (0, 40, 255))))
    made.append(("radial light centre", _ramp(radius, (255, 255, 255), (0, 0, 0))))
    made.append(("radial dark centre", _ramp(radius, (0, 0, 0), (255, 255, 255))))
    made.append(("mid-grey", np.full((height, width, 3), 119, np.uint8)))
    made.append(("split black|white", np.where((u < 0.5)[..., None], 0, 255).astype(np.uint8).repeat(3, 2)))
    made.append(("split white/black", np.where((v < 0.5)[..., None], 255, 0).astype(np.uint8).repeat(3, 2)))
    made.append(("split quadrants", np.where(((u < 0.5) ^ (v < 0.5))[..., None], 0, 255).astype(np.uint8).repeat(3, 2)))
    made.append(("random letters", _letters(rng, size)))
    rings = (np.sin(radius * width * 0.9) > 0)[..., None]
    made.append(("moire rings", np.where(rings, np.array((255, 255, 255), np.uint8), np.array((0, 0, 0), np.uint8))))
    noisy = _ramp(v, (255, 255, 255), (0, 0, 0)).astype(int) + rng.integers(-60, 61, (height, width, 3))
    made.append(("noise over gradient", np.clip(noisy, 0, 255).astype(np.uint8)))
    return [(name, Image.fromarray(np.ascontiguousarray(pixels))) for name, pixels in made]


# ------------------------------------------------------------------------------------ the unseen set
# Art, crops and books made after the typesetter's constants were last set (on the set above), and never tuned on:
# the typesetter's figures on it say how it does on art it has not seen (docs/PERFORMANCE.md).

UNSEEN_PHOTOS = (  # (package, file name, short name): photographs and scans, none of them in PHOTOS
    ("sklearn", "china.jpg", "china"),
    ("sklearn", "flower.jpg", "flower"),
    ("skimage", "coins.png", "coins"),
    ("skimage", "moon.png", "moon"),
    ("skimage", "page.png", "page"),
    ("skimage", "text.png", "text"),
    ("skimage", "cell.png", "cell"),
    ("skimage", "clock_motion.png", "clock"),
    ("skimage", "color.png", "colour_wheel"),
    ("skimage", "horse.png", "horse"),
    ("skimage", "logo.png", "logo"),
    ("matplotlib", "jacksboro_fault_dem.npz", "terrain"),
)
UNSEEN_CROPS = ((0.95, 0.2, 0.8), (0.8, 0.6, 0.1), (0.65, 0.05, 0.5), (0.5, 0.9, 0.35), (0.4, 0.4, 0.95))
UNSEEN_SEED = 2027

UNSEEN_BOOKS: tuple[tuple[str, str, list[str]], ...] = (
    ("Tide", "Harriet Cole", THRILLER),
    ("The Orchard Keeper's Wife", "Margaux Durand", ROMANCE),
    ("Seven Bridges to Nowhere", "Kwame Asante", NONE),
    ("Project 9", "L. M. Castellanos", SF),
    ("Don't Look at the Lake", "Ruth Abernathy", THRILLER),
    ("The Queen of Glass and Ember", "Sienna Blackwood", FANTASY),
    ("Notes from a Small Kitchen", "Céline Roux", NONE),
    ("Gravity's Edge", "Anil Mehta", SF),
    ("Falling for the Duke", "Violet Ashford", ROMANCE),
    ("Hollow", "Finn Gallagher", THRILLER),
    ("The Cartographer's Daughter", "Ingrid Solberg", FANTASY),
    ("Why Cities Breathe", "Prof. Omar Haddad", NONE),
    ("Station Eleven Below", "Yuki Tanaka", SF),
    ("A Summer in Provence", "Juliette Morel", ROMANCE),
    ("The 3 A.M. Call", "Derek Stone", THRILLER),
    ("Song of the Iron Wolf", "Branwen Hughes", FANTASY),
    ("Cooking with Fire & Smoke", "Luis Herrera", NONE),
    ("Echoes of Titan", "Dr. Samira Khan", SF),
    ("Second Chances", "Holly Bennett", ROMANCE),
    ("The Night Porter", "Viktor Novak", THRILLER),
    ("Moss", "Aoife Byrne", FANTASY),
    ("The Art of Slow Travel", "Pierre Lefebvre", NONE),
    ("Neon Saints", "Jax Moreno", SF),
    ("Every Little Thing", "Maya Collins", ROMANCE),
    ("Blackwater Creek", "Tom Reilly", THRILLER),
    ("The Last Dragon of Eldmoor", "Cedric Vale", FANTASY),
    ("A Field Guide to Clouds", "Margaret Lowe", NONE),
    ("Zero Point", "Ines Carvalho", SF),
    ("Paris, Again", "Noémie Girard", ROMANCE),
    ("Cold Case 1971", "Frank Delaney", THRILLER),
    ("The Witch of Thornbury Hill", "Agnes Pryce", FANTASY),
    ("How We Learned to Fly", "Samuel Okonjo", NONE),
    ("Lightyear Drift", "Kai Andersen", SF),
    ("The Wedding Planner's Secret", "Bella Romano", ROMANCE),
    ("Vanish", "Erik Lund", THRILLER),
    ("Keeper of the Northern Flame", "Rowan Ashby", FANTASY),
    ("Bread, Salt and Stories", "Olga Petrova", NONE),
    ("The Mars Protocol", "Dr. Ravi Iyer", SF),
    ("Love in the Time of Rain", "Camille Dupré", ROMANCE),
    ("Dead Man's Switch", "Connor Walsh", THRILLER),
    ("The Stone and the Star", "Elowen Tregarth", FANTASY),
    ("Thinking in Systems, Again", "Julia Brandt", NONE),
    ("Quantum Hearts", "Leo Fischer", SF),
    ("The Florist of Rue Cler", "Amandine Martin", ROMANCE),
    ("Burn", "Nico Santos", THRILLER),
    ("A Kingdom of Feathers", "Tamsin Greaves", FANTASY),
    ("The Quiet Year", "Hannah Weiss", NONE),
    ("Orion's Gate", "Mei Lin", SF),
)


def package_file(package: str, name: str) -> Path:
    """A data file shipped inside an installed package (scikit-learn's sample images, or photo_path's)."""
    if package == "sklearn":
        try:
            import sklearn.datasets
        except ImportError:
            raise SystemExit(f"the unseen set's {name} is scikit-learn's sample image: pip install scikit-learn "
                             "(cover-hpc[track] and requirements-dev.txt bring it, with MLflow)") from None  # fmt: skip
        return Path(sklearn.datasets.__file__).parent / "images" / name
    return photo_path(package, name)


def _unseen_photo(package: str, file_name: str) -> Image.Image:
    path = package_file(package, file_name)
    if path.suffix == ".npz":  # a digital elevation model, drawn as a shaded relief map
        import matplotlib
        from matplotlib.colors import LightSource

        with np.load(path) as data:
            elevation = data["elevation"].astype(np.float64)
        shaded = LightSource(azdeg=315, altdeg=45).shade(elevation, cmap=matplotlib.colormaps["gist_earth"],
                                                          vert_exag=0.05, blend_mode="overlay")  # fmt: skip
        return Image.fromarray((shaded[..., :3] * 255).round().astype(np.uint8))
    with Image.open(path) as opened:
        if opened.mode in ("RGBA", "LA", "P"):  # a cut-out: on a tinted card, as a designer would place it
            rgba = opened.convert("RGBA")
            card = Image.new("RGBA", rgba.size, (214, 226, 236, 255))
            return Image.alpha_composite(card, rgba).convert("RGB")
        return opened.convert("RGB")


def unseen_photo_art(size: tuple[int, int]) -> list[tuple[str, Image.Image]]:
    art = []
    for package, file_name, short in UNSEEN_PHOTOS:
        photo = _unseen_photo(package, file_name)
        for number, (share, fx, fy) in enumerate(UNSEEN_CROPS):
            art.append((f"{short}#{number}", crop_portrait(photo, size, share, fx, fy)))
    return art


def _rotated_stripes(
    size: tuple[int, int], period: float, degrees: float, colours: list[tuple[int, int, int]]
) -> np.ndarray:
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    angle = math.radians(degrees)
    position = x * math.cos(angle) + y * math.sin(angle)
    return np.array(colours, np.uint8)[(np.floor(position / period).astype(np.int64)) % len(colours)]


def _blurred_noise(rng: np.random.Generator, size: tuple[int, int], radius: float) -> np.ndarray:
    width, height = size
    noise = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    smooth = np.asarray(noise.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float64)
    spread = (smooth - smooth.mean()) / max(1e-6, smooth.std()) * 60 + 128  # blotches at full contrast
    return np.clip(spread, 0, 255).round().astype(np.uint8)


def _dots(size: tuple[int, int], pitch: int, radius: float, ink: tuple[int, int, int],
          paper: tuple[int, int, int], degrees: float = 0.0) -> np.ndarray:  # fmt: skip
    """A halftone screen: dots of ``radius`` every ``pitch`` px, the grid turned by ``degrees``."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    angle = math.radians(degrees)
    u = x * math.cos(angle) + y * math.sin(angle)
    v = -x * math.sin(angle) + y * math.cos(angle)
    du, dv = (u % pitch) - pitch / 2, (v % pitch) - pitch / 2
    inside = (np.hypot(du, dv) <= radius)[..., None]
    return np.where(inside, np.array(ink, np.uint8), np.array(paper, np.uint8))


def _words(rng: np.random.Generator, size: tuple[int, int], font_file: str, scale: int, columns: int,
           paper: tuple[int, int, int]) -> np.ndarray:  # fmt: skip
    """A page set in columns of random words: body text, as on a newspaper page used as art."""
    width, height = size
    image = Image.new("RGB", size, paper)
    draw = ImageDraw.Draw(image)
    font_size = max(10, height // scale)
    font = ImageFont.truetype(font_file, font_size)
    gutter = width // 40
    column_width = (width - gutter * (columns + 1)) // columns
    syllables = ["ka", "lo", "men", "tra", "si", "on", "de", "ver", "al", "mi", "ru", "sta", "pe", "ne", "gor"]
    for column in range(columns):
        left = gutter + column * (column_width + gutter)
        for top in range(gutter, height - font_size, int(font_size * 1.35)):
            line, x = [], 0.0
            while True:
                word = "".join(syllables[i] for i in rng.integers(0, len(syllables), int(rng.integers(1, 4))))
                x += draw.textlength(word + " ", font=font)
                if x > column_width:
                    break
                line.append(word)
            draw.text((left, top), " ".join(line), fill=(30, 30, 30), font=font)
    return np.asarray(image)


def _mondrian(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    image = Image.new("RGB", size, (245, 240, 230))
    draw = ImageDraw.Draw(image)
    palette = [(220, 30, 30), (20, 60, 160), (250, 210, 20), (245, 240, 230), (245, 240, 230), (20, 20, 20)]
    for _ in range(60):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(width // 12, width // 2)), y0 + int(rng.integers(height // 14, height // 3))
        draw.rectangle((x0, y0, x1, y1), fill=palette[int(rng.integers(0, len(palette)))], outline=(10, 10, 10),
                       width=max(4, width // 120))  # fmt: skip
    return np.asarray(image)


def _grid(size: tuple[int, int]) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """width, height, each pixel's x and y, and the same from 0 to 1 across and down."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    return width, height, x, y, x / max(1, width - 1), y / max(1, height - 1)


def unseen_pattern_art(size: tuple[int, int], seed: int = UNSEEN_SEED) -> list[tuple[str, Image.Image]]:
    rng = np.random.default_rng(seed)
    width, height, x, y, u, v = _grid(size)
    made: list[tuple[str, np.ndarray]] = []
    for scale in (3, 6, 12, 24):
        made.append((f"colour noise {scale}px", _upscaled_noise(rng, size, scale, 3)))
    for scale in (2, 8):
        made.append((f"grey noise {scale}px", _upscaled_noise(rng, size, scale, 1)))
    for radius in (3.0, 12.0):
        made.append((f"blotches r{radius:g}", _blurred_noise(rng, size, radius)))
    earthy = [(120, 72, 40), (200, 160, 90), (60, 90, 50), (230, 220, 190), (150, 40, 30)]
    for degrees, period, count in ((30, 3, 5), (60, 4, 3), (15, 5, 7), (75, 2.5, 4), (120, 6, 2), (45, 8, 5)):
        colours = [SATURATED[(i * 3 + degrees) % len(SATURATED)] for i in range(count)] if count != 5 else earthy
        made.append((f"stripes {degrees} deg {period:g}px x{count}", _rotated_stripes(size, period, degrees, colours)))
    made.append(("pinstripe navy", _rotated_stripes(size, 9, 0, [(20, 30, 70)] * 8 + [(230, 230, 240)])))
    chevrons = ((np.abs((x % 40) - 20) + y) // 7 % 2 == 0)[..., None]
    made.append(("zigzag", np.where(chevrons, np.array((240, 90, 20), np.uint8), np.array((30, 20, 60), np.uint8))))
    made.append(("halftone 6px black", _dots(size, 6, 2.2, (0, 0, 0), (255, 255, 255), 45)))
    made.append(("halftone 12px magenta", _dots(size, 12, 4.5, (230, 0, 140), (255, 250, 240), 15)))
    made.append(("polka dots 60px", _dots(size, 60, 18, (250, 250, 250), (200, 30, 60))))
    made.append(("checker b/w 3px", _checker(size, 3, (0, 0, 0), (255, 255, 255))))
    made.append(("checker colour 16px", _checker(size, 16, (0, 160, 120), (250, 120, 0))))
    made.append(("checker grey 128px", _checker(size, 128, (90, 90, 90), (170, 170, 170))))
    made.append(("gradient across orange to teal", _ramp(u, (255, 140, 0), (0, 128, 128))))
    made.append(("gradient up navy to cream", _ramp(1 - v, (250, 245, 225), (10, 20, 70))))
    angle = (np.arctan2(v - 0.5, u - 0.5) + np.pi) / (2 * np.pi)
    made.append(("conic grey", _ramp(angle, (20, 20, 20), (240, 240, 240))))
    plasma = np.sin(u * 9) + np.sin(v * 13 + u * 4) + np.sin(np.hypot(u - 0.3, v - 0.7) * 20)
    made.append(("plasma", _ramp((plasma + 3) / 6, (40, 0, 90), (255, 200, 0))))
    made.append(("flat navy", np.full((height, width, 3), (18, 28, 64), np.uint8)))
    made.append(("flat cream", np.full((height, width, 3), (246, 238, 214), np.uint8)))
    made.append(("split diagonal", np.where((u > v)[..., None], 255, 0).astype(np.uint8).repeat(3, 2)))
    made.append(("split thirds", _ramp(np.floor(v * 3) / 2, (255, 255, 255), (0, 0, 0))))
    made.append(("serif page 2 columns", _words(rng, size, "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf", 70, 2,
                                                (250, 248, 240))))  # fmt: skip
    made.append(("sans page 3 columns", _words(rng, size, "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 110, 3,
                                               (255, 255, 255))))  # fmt: skip
    liberation_serif = "/usr/share/fonts/truetype/liberation/LiberationSerif-Regular.ttf"
    made.append(("large print page", _words(rng, size, liberation_serif, 40, 1, (240, 235, 220))))
    made.append(("mondrian", _mondrian(rng, size)))
    flat = np.full((height, width, 3), (70, 110, 160), np.int64)
    salt = rng.random((height, width)) < 0.03
    made.append(("salt and pepper on blue", np.where(salt[..., None], rng.integers(0, 2, (height, width, 1)) * 255,
                                                     flat).astype(np.uint8)))  # fmt: skip
    plaid = (_rotated_stripes(size, 11, 0, [(150, 20, 30), (20, 60, 30), (230, 200, 60)]).astype(np.uint16)
             + _rotated_stripes(size, 7, 90, [(20, 30, 90), (150, 20, 30)])) // 2  # fmt: skip
    made.append(("plaid 11px x 7px", plaid.astype(np.uint8)))
    waves = np.sin(u * 60 + np.sin(v * 8) * 3) > 0
    made.append(
        (
            "wavy lines",
            np.where(waves[..., None], np.array((20, 20, 20), np.uint8), np.array((235, 235, 235), np.uint8)),
        )
    )
    squares = (np.maximum(np.abs(u - 0.5), np.abs(v - 0.5) * height / width) * width // 10) % 2 == 0
    made.append(("concentric squares", np.where(squares[..., None], np.array((0, 90, 200), np.uint8),
                                                np.array((255, 255, 255), np.uint8))))  # fmt: skip
    bricks = ((y // 40) % 2 == 0) & ((x + ((y // 40) % 2) * 40) % 80 < 4) | (y % 40 < 4)
    made.append(("brick lines", np.where(bricks[..., None], np.array((230, 230, 230), np.uint8),
                                         np.array((160, 60, 40), np.uint8))))  # fmt: skip
    noisy = _ramp(u, (20, 20, 60), (250, 250, 250)).astype(int) + rng.integers(-45, 46, (height, width, 3))
    made.append(("noise over gradient across", np.clip(noisy, 0, 255).astype(np.uint8)))
    vignette = np.clip(1.3 - 1.6 * np.hypot(u - 0.5, v - 0.5), 0, 1)
    made.append(("vignette on noise", (_upscaled_noise(rng, size, 2, 1) * vignette[..., None]).astype(np.uint8)))
    made.append(
        ("grid lines 24px", np.where(((x % 24) < 2) | ((y % 24) < 2), 40, 225).astype(np.uint8)[..., None].repeat(3, 2))
    )
    made.append(("scan lines 3px", np.where((y % 3 == 0)[..., None], np.array((10, 40, 10), np.uint8),
                                            np.array((40, 200, 60), np.uint8))))  # fmt: skip
    return [(name, Image.fromarray(np.ascontiguousarray(pixels))) for name, pixels in made]


# ------------------------------------------------------------------------------------------ the fresh set
# Drawn on 2026-12-07, after the typesetter's page read (its wash steps were chosen on the unseen set's misses),
# and never used to set anything: photographs from other packages on the registry, fetched with pip (the
# archive's own file checked by its sha256), 3 crops each at places of their own, patterns drawn from seed 2028
# with every parameter random, and 48 more books.

FRESH_ARCHIVES = {  # name: (pip download arguments, the archive file pip writes)
    "scipy": (["scipy==1.9.3", "--only-binary", ":all:", "--python-version", "3.11", "--platform",
               "manylinux2014_x86_64"], "scipy-1.9.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"),
    "imgaug": (["imgaug==0.4.0"], "imgaug-0.4.0-py2.py3-none-any.whl"),
    "ultralytics": (["ultralytics==8.3.0"], "ultralytics-8.3.0-py3-none-any.whl"),
    "insightface": (["insightface==0.7.3", "--no-binary", "insightface"], "insightface-0.7.3.tar.gz"),
    "pillow": (["pillow==10.4.0", "--no-binary", "pillow"], "pillow-10.4.0.tar.gz"),
    "opencv": (["opencv-python==4.10.0.84", "--no-binary", "opencv-python"], "opencv-python-4.10.0.84.tar.gz"),
    # Debian 12's packages, by apt-get download (the wallpapers set)
    "lomiri16": (["apt", "lomiri-wallpapers-16.04=20.04.0-2"], "lomiri-wallpapers-16.04_20.04.0-2_all.deb"),
    "lomiri20": (["apt", "lomiri-wallpapers-20.04=20.04.0-2"], "lomiri-wallpapers-20.04_20.04.0-2_all.deb"),
    "mate": (["apt", "mate-backgrounds=1.26.0-1"], "mate-backgrounds_1.26.0-1_all.deb"),
    # and the desktops set's
    "plasma": (["apt", "plasma-workspace-wallpapers=4:5.27.5-2"], "plasma-workspace-wallpapers_4%3a5.27.5-2_all.deb"),
    "ukui": (["apt", "ukui-wallpapers=20.04.3-1.1"], "ukui-wallpapers_20.04.3-1.1_all.deb"),
    "gnome": (["apt", "gnome-backgrounds=43.1-1"], "gnome-backgrounds_43.1-1_all.deb"),
    # and the samples set's (the other two are opencv's and pillow's above)
    "facerec": (["face_recognition==1.3.0", "--no-binary", "face_recognition"], "face_recognition-1.3.0.tar.gz"),
}  # fmt: skip
_CV, _PIL = "opencv-python-4.10.0.84/opencv/samples/data/", "pillow-10.4.0/Tests/images/"
FRESH_PHOTOS = (  # (archive, file inside it, short name, sha256 of that file)
    ("scipy", "scipy/misc/face.dat", "raccoon", "9d8b0b4d081313e2b485748c770472e5a95ed1738146883d84c7030493e82886"),
    ("imgaug", "imgaug/quokka.jpg", "quokka", "bf1059d0f925e7d0c712cadf07a04ba4cfc98957d7be65d3a7d8ae0c464cd76e"),
    ("ultralytics", "ultralytics/assets/bus.jpg", "bus",
     "c02019c4979c191eb739ddd944445ef408dad5679acab6fd520ef9d434bfbc63"),
    ("ultralytics", "ultralytics/assets/zidane.jpg", "two_men",
     "16d73869e3267a7d4ed00de8e860833bd1657c1b252e94c0c348277adc7b6edb"),
    ("insightface", "insightface-0.7.3/insightface/data/images/t1.jpg", "card_table",
     "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489"),
    ("pillow", _PIL + "xmp_test.jpg", "beach", "b024c2d84839f63249b220e42480a2150d9540a7daf464cbd8f459ea575ff0e9"),
    ("pillow", _PIL + "fujifilm.mpo", "cliffs", "9a762601aacf49a2e5a999521447279ae2a7fd91d1872301f49a1ff8b1c0b544"),
    ("pillow", _PIL + "sugarshack.mpo", "cabin", "e21649efe1bb04e342203fbb73fb8381609e3577949d4a8868cfeb90acfa1579"),
    ("pillow", _PIL + "frozenpond.mpo", "pond", "efaa9344f24bbb1d51707f8eb2552d7de42e5e03588b4a284c5c73305da9083b"),
    ("opencv", _CV + "baboon.jpg", "baboon", "1a1dd18d78eec44420af3b0b7f08ee3d41c982916cae3ce203d7ff35d754cc0f"),
    ("opencv", _CV + "fruits.jpg", "fruits", "9c031d80a1c52da5eca790db896baffec6a7e52bf786cdb7bbfca5c7f880e6a1"),
    ("opencv", _CV + "building.jpg", "building", "742a1baad62ac82e91e718e77eedf7e85c2eddc4badfb8c87c6cbc86c45a8b07"),
    ("opencv", _CV + "starry_night.jpg", "starry_night",
     "accda7a19a90f22a4a922fdc8c230167d7abf5f80882171e2cee125c5f12481d"),
    ("opencv", _CV + "aloeL.jpg", "aloe", "cce5736808efe80d9f04b118dbb978c344d4345672b332718c3e039a3eeb8eee"),
    ("opencv", _CV + "apple.jpg", "apple", "e86879de3d9a807dedc742a8f464f39e6b74bbb531a1fba3583155d94997d1cd"),
    ("opencv", _CV + "orange.jpg", "orange", "152c20d2f380ac985de25e474e1a5f06ed34b932191342099b8272a63a15a079"),
    ("opencv", _CV + "squirrel_cls.jpg", "squirrel",
     "20bb6e8ae96918a36c9886b6d48e54eedeb3948591e1485c206bc1dc60c8dc8b"),
    ("opencv", _CV + "leuvenA.jpg", "street", "b2977cdbd9fb3f94dadd6f76cf586d145676deb8a22b5f0f42149d21c058c09f"),
    ("opencv", _CV + "chicky_512.png", "dog", "45130d812992129ce81e6075984a127303c732c0871f8ba993724a8a4e91cbb4"),
    ("opencv", _CV + "ela_original.jpg", "notebook",
     "b55798b35e2dcb24675f0865a2442d0e4887eeb6aff322ecb1968d936cc23e7f"),
    ("opencv", _CV + "graf1.png", "graffiti", "1504b769303c7bde00fa578eeaad3c68e02aceabeb1242e556f1f8d19e4bdea5"),
)  # fmt: skip
FRESH_CROPS = ((0.9, 0.75, 0.25), (0.6, 0.15, 0.85), (0.45, 0.6, 0.6))
FRESH_SEED = 2028
FRESH_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cover-hpc" / "typeset-fresh"

FRESH_BOOKS: tuple[tuple[str, str, list[str]], ...] = (
    ("The Salt Road", "Miriam Achterberg", NONE),
    ("Ghost Frequency", "Tariq Nasser", THRILLER),
    ("A Lantern in the Fog", "Beatrix Holm", ROMANCE),
    ("The Clockmaker's Apprentice", "Ottilie Grange", FANTASY),
    ("Deep Field", "Sunil Varma", SF),
    ("Pale Fire Season", "Connor McBride", THRILLER),
    ("Eleven Winters", "Astrid Nyberg", NONE),
    ("The Honey Thief", "Laila Haddadi", ROMANCE),
    ("Kingdom of Ash and Amber", "Percival Stone", FANTASY),
    ("Parallax", "Yuki Tanabe", SF),
    ("Small Hours", "Gemma Whitlock", NONE),
    ("The Fifth Witness", "Robert Castellano", THRILLER),
    ("Second Chances in Portofino", "Giulia Ferrante", ROMANCE),
    ("The Moth Queen", "Serafina Vale", FANTASY),
    ("Cascade Failure", "Ahmed Rahimi", SF),
    ("On Rivers and Roads", "Duncan Fairweather", NONE),
    ("Black Ice", "Katrin Olsen", THRILLER),
    ("Café Noir", "Renée Roux", ROMANCE),
    ("The Drowned Library", "Ambrose Kettle", FANTASY),
    ("Sol 212", "Ingrid Castellanos-Ward", SF),
    ("The Art of Waiting", "Naomi Feld", NONE),
    ("Night Shift", "Curtis Boone", THRILLER),
    ("Letters from Lisbon", "Teresa Amaral", ROMANCE),
    ("Thorn and Feather", "Wilhelmina Drake", FANTASY),
    ("The Kepler Protocol", "Dmitri Volkov", SF),
    ("Bread, Butter & Other Blessings", "Agnes Whitby", NONE),
    ("Cutthroat Alley", "Jack Moreau", THRILLER),
    ("Always, Juliet", "Penelope Ashcroft", ROMANCE),
    ("The Iron Oracle", "Isaac Thorne", FANTASY),
    ("Event Horizon Blues", "Maya Goldberg", SF),
    ("What My Grandmother Knew", "Ruth Okafor-Lane", NONE),
    ("Hollow Point", "Dexter Quaid", THRILLER),
    ("Under a Paper Moon", "Violet Abernathy", ROMANCE),
    ("Seven Crowns", "Lorcan Fitzgerald", FANTASY),
    ("Radio Silence", "Hiroshi Matsuda", SF),
    ("The 4 A.M. Club", "Grant Whitaker", NONE),
    ("A Knife in Venice", "Lorenzo Bassi", THRILLER),
    ("Forget-Me-Not Lane", "Harriet Moss", ROMANCE),
    ("The Wyrm of Blackfen", "Edgar Pike", FANTASY),
    ("Zero Gravity Hearts", "Nia Campbell", SF),
    ("Maps of the Interior", "Simone Achebe", NONE),
    ("Last Call", "Frank Delaney", THRILLER),
    ("The Summer We Danced", "Rosie Callaghan", ROMANCE),
    ("Ember", "Ilse Brandvold", FANTASY),
    ("The Titan Expedition", "Arjun Mehra", SF),
    ("Notes on a Quiet Life", "Oliver Penrose", NONE),
    ("Crossfire at Dawn", "Sabine Keller", THRILLER),
    ("Chérie", "Anne Lefort", ROMANCE),
)


# The second fresh set, "wallpapers" (drawn on 2026-12-07 after the fresh set's one run, never tuned on): 25
# photographs from three of Debian 12's wallpaper packages (apt-get download, nothing installed), 3 crops each,
# 40 patterns from seed 2029, and the fresh books paired with other art (rotated by 17).
_BG, _MATE = "./usr/share/backgrounds/", "./usr/share/backgrounds/mate/nature/"
WALLPAPER_PHOTOS = (  # (archive, file inside it, short name, sha256 of that file)
    ("lomiri16", _BG + "Bridge_by_Sander_Klootwijk.jpg", "bridge",
     "bd86b081f9975e2b83527f71e49b9271a8ab40885428395969d9f7d834d7f050"),
    ("lomiri16", _BG + "Dragonfly_by_Bolly.jpg", "dragonfly",
     "af5af17841009732def24b09bb1e669a1b09d2b4bdeee7812c371101c30d2bb3"),
    ("lomiri16", _BG + "Picture_0B_by_freespace.jpg", "picture_0b",
     "c8c0ab18e48d9e0419fe42881112137f3afafc27dfddc29ec3a6d54c56d225ad"),
    ("lomiri16", _BG + "Picture_1A_by_freespace.jpg", "picture_1a",
     "89e86af38d04daaef975665dc2127e9fa76f0fd68f4eea105a2d0ae3390b010b"),
    ("lomiri16", _BG + "Wine_by_Jakkub_Mede.jpg", "wine",
     "d2e96e6d4da40dd804b3d0ce295e94de04a2d7d9b6785d42cd9d92ba58bced74"),
    ("lomiri16", _BG + "aitzgorri_by_Aitzol_Berasategi.jpg", "aitzgorri",
     "66268e7b48f8854d36a28765fac6e23ec1aee251daa6da1f64715f201020ad36"),
    ("lomiri16", _BG + "free_by_Peter_Nerlich.jpg", "free",
     "85a5453c2fed514c75973016f3d862aca62eb7ca087618822469274ac1092373"),
    ("lomiri16", _BG + "friends_by_Aitzol_Berasategi.jpg", "friends",
     "cc40e313c74e421edffe3403def413c16878ce14661cce7ec5915baeab35538d"),
    ("lomiri16", _BG + "greentock_by_Peter_Nerlich.jpg", "greentock",
     "e7b20e2db9dcd6e2b278ca55873c2110b35d89cd38b04d0b18728726888e6889"),
    ("lomiri16", _BG + "life_by_Aitzol_Berasategi.jpg", "life",
     "4c119350ead80201fe256850c3d316309ddfb4bdf10b235ce982dcde0c667c05"),
    ("lomiri16", _BG + "picosdeeuropa_by_Aitzol_Berasategi.jpg", "picosdeeuropa",
     "414d0072b2f6f2c555deafeaef6e45c4fed6fa9ad26eba6560ca8803959cf97a"),
    ("lomiri16", _BG + "seeding_by_Clements_Engelhardt.jpg", "seeding",
     "a5634d1ab5e41a3568e92d4a894a500c92b891f9ff734e50bd224d6e185a605f"),
    ("lomiri16", _BG + "sunset_by_Aitzol_Berasategi.jpg", "sunset",
     "474dab6a4b9f94dc76c29dfe30e9f5db4af0fd2e33fe5d695f8152b371efca18"),
    ("lomiri20", _BG + "Kleiber_by_Lukas_Baubkus.jpg", "kleiber",
     "6572410c09f4492c74ccadde133565a14c0161617d5917d4c820c66d65a44ba7"),
    ("mate", _MATE + "Aqua.jpg", "aqua",
     "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce"),
    ("mate", _MATE + "Blinds.jpg", "blinds",
     "f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600"),
    ("mate", _MATE + "Dune.jpg", "dune",
     "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91"),
    ("mate", _MATE + "FreshFlower.jpg", "freshflower",
     "972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e"),
    ("mate", _MATE + "Garden.jpg", "garden",
     "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78"),
    ("mate", _MATE + "GreenMeadow.jpg", "greenmeadow",
     "8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832"),
    ("mate", _MATE + "LadyBird.jpg", "ladybird",
     "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d"),
    ("mate", _MATE + "RainDrops.jpg", "raindrops",
     "3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16"),
    ("mate", _MATE + "Storm.jpg", "storm",
     "77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957"),
    ("mate", _MATE + "TwoWings.jpg", "twowings",
     "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb"),
    ("mate", _MATE + "YellowFlower.jpg", "yellowflower",
     "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306"),
)  # fmt: skip
WALLPAPER_CROPS = ((0.85, 0.35, 0.4), (0.55, 0.9, 0.15), (0.4, 0.1, 0.7))
WALLPAPER_SEED = 2029
WALLPAPER_BOOKS = FRESH_BOOKS[17:] + FRESH_BOOKS[:17]


# The third fresh set, "desktops" (drawn on 2026-12-07 before any change of that session, never tuned on): every
# wallpaper of three more Debian 12 packages, taken whole rather than chosen (plasma-workspace-wallpapers' 30, each at
# its largest light image; ukui-wallpapers' 12; gnome-backgrounds' 7 light ones but the 1 px "vnc"), 2 crops each,
# 40 patterns from seed 2030, and 48 books no older set has.
_PLASMA, _UKUI, _GNOME = "./usr/share/wallpapers/", "./usr/share/backgrounds/", "./usr/share/backgrounds/gnome/"
DESKTOP_PHOTOS = (  # (archive, file inside it, short name, sha256 of that file)
    ("plasma", _PLASMA + "Altai/contents/images/5120x2880.png", "altai",
     "f693f572875536b41935417f88d523bb0174b77c2dd7f00b71cd55436f93387d"),
    ("plasma", _PLASMA + "Autumn/contents/images/2560x1600.jpg", "autumn",
     "dfded25df13f5c2dfee68cafb23f69c3efb32b8a6931d82ebbe42de9810dd1e4"),
    ("plasma", _PLASMA + "BytheWater/contents/images/2560x1600.jpg", "bythewater",
     "c272434ef39f2abf1ed48a15a8910088020f3165329a5092f3940ec9464bc05f"),
    ("plasma", _PLASMA + "Canopee/contents/images/3840x2160.png", "canopee",
     "c538a5a7f7f78fbc129006b889acd8580e088f070df83509a1a7a7af9681ae43"),
    ("plasma", _PLASMA + "Cascade/contents/images/3840x2160.png", "cascade",
     "1915b53a6c0679595cdc3601dd3fc2984774152cbe40550b338d0121a41828c8"),
    ("plasma", _PLASMA + "Cluster/contents/images/3840x2160.png", "cluster",
     "e3e77c68791e1b7cc2e46bc9428798ac5582e9f88e1d6ca570078129437e596f"),
    ("plasma", _PLASMA + "ColdRipple/contents/images/2560x1600.jpg", "coldripple",
     "05bef6722fc0ed81292cceb3ed026c38d17e510f3c84be7d68610c2b1a723c3f"),
    ("plasma", _PLASMA + "ColorfulCups/contents/images/2560x1600.jpg", "colorfulcups",
     "6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d"),
    ("plasma", _PLASMA + "DarkestHour/contents/images/2560x1600.jpg", "darkesthour",
     "8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce"),
    ("plasma", _PLASMA + "Elarun/contents/images/2560x1600.png", "elarun",
     "ce4d7a22554fdc4d170c56bdee699e92ef6d721f4507f963702ed866029c01ed"),
    ("plasma", _PLASMA + "EveningGlow/contents/images/2560x1600.jpg", "eveningglow",
     "586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a"),
    ("plasma", _PLASMA + "FallenLeaf/contents/images/2560x1600.jpg", "fallenleaf",
     "95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de"),
    ("plasma", _PLASMA + "Flow/contents/images/5120x2880.jpg", "flow",
     "b2f1fbe9ebf772fed224de83ee4159cc3735c633a88cc42f8f45d49ccd12efc3"),
    ("plasma", _PLASMA + "FlyingKonqui/contents/images/2560x1600.png", "flyingkonqui",
     "856ecdf80b8253759629ae2c76d25d63d79fa81dbf05e4ee7ae0c95454e555bb"),
    ("plasma", _PLASMA + "Grey/contents/images/2560x1600.jpg", "grey",
     "88c31d8944b7e6935d1b9a296654c692f0772cb512491713eb30a972a604c0ed"),
    ("plasma", _PLASMA + "Honeywave/contents/images/5120x2880.jpg", "honeywave",
     "e75adbd953e9b7dc8946223e7f1f2c4a9378496e7597198f65b095356995c7ad"),
    ("plasma", _PLASMA + "IceCold/contents/images/5120x2880.png", "icecold",
     "4f000813086b839f4845e40bb51385e2e2afaf1df5bf55514d808f70611a63e6"),
    ("plasma", _PLASMA + "Kay/contents/images/5120x2880.png", "kay",
     "2b2fcfe33dbf701deb524f04231a3966e40f3239baf70469318c00c3961c2458"),
    ("plasma", _PLASMA + "Kite/contents/images/2560x1600.jpg", "kite",
     "bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8"),
    ("plasma", _PLASMA + "Kokkini/contents/images/3840x2160.png", "kokkini",
     "ba6fbd6ca54e4fef11e6c3e0b4f8fce21305846c7fcc2bcac6b4e15c75343d46"),
    ("plasma", _PLASMA + "MilkyWay/contents/images/5120x2880.png", "milkyway",
     "777b501b626c0e8417167229187a787bbaf2b59c83f8343c18d1b0486e754296"),
    ("plasma", _PLASMA + "OneStandsOut/contents/images/2560x1600.jpg", "onestandsout",
     "cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd"),
    ("plasma", _PLASMA + "Opal/contents/images/3840x2160.png", "opal",
     "bdc37f083dd498c54b853a273b2518a6402dbece172cc2d7873c478d70e06b20"),
    ("plasma", _PLASMA + "PastelHills/contents/images/3200x2000.jpg", "pastelhills",
     "8a5f3dc3ddc75687b5cc83833acb1ec9ce0b03d6529b2dace584707485447506"),
    ("plasma", _PLASMA + "Patak/contents/images/5120x2880.png", "patak",
     "e8f6167bafea78c54e2b736c448ce22809cc0bd085fb3a371d71546e956e7391"),
    ("plasma", _PLASMA + "Path/contents/images/2560x1600.jpg", "path",
     "7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8"),
    ("plasma", _PLASMA + "SafeLanding/contents/images/5120x2880.jpg", "safelanding",
     "7341ff2532d1a13a2ba35f2a9219a2c6cb070446f1aae4ce9a3a981c3bedd32f"),
    ("plasma", _PLASMA + "Shell/contents/images/5120x2880.jpg", "shell",
     "220d5fe725453dba2329b6733cb7094d8615f2e0bbbb8a150e9f113101c02213"),
    ("plasma", _PLASMA + "Volna/contents/images/5120x2880.jpg", "volna",
     "abc30b4fc6f6a83b6156e6b59ac283c067de40af820aafac8ac7c4fd83a9607c"),
    ("plasma", _PLASMA + "summer_1am/contents/images/2560x1600.jpg", "summer_1am",
     "c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8"),
    ("ukui", _UKUI + "2004default.jpg", "2004default",
     "3a9ce649f4cc97bec5f53eba56b73d4186efa86de0708bf1d85236eeeb875ca8"),
    ("ukui", _UKUI + "calla.png", "calla",
     "26fc5b5461f37132d913c9b03a48392e59a58f66e665cc5dfc2d997bda4190d4"),
    ("ukui", _UKUI + "city.png", "city",
     "7d7d048f935a7ca9de2808bc0523507a2fe36eda7e9b2fdfc1e3ebd7f4f2169d"),
    ("ukui", _UKUI + "desert.png", "desert",
     "e4247a65a08bdf23b42b318583ca9d2c796728466d30a2afdcf3a135c6a14a34"),
    ("ukui", _UKUI + "firstgeneration.jpg", "firstgeneration",
     "177f1f8cf97dce50abd06c60f274547114b71519f3484e744beecaffa4fd6faa"),
    ("ukui", _UKUI + "fluent-color.png", "fluent_color",
     "d8c185c623cdacf36133a3030ac86d73ef2b54e9aad1c8fab1ccb4d91f297511"),
    ("ukui", _UKUI + "focal-ubuntukylin.png", "focal_ubuntukylin",
     "3590397864dfceb16f14fc7646c5465a691082fd33a5fc8702c31d954fd9ef0a"),
    ("ukui", _UKUI + "goldfish.png", "goldfish",
     "a01ef5d91bfe63fd77e91107ebb83fe203b39ad09cfb40488c56d21f50dffe0f"),
    ("ukui", _UKUI + "rhythm.jpg", "rhythm",
     "7ed93d313b3a699b0f97af153aa3af6dcfdedb8dd35b4fba090f16fb82087de0"),
    ("ukui", _UKUI + "rollpaper.png", "rollpaper",
     "6928e4ae7483a4df1fa5d3cdd89ef94fa236fe560f97c99f399f0163120e9669"),
    ("ukui", _UKUI + "string.jpg", "string",
     "73fd26471a45955d256e9318fb24e7ec3a6a922fdc12ec3080c75d2a8da8ab3d"),
    ("ukui", _UKUI + "the-mouse.jpg", "the_mouse",
     "e4717d5cb7dd3ed12cf0883567b7f2ca38dd83a073a12fc666e8c3b87c3abf79"),
    ("gnome", _GNOME + "adwaita-l.webp", "adwaita",
     "e2a2f6b559e574b76f302e2e854321ee0acbbd8e1891fce95269781e248aa045"),
    ("gnome", _GNOME + "grid-l.webp", "grid",
     "5c4cb676405e7eb0d89757feb0e4ddb1f1003450066206c5ee928771f5e475af"),
    ("gnome", _GNOME + "licorice-l.webp", "licorice",
     "728c5dbcb399902570deb83fa10f5c142a87ed22c05140d6b41a1894c1fd4bb9"),
    ("gnome", _GNOME + "pixels-l.webp", "pixels",
     "1ee02e123d937bdcbc6ec848cda8b54f7acdddf5c0cec9f8aa6f4b2182835711"),
    ("gnome", _GNOME + "symbolic-l.webp", "symbolic",
     "4bba296092bd7f2801a207543ee8e9063ceb419deb3fbf1cafc6e7bb273cbc67"),
    ("gnome", _GNOME + "truchet-l.webp", "truchet",
     "ad1bb88c2aa30babe41f61c58f5c59a024fc73d5072ae37b7ae5035328ac0591"),
    ("gnome", _GNOME + "wood-l.webp", "wood",
     "37c8e62479bc5282a0e890d0bcbe1762223cc541b79730dcfaf38b0a57d2e80e"),
)  # fmt: skip
DESKTOP_CROPS = ((0.8, 0.25, 0.6), (0.5, 0.8, 0.3))
DESKTOP_SEED = 2030

DESKTOP_BOOKS: tuple[tuple[str, str, list[str]], ...] = (
    ("The Lamplighter's Promise", "Honora Blythe", ROMANCE),
    ("Cipher", "Marcus Adebayo", THRILLER),
    ("Beyond the Kuiper Belt", "Dr. Elin Sørensen", SF),
    ("The Thistle Crown", "Mairead Quigley", FANTASY),
    ("A Year of Soup", "Benedikt Huber", NONE),
    ("Glasshouse Girls", "Rosa Linden", ROMANCE),
    ("The Ferryman's Debt", "Caspar Holt", THRILLER),
    ("Low Orbit", "Priyanka Iyengar", SF),
    ("Fox & Fable", "Willa Penhallow", FANTASY),
    ("The Slow Roads of Umbria", "Francesca Lotti", NONE),
    ("Kiss Me in Kyoto", "Hana Mori", ROMANCE),
    ("Unmarked Graves", "Declan Rourke", THRILLER),
    ("The Ninth Moon of Saturn", "Oskar Lindgren", SF),
    ("Heir of Embers", "Isadora Fell", FANTASY),
    ("Why We Walk", "Dr. Amara Osei", NONE),
    ("Love Letters, Unsent", "Juliette Carmody", ROMANCE),
    ("Tripwire", "Luke Brennan", THRILLER),
    ("Signal Lost at 3.2 AU", "Reza Tehrani", SF),
    ("The Raven's Bargain", "Gwendolyn Marsh", FANTASY),
    ("Houseplants for the Hopeless", "Tilly Ambrose", NONE),
    ("Meet Me at the Pier", "Sadie Whitcombe", ROMANCE),
    ("The Quiet Assassin", "Viktor Haldane", THRILLER),
    ("Colony Ship Perseverance", "Ade Oyelaran", SF),
    ("Bramblewood", "Fern Carraway", FANTASY),
    ("Ordinary Genius", "Paul Kowalczyk", NONE),
    ("The Bookshop on Rue Mouffetard", "Élodie Caron", ROMANCE),
    ("Dead Drop", "Nadia Kovač", THRILLER),
    ("Halcyon-7", "Tomás Aguilar", SF),
    ("The Glass Familiar", "Morwenna Teague", FANTASY),
    ("Ten Thousand Steps", "Keiko Watanabe", NONE),
    ("Snowed In with You", "Clara Pemberton", ROMANCE),
    ("Nightwatch", "Gideon Frost", THRILLER),
    ("The Entropy Garden", "Lin Zhao", SF),
    ("Queen of the Hollow Hills", "Aislinn Doyle", FANTASY),
    ("Making Things Last", "Hugh Partridge", NONE),
    ("P.S. Stay", "Marisol Vega", ROMANCE),
    ("The Widow's Alibi", "Agatha Rennard", THRILLER),
    ("First Light on Europa", "Samuel N'Diaye", SF),
    ("Wolfsbane", "Sigrid Halvorsen", FANTASY),
    ("The Joy of Maps", "Leonard Ashe", NONE),
    ("Only in Barcelona", "Núria Puig", ROMANCE),
    ("Kill Switch", "Owen Tranter", THRILLER),
    ("We Were Stardust", "Ezra Blum", SF),
    ("The Bone Orchard", "Corvina Black", FANTASY),
    ("Learning to Listen", "Beatriz Ramos", NONE),
    ("Until the Tide Turns", "Lily Fairbanks", ROMANCE),
    ("Fourteen Days", "Jonah Reyes", THRILLER),
    ("The Hundred-Year Garden", "Margit Szabó", NONE),
)


# The fourth fresh set, "samples" (drawn on 2026-12-07 after the desktops set's runs and the line-break change,
# never tuned on): 37 photographs and drawings no older set has, from three source archives on PyPI: the rest of
# opencv-python's sample pictures (but its near-duplicates, the stereo pairs and lena), the pictures among
# Pillow's test images, and the four portraits of face_recognition's tests; 3 crops each, 40 patterns from
# seed 2031, and 48 more books.
_FR = "face_recognition-1.3.0/tests/test_images/"
SAMPLE_PHOTOS = (  # (archive, file inside it, short name, sha256 of that file)
    ("opencv", _CV + "messi5.jpg", "football", "1d570e49654e84c7a943918537bd9e5e1ef82920152e147c834006e235be97c9"),
    ("opencv", _CV + "home.jpg", "palace", "23b8cf46a1965d0ec33459b875aed43187802834db49e0daa9fa2cc842e9d8d2"),
    ("opencv", _CV + "butterfly.jpg", "butterfly", "34a99716b78ded10eae87b4880de739d3e68cc7dd1a96812bb28f469d5eeaea8"),
    ("opencv", _CV + "basketball1.png", "basketball",
     "ba06f6701f7260998b430c39b6557f775497e6ce7b1a74f0b7ea6af371bf54a6"),
    ("opencv", _CV + "smarties.png", "sweets", "ad3f751c053fdcf432687c1bc0e56a61a9119d2bb2ae29365f8aa6534fc77417"),
    ("opencv", _CV + "board.jpg", "circuit", "4c9a24ba67138ad5486d550f586cc5dd1161be112f1c1bea336d6c550cdf255f"),
    ("opencv", _CV + "box_in_scene.png", "box_in_scene",
     "8b0225ff76244a42bd1400c0904f8b7afea7d97b7d8115495e42e98ad347bd51"),
    ("opencv", _CV + "aero1.jpg", "aerial", "d9a69191f6e3642ea361bc3c62e677b2f40fe6534b78da540f4155e0734b59ef"),
    ("opencv", _CV + "Blender_Suzanne1.jpg", "suzanne",
     "bc3330e78e3456688e22b62fe033b8b2444fd016df567b1782bcc9baaead8e02"),
    ("opencv", _CV + "stuff.jpg", "desk", "21cd00afbdd0727f445dd91c0a09633e6345ed5b05a3d2355453a1f3c314c6c5"),
    ("opencv", _CV + "rubberwhale1.png", "toys", "eb312435369dac9efcc92f7e098edbd9ed8d7e6dfede8b3b4d8e3702cd80b796"),
    ("opencv", _CV + "pic2.png", "noise_squares", "8c32d76f17c2eca78a1402fd1bb48144785e5397ff5a24de68c36b0f76b1f055"),
    ("opencv", _CV + "cards.png", "cards", "acf2d347e8de7fbb0edbf457c8fb467cb6d16d4166c92f40e68f3831e06149ac"),
    ("opencv", _CV + "graf3.png", "mural", "492e0e96f21748d093e1a29f4dbfd46528bd75966937e85ce7c8abc0f361fc15"),
    ("opencv", _CV + "aruco/choriginal.jpg", "calibration",
     "12eddb0bd4c67cc45ad00f3eec7870241eb19843173e0f212eee7e70ee5c3d1e"),
    ("opencv", _CV + "left01.jpg", "chessboard", "9621899098adffa1440c8264606bb7be535ccfd9ad126ae8e0bd9b0c5a5b8676"),
    ("opencv", _CV + "licenseplate_motion.jpg", "car",
     "ea6fa9cea75df91bec656d1d3b903111a9c0708c6a3b88f405a5156de38ff9d6"),
    ("opencv", _CV + "ellipses.jpg", "ellipses", "775f8bd606ba5184907a0851474dc39893e11a296e0af233e8b00f7afbde1866"),
    ("opencv", _CV + "HappyFish.jpg", "cartoon_fish",
     "ade5b67347d7f89b1539c93843f3f7178782a7e34eb1fe586f4a785c3e60a432"),
    ("opencv", _CV + "sudoku.png", "sudoku", "3cd9ab173f7178c0a16bba9f867062b58b5d60918d5aeb8ced85cba0b24c353a"),
    ("opencv", _CV + "text_defocus.jpg", "defocused_page",
     "ffea13e23e2bdce60e50e43e5950d76d542a61a820c03c28fbb8f11b26edfdb6"),
    ("opencv", _CV + "ml.png", "robot", "df95ee4045dc769d824ce6254acc731f37e0326d205899485f7276ce0fdde3c9"),
    ("opencv", _CV + "pic5.png", "shapes", "fa1f0dcc715867c5c8684f53d29ed2bfa013f8669aa1f73864fb7d315638a02b"),
    ("pillow", _PIL + "flower2.jpg", "heather", "4462d640037c4040c39695b6fbd8203d539ad371e30ec35b663801b8d6621dc2"),
    ("pillow", _PIL + "icc_profile_big.jpg", "seaside",
     "9329fadea9654d127bdf1f5c31d0583a5797282ffc45d668662da4df6ee4c3dd"),
    ("pillow", _PIL + "app13-multiple.jpg", "puppies",
     "1fbf57a5ef811845df2795ff91269fe248dc6e98386b7c2b42dc1cd3a7aaa55b"),
    ("pillow", _PIL + "exif-72dpi-int.jpg", "peak", "9a77846a19a58f29bae67233c99f29fd2361536044176077c1ea4a2507c79b68"),
    ("pillow", _PIL + "exif_gps_typeerror.jpg", "warplane",
     "2ed5855e452e9798fc21c02e81213c84d0b4d52f2870212b179cdd1371a101a3"),
    ("pillow", _PIL + "iss634.webp", "toy_figure", "e000f2c68d1dcbe0cb9b399e6f67031e624f9f1769950efad94e45596cf96f19"),
    ("pillow", _PIL + "radial_gradients.png", "moire",
     "f77549393101ea646b224364816c5d4234c92b29217c76ff256f129ee50b3d7d"),
    ("pillow", _PIL + "exif_imagemagick.png", "starburst",
     "7ae56e5daf3a86269b0cabe32be8b3a15bb7cbbec24e8f3f333a1e363e74d1d6"),
    ("pillow", _PIL + "no_rows_per_strip.tif", "glow",
     "88a7b03d4913ed72fed1316b07c8187e09ccf2652775b323ddd9c7afe928dde4"),
    ("pillow", _PIL + "flower.jpg", "frangipani", "8a9d04b92d0de5836c59ede8ae421235488e4031e893e07b1fe7e4b78f6a9901"),
    ("facerec", _FR + "biden.jpg", "portrait_a", "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c"),
    ("facerec", _FR + "obama.jpg", "portrait_b", "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6"),
    ("facerec", _FR + "obama2.jpg", "portrait_c", "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6"),
    ("facerec", _FR + "obama3.jpg", "portrait_d", "76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3"),
)  # fmt: skip
SAMPLE_CROPS = ((0.95, 0.4, 0.5), (0.7, 0.85, 0.2), (0.5, 0.1, 0.75))
SAMPLE_SEED = 2031

SAMPLE_BOOKS: tuple[tuple[str, str, list[str]], ...] = (
    ("The Winter Orchard", "Anneliese Vogel", ROMANCE),
    ("Static", "Jonas Webber", THRILLER),
    ("The Long Dark Between Stars", "Kenji Morita", SF),
    ("Crown of Thorns and Roses", "Evangeline Thorpe", FANTASY),
    ("Slow Bread", "Martha Quill", NONE),
    ("Her Majesty's Spy", "Cecily Hart", THRILLER),
    ("Red Planet Rising", "Ibrahim Sesay", SF),
    ("The Summer Cottage", "Louisa Fenwick", ROMANCE),
    ("Goblin Market Days", "Rhys Llewellyn", FANTASY),
    ("A Short History of Salt", "Dr. Conrad Ames", NONE),
    ("Blindspot", "Tessa Morgan", THRILLER),
    ("Orbital Decay", "Anya Petrović", SF),
    ("The Mapmaker's Wife", "Clémence Arnaud", ROMANCE),
    ("Song of the Salt Witch", "Maeve O'Connell", FANTASY),
    ("The Tidy Mind", "Grace Obi", NONE),
    ("Final Cut", "Hugo Marchand", THRILLER),
    ("Andromeda Falls", "Xavier Dunn", SF),
    ("Three Weddings in Tuscany", "Serena Galli", ROMANCE),
    ("The Hollow Crown of Vael", "Torin Blackthorn", FANTASY),
    ("Walking the Camino", "Father Miguel Soto", NONE),
    ("Cold Trail", "Bridget Keane", THRILLER),
    ("The Andros Signal", "Lena Hoffmann", SF),
    ("Sweet Tea & Secrets", "Daisy Beaumont", ROMANCE),
    ("Runes of the Frozen North", "Eirik Solheim", FANTASY),
    ("The Numbers Game", "Alan Greenberg", NONE),
    ("Deadline", "Carla Mendes", THRILLER),
    ("Exodus 2150", "Tobias Ekwueme", SF),
    ("Love at Second Sight", "Annabel Royce", ROMANCE),
    ("The Starlit Forge", "Kaelen Dusk", FANTASY),
    ("Wild Swimming", "Freya Dalton", NONE),
    ("Burned Bridges", "Marco Rinaldi", THRILLER),
    ("Lunar Winter", "Sakura Ito", SF),
    ("Postcards from Paris", "Margaux Lévesque", ROMANCE),
    ("The Faerie Door", "Bronwyn Teller", FANTASY),
    ("Raising Bees", "Walter Higgins", NONE),
    ("The Informant", "Stefan Kraus", THRILLER),
    ("Machine Dreams", "Ayesha Siddiqui", SF),
    ("A Song for Sunday", "Ruby Okonkwo", ROMANCE),
    ("Dragonsworn", "Aldric Fenn", FANTASY),
    ("Everyday Stoicism", "Prof. Helena Voss", NONE),
    ("Ghost Town", "Wade Colter", THRILLER),
    ("The Silent Planet Protocol", "Dr. Yusuf Demir", SF),
    ("Midsummer Kisses", "Isla McKenzie", ROMANCE),
    ("The Ember Throne", "Seraphine Gray", FANTASY),
    ("The Art of Mending", "Noriko Sato", NONE),
    ("Eyewitness", "Patrick Boyle", THRILLER),
    ("Starship Orphans", "Mina Kowalski", SF),
    ("Crème Brûlée at Midnight", "Odette Marchal", ROMANCE),
)


def _fetch_archive(name: str, cache: Path) -> Path:
    """The archive of ``FRESH_ARCHIVES[name]`` in ``cache``, downloaded with pip (no install) if missing."""
    arguments, file_name = FRESH_ARCHIVES[name]
    path = cache / file_name
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"# fetching {file_name} (photographs are inside it; nothing is installed)", flush=True)
        if arguments[0] == "apt":  # a Debian package: downloaded into the cache, not installed
            command = ["apt-get", "download", *arguments[1:]]
        else:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache), *arguments]
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=cache)
        except FileNotFoundError:  # no apt-get: not a Debian machine
            raise SystemExit(f"the set needs {file_name}, a Debian package: `{' '.join(command)}` needs apt-get "
                             f"(Debian or Ubuntu); or copy the file into {cache}") from None  # fmt: skip
        if done.returncode or not path.exists():
            raise SystemExit(f"the fresh set needs {file_name} from the package registry: `{' '.join(command)}` "
                             f"failed ({done.returncode}): {done.stderr.strip()[-400:]}")  # fmt: skip
    return path


def _deb_member(path: Path, member: str) -> bytes:
    """A file from a Debian package: its data.tar.* member of the ar archive, then the file in that."""
    import io
    import tarfile

    data = path.read_bytes()
    offset = 8  # past "!<arch>\n"
    while offset + 60 <= len(data):
        name, size = data[offset : offset + 16].decode().strip(), int(data[offset + 48 : offset + 58])
        body = data[offset + 60 : offset + 60 + size]
        if name.rstrip("/").startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as archive:
                handle = archive.extractfile(member)
                if handle is None:
                    raise SystemExit(f"{path.name} has no file {member}")
                return handle.read()
        offset += 60 + size + size % 2
    raise SystemExit(f"{path.name}: not a Debian package (no data.tar member)")


def _archive_member(path: Path, member: str) -> bytes:
    if path.suffix == ".deb":
        return _deb_member(path, member)
    if path.suffix == ".whl":
        import zipfile

        with zipfile.ZipFile(path) as archive:
            return archive.read(member)
    import tarfile

    with tarfile.open(path) as archive:
        handle = archive.extractfile(member)
        if handle is None:
            raise SystemExit(f"{path.name} has no file {member}")
        return handle.read()


def fresh_photo(archive: str, member: str, digest: str, cache: Path = FRESH_CACHE) -> Image.Image:
    """One fresh photograph, decoded from the file inside its archive (cached as PNG once its sha256 checks)."""
    import hashlib
    import io

    decoded = cache / "photos" / f"{digest[:16]}.png"
    if decoded.exists():
        with Image.open(decoded) as image:
            return image.convert("RGB")
    data = _archive_member(_fetch_archive(archive, cache), member)
    if hashlib.sha256(data).hexdigest() != digest:
        raise SystemExit(f"{member} in {FRESH_ARCHIVES[archive][1]}: sha256 {hashlib.sha256(data).hexdigest()}, "
                         f"expected {digest}; delete {cache} and run again")  # fmt: skip
    if member.endswith(".dat"):  # scipy's raccoon: bz2 of 768 x 1024 RGB bytes
        import bz2

        image = Image.fromarray(np.frombuffer(bz2.decompress(data), np.uint8).reshape(768, 1024, 3))
    else:
        with Image.open(io.BytesIO(data)) as opened:  # an MPO's first frame is its plain JPEG
            opened.seek(0)
            if opened.mode in ("RGBA", "LA", "P"):  # a cut-out: on a tinted card, as in the unseen set
                card = Image.new("RGBA", opened.size, (214, 226, 236, 255))
                image = Image.alpha_composite(card, opened.convert("RGBA")).convert("RGB")
            else:
                image = opened.convert("RGB")
    decoded.parent.mkdir(parents=True, exist_ok=True)
    image.save(decoded)
    return image


def fresh_photo_art(
    size: tuple[int, int], photos: Any = FRESH_PHOTOS, crops: Any = FRESH_CROPS
) -> list[tuple[str, Image.Image]]:
    art = []
    for archive, member, short, digest in photos:
        photo = fresh_photo(archive, member, digest)
        for number, (share, fx, fy) in enumerate(crops):
            art.append((f"{short}#{number}", crop_portrait(photo, size, share, fx, fy)))
    return art


def wallpaper_photo_art(size: tuple[int, int]) -> list[tuple[str, Image.Image]]:
    return fresh_photo_art(size, WALLPAPER_PHOTOS, WALLPAPER_CROPS)


def wallpaper_pattern_art(size: tuple[int, int]) -> list[tuple[str, Image.Image]]:
    return fresh_pattern_art(size, WALLPAPER_SEED)


def desktop_photo_art(size: tuple[int, int]) -> list[tuple[str, Image.Image]]:
    return fresh_photo_art(size, DESKTOP_PHOTOS, DESKTOP_CROPS)


def desktop_pattern_art(size: tuple[int, int]) -> list[tuple[str, Image.Image]]:
    return fresh_pattern_art(size, DESKTOP_SEED)


def sample_photo_art(size: tuple[int, int]) -> list[tuple[str, Image.Image]]:
    return fresh_photo_art(size, SAMPLE_PHOTOS, SAMPLE_CROPS)


def sample_pattern_art(size: tuple[int, int]) -> list[tuple[str, Image.Image]]:
    return fresh_pattern_art(size, SAMPLE_SEED)


def _palette(rng: np.random.Generator, count: int) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(count)]  # type: ignore[misc]


def fresh_pattern_art(size: tuple[int, int], seed: int = FRESH_SEED) -> list[tuple[str, Image.Image]]:
    """40 patterns, each kind's every parameter (angle, period, colours, scale) drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    width, height, x, y, u, v = _grid(size)
    made: list[tuple[str, np.ndarray]] = []
    for _ in range(8):
        degrees, period, count = int(rng.integers(0, 180)), float(rng.uniform(2, 14)), int(rng.integers(2, 7))
        made.append((f"stripes {degrees} deg {period:.1f}px x{count}",
                     _rotated_stripes(size, period, degrees, _palette(rng, count))))  # fmt: skip
    for _ in range(5):
        scale = int(rng.choice([2, 4, 5, 10, 20, 40]))
        made.append((f"noise {scale}px", _upscaled_noise(rng, size, scale, int(rng.choice([1, 3])))))
    for _ in range(3):
        radius = float(rng.uniform(2, 30))
        made.append((f"blotches r{radius:.0f}", _blurred_noise(rng, size, radius)))
    for _ in range(4):
        cell = int(rng.integers(2, 100))
        first, second = _palette(rng, 2)
        made.append((f"checker {cell}px", _checker(size, cell, first, second)))
    for _ in range(3):
        pitch = int(rng.integers(5, 70))
        ink, paper = _palette(rng, 2)
        made.append((f"dots {pitch}px", _dots(size, pitch, float(rng.uniform(0.2, 0.45)) * pitch, ink, paper,
                                              float(rng.uniform(0, 90)))))  # fmt: skip
    for _ in range(4):
        start, end = _palette(rng, 2)
        angle = math.radians(float(rng.uniform(0, 360)))
        ramp = (u - 0.5) * math.cos(angle) + (v - 0.5) * math.sin(angle)
        made.append((f"gradient {math.degrees(angle):.0f} deg", _ramp((ramp - ramp.min()) / np.ptp(ramp), start, end)))
    for _ in range(3):
        a, b, c = rng.uniform(3, 40, 3)
        field_ = np.sin(u * a + np.sin(v * b) * rng.uniform(0, 4)) * np.cos(v * c)
        dark, light = _palette(rng, 2)
        made.append((f"waves {a:.0f}/{b:.0f}/{c:.0f}", np.where((field_ > 0)[..., None], np.array(dark, np.uint8),
                                                                 np.array(light, np.uint8))))  # fmt: skip
    for _ in range(2):
        rings = float(rng.uniform(10, 80))
        cx, cy = rng.uniform(0, 1, 2)
        ink, paper = _palette(rng, 2)
        around = (np.hypot(x - cx * width, y - cy * height) // rings % 2 == 0)[..., None]
        made.append((f"rings {rings:.0f}px", np.where(around, np.array(ink, np.uint8), np.array(paper, np.uint8))))
    for _ in range(2):  # Voronoi cells of random colours
        points = rng.uniform(0, 1, (int(rng.integers(12, 120)), 2)) * (width, height)
        small = np.stack(np.mgrid[0:height:8, 0:width:8][::-1], -1).reshape(-1, 2)
        nearest = np.argmin(((small[:, None, :] - points[None]) ** 2).sum(-1), axis=1)
        cells = np.array(_palette(rng, len(points)), np.uint8)[nearest].reshape(-(-height // 8), -(-width // 8), 3)
        made.append((f"cells {len(points)}", np.asarray(Image.fromarray(cells).resize(size, Image.Resampling.NEAREST))))
    for _ in range(2):
        hatch = int(rng.integers(4, 16))
        ink, paper = _palette(rng, 2)
        lines = ((x + y) % hatch < 2) | ((x - y) % hatch < 2)
        made.append((f"crosshatch {hatch}px", np.where(lines[..., None], np.array(ink, np.uint8),
                                                       np.array(paper, np.uint8))))  # fmt: skip
    fonts = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf"]
    for font_file in fonts:
        scale, columns = int(rng.integers(30, 120)), int(rng.integers(1, 4))
        made.append((f"page {Path(font_file).stem} {columns} col", _words(rng, size, font_file, scale, columns,
                                                                          _palette(rng, 1)[0])))  # fmt: skip
    for _ in range(2):
        made.append(("flat", np.full((height, width, 3), _palette(rng, 1)[0], np.uint8)))
    counts = {name: [n for n, _ in made].count(name) for name, _ in made}
    names = [f"{name} #{index}" if counts[name] > 1 else name for index, (name, _) in enumerate(made)]
    pairs = zip(names, made, strict=True)
    return [(name, Image.fromarray(np.ascontiguousarray(pixels))) for name, (_, pixels) in pairs]


SETS = ("tuned", "unseen", "fresh", "wallpapers", "desktops", "samples")


def make_set(size: tuple[int, int], kinds: tuple[str, ...] = ("photo", "pattern"), which: str = "tuned") -> list[Cover]:
    """``which``: "tuned" (the set the typesetter's constants were set on), "unseen" (art drawn after them, since
    tuned on), "fresh" and "wallpapers" (drawn after the page read), "desktops" (drawn after the bold sans
    authors) or "samples" (drawn after the line-break change)."""
    photos, patterns, books = {"tuned": (photo_art, pattern_art, BOOKS),
                               "unseen": (unseen_photo_art, unseen_pattern_art, UNSEEN_BOOKS),
                               "fresh": (fresh_photo_art, fresh_pattern_art, FRESH_BOOKS),
                               "wallpapers": (wallpaper_photo_art, wallpaper_pattern_art, WALLPAPER_BOOKS),
                               "desktops": (desktop_photo_art, desktop_pattern_art, DESKTOP_BOOKS),
                               "samples": (sample_photo_art, sample_pattern_art, SAMPLE_BOOKS),
                               }[which]  # fmt: skip
    art = ([("photo", *a) for a in photos(size)] if "photo" in kinds else []) + (
        [("pattern", *a) for a in patterns(size)] if "pattern" in kinds else []
    )
    covers = []
    for index, (kind, name, image) in enumerate(art):
        title, author, genres = books[index % len(books)]
        covers.append(Cover(index, kind, name, image, title, author, genres, which))
    return covers


# ------------------------------------------------------------------------------------------- measures


def srgb_luminance(pixels: np.ndarray) -> np.ndarray:
    """WCAG 2.x relative luminance of sRGB pixels (..., 3) in 0-255."""
    c = np.asarray(pixels, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return linear @ np.array([0.2126, 0.7152, 0.0722])


def hex_rgb(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return int(colour[0:2], 16), int(colour[2:4], 16), int(colour[4:6], 16)


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def worst_glyph_contrast(pixels: np.ndarray, line_boxes: Any, colour: str, font_size: int,
                         percentile: float = 5.0) -> tuple[float | None, int, int]:  # fmt: skip
    """(contrast at ``percentile`` over the ring, glyph pixels, ring pixels); None with no glyph pixels."""
    height, width = pixels.shape[:2]
    text = np.array(hex_rgb(colour), dtype=np.int16)
    inside = np.zeros((height, width), bool)
    for left, top, right, bottom in line_boxes:
        inside[max(0, top) : min(height, bottom), max(0, left) : min(width, right)] = True
    near = np.abs(pixels.astype(np.int16) - text).max(axis=2) <= COLOUR_TOLERANCE
    glyph = (inside & near).astype(np.uint8)
    if not glyph.any():
        return None, 0, 0
    radius = max(3, round(0.12 * font_size))
    ring = cv2.dilate(glyph, _disc(radius)).astype(bool) & ~cv2.dilate(glyph, _disc(1)).astype(bool)
    if not ring.any():
        return None, int(glyph.sum()), 0
    lum = srgb_luminance(pixels[ring])
    text_lum = float(srgb_luminance(text))
    ratios = (np.maximum(lum, text_lum) + 0.05) / (np.minimum(lum, text_lum) + 0.05)
    return float(np.percentile(ratios, percentile)), int(glyph.sum()), int(ring.sum())


def salient_region(art: Image.Image) -> tuple[np.ndarray, str]:
    """The fine-grained static saliency of the art, thresholded: (mask, "otsu" or "top 15%")."""
    saliency = cv2.saliency.StaticSaliencyFineGrained_create()
    ok, smap = saliency.computeSaliency(cv2.cvtColor(np.asarray(art), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("saliency failed")
    smap = smap.astype(np.float32)
    span = float(smap.max() - smap.min())
    scaled = ((smap - smap.min()) / span * 255).astype(np.uint8) if span > 0 else np.zeros(smap.shape, np.uint8)
    if span > 0:
        _, otsu = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        mask = otsu > 0
        if 0.005 <= mask.mean() <= 0.5:
            return mask, "otsu"
    cut = np.percentile(scaled, 85)
    mask = scaled > cut
    if not mask.any():  # a flat map: every pixel alike
        mask = np.ones(scaled.shape, bool)
    return mask, "top 15%"


def salient_coverage(salient: np.ndarray, boxes: Any) -> float:
    """|salient ∩ union of the boxes| / |salient|."""
    height, width = salient.shape
    text = np.zeros_like(salient, dtype=bool)
    for left, top, right, bottom in boxes:
        text[max(0, top) : min(height, bottom), max(0, left) : min(width, right)] = True
    total = int(salient.sum())
    return float((salient & text).sum() / total) if total else 0.0


def fold(text: str) -> str:
    """Accents dropped, typographic quotes and dashes as ASCII: the secondary figure's comparison."""
    stripped = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", stripped).translate(QUOTES)


def collapse(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


# Letters with no decomposition to a base letter, as a reader without them spells them (ø in "Sørensen": o)
UNDECOMPOSED = str.maketrans({"ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ħ": "h", "ı": "i",
                              "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ß": "ss"})  # fmt: skip


@functools.cache
def reader_alphabet(language: str = "eng") -> frozenset[str] | None:
    """The characters the reader's model can write: the LSTM unicharset inside its traineddata, unpacked with
    tesseract's own combine_tessdata. Debian's English model has é and no other accented letter, so no cover can
    read back "Sørensen" or "Núria" exactly whatever its design. None where the tools cannot say."""
    try:
        listing = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True, check=False).stdout
    except OSError:  # no tesseract at all
        return None
    folder = re.search(r'"([^"]+)"', listing)
    model = Path(folder.group(1)) / f"{language}.traineddata" if folder else None
    if model is None or not model.is_file():
        return None
    with tempfile.TemporaryDirectory() as scratch:
        try:
            done = subprocess.run(["combine_tessdata", "-u", str(model), f"{scratch}/{language}."],
                                  capture_output=True, text=True, check=False)  # fmt: skip
        except OSError:  # tesseract without its training tools
            return None
        unicharset = Path(scratch) / f"{language}.lstm-unicharset"
        if done.returncode or not unicharset.is_file():
            return None
        entries = unicharset.read_text(encoding="utf-8").splitlines()[1:]
    return frozenset(line.split(" ")[0] for line in entries if len(line.split(" ")[0]) == 1)


def as_reader_spells(text: str, alphabet: frozenset[str] | None) -> str:
    """``text`` with each letter the reader cannot write replaced by its base letter (ó: o, ø: o), the rest
    exactly as given: what a reader with that alphabet writes when it reads the cover right."""
    if alphabet is None:
        return text
    spelled = []
    for character in text:
        if character in alphabet or character.isspace():
            spelled.append(character)
            continue
        base = "".join(c for c in unicodedata.normalize("NFKD", character) if not unicodedata.combining(c))
        spelled.append(base.translate(UNDECOMPOSED) or character)
    return "".join(spelled)


def tesseract(path: Path, psm: int | None = None) -> str:
    command = ["tesseract", str(path), "stdout", "-l", "eng"] + (["--psm", str(psm)] if psm else [])
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"tesseract failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return done.stdout


def accepts_size() -> bool:
    return "size" in inspect.signature(typeset).parameters


def _crop_box(box: Any, font_size: int, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    pad = round(font_size / 2)
    left, top, right, bottom = box
    return max(0, left - pad), max(0, top - pad), min(image_size[0], right + pad), min(image_size[1], bottom + pad)


def typeset_one(cover: Cover, size: tuple[int, int], workdir: Path, pool: ThreadPoolExecutor,
                out: Path | None = None) -> Pending:  # fmt: skip
    """Typeset one cover, measure contrast and coverage here, and queue its reads on the pool."""
    record: dict[str, Any] = {"set": cover.set, "index": cover.index, "kind": cover.kind, "name": cover.name,
                              "title": cover.title, "author": cover.author, "genres": cover.genres}  # fmt: skip
    salient, method = salient_region(cover.art)
    record["salient_method"] = method
    record["salient_share_of_cover"] = round(float(salient.mean()), 4)
    kwargs: dict[str, Any] = {"author": cover.author, "genres": cover.genres}
    if accepts_size():
        kwargs["size"] = size
    started = time.perf_counter()
    try:
        result = typeset(cover.art, cover.title, **kwargs)
    except TypesetError as error:  # a refusal: this cover failed
        record["ms"] = (time.perf_counter() - started) * 1000
        record["error"] = f"{type(error).__name__}: {error}"
        return Pending(record)
    except Exception as error:  # a bug in the typesetter: a failed cover too, marked as such
        record["ms"] = (time.perf_counter() - started) * 1000
        record["error"] = f"BUG {type(error).__name__}: {error}"
        return Pending(record)
    record["ms"] = (time.perf_counter() - started) * 1000
    page = getattr(result.layout, "page_read", None) or {}  # the typesetter's own page read (another model)
    record["self_read"] = page.get("reads")
    record["self_tries"] = page.get("tries", 1)
    record["art_wash"] = getattr(result.layout, "art_wash", None)
    record["genre_role"] = result.layout.genre_role
    image = result.image.convert("RGB")
    if image.size != cover.art.size:  # the typesetter resized: measure saliency at the cover's size
        salient, method = salient_region(cover.art.resize(image.size, Image.Resampling.LANCZOS))
        record["salient_method"] = method
    pixels = np.asarray(image)
    blocks = {"title": result.layout.title, "author": result.layout.author}
    boxes = []
    contrasts = []
    pending = Pending(record)
    stem = f"{cover.index:03d}"
    path = workdir / f"{stem}.png"
    image.save(path, compress_level=1)
    if out:
        image.save(out / f"{stem}-{cover.kind}-{_safe(cover.name)}.png", compress_level=1)
    pending.whole = pool.submit(tesseract, path)
    pending.sparse = pool.submit(tesseract, path, 11)
    for role, block in blocks.items():
        if block is None:
            record[role + "_block"] = None
            continue
        value, glyph_px, ring_px = worst_glyph_contrast(pixels, block.line_boxes, block.colour, block.font_size)
        record[role + "_block"] = {"lines": list(block.lines), "box": list(block.box), "colour": block.colour,
                                   "font_size": block.font_size, "contrast": value, "glyph_px": glyph_px,
                                   "ring_px": ring_px, "treatment": _treatment(block)}  # fmt: skip
        if value is not None:
            contrasts.append(value)
        else:
            contrasts.append(0.0)  # no glyph of the text colour found: counted as illegible
        boxes.extend(block.line_boxes)
        crop_path = workdir / f"{stem}-{role}.png"
        image.crop(_crop_box(block.box, block.font_size, image.size)).save(crop_path, compress_level=1)
        pending.crops[role] = pool.submit(tesseract, crop_path, 6)
    record["contrast"] = min(contrasts) if contrasts else None
    record["salient_coverage"] = salient_coverage(salient, boxes)
    return pending


def _treatment(block: Any) -> str | None:
    """What the typesetter laid under the text, by whichever field its version records it in."""
    for name in ("treatment", "remedy"):
        value = getattr(block, name, None)
        if value is not None:
            return str(value)
    return None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def finish(pending: Pending) -> dict[str, Any]:
    """Collect the reads of one cover and score them."""
    record = pending.record
    if pending.whole is None:
        for key in (
            "title_alphabet_exact",
            "author_alphabet_exact",
            "both_alphabet_exact",
            "title_exact",
            "author_exact",
            "both_exact",
            "title_crop_exact",
            "author_crop_exact",
            "title_sparse_exact",
            "author_sparse_exact",
            "both_sparse_exact",
        ):
            record[key] = False
        return record
    read = collapse(pending.whole.result())
    record["read"] = read
    sparse = collapse(pending.sparse.result()) if pending.sparse is not None else ""
    record["read_sparse"] = sparse
    folded = fold(read)
    alphabet = reader_alphabet()
    for role in ("title", "author"):
        wanted = collapse(record[role])
        record[role + "_exact"] = wanted in read
        spelled = as_reader_spells(wanted, alphabet)
        record[role + "_alphabet_exact"] = spelled in read
        if spelled != wanted:
            record[role + "_as_reader_spells"] = spelled
        record[role + "_folded"] = fold(wanted) in folded
        record[role + "_sparse_exact"] = wanted in sparse
        crop = pending.crops.get(role)
        if crop is not None:
            crop_read = collapse(crop.result())
            record[role + "_crop_read"] = crop_read
            record[role + "_crop_exact"] = wanted in crop_read
        else:
            record[role + "_crop_exact"] = False
    record["both_exact"] = record["title_exact"] and record["author_exact"]
    record["both_alphabet_exact"] = record["title_alphabet_exact"] and record["author_alphabet_exact"]
    record["both_sparse_exact"] = record["title_sparse_exact"] and record["author_sparse_exact"]
    return record


def run(covers: list[Cover], size: tuple[int, int], workers: int = 2, out: Path | None = None,
        progress: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """Every cover typeset and measured; the records in the covers' order."""
    records = []
    with tempfile.TemporaryDirectory(prefix="legibility-") as tmp, ThreadPoolExecutor(workers) as pool:
        pendings = []
        for cover in covers:
            pendings.append(typeset_one(cover, size, Path(tmp), pool, out))
            if progress and len(pendings) % 10 == 0:
                print(f"# typeset {len(pendings)}/{len(covers)}", file=sys.stderr, flush=True)
        for pending in pendings:
            records.append(finish(pending))
    return records


# ------------------------------------------------------------------------------------------- printing


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _plain(record: dict[str, Any]) -> bool:
    return (record["title"] + record["author"]).isascii()


def _beyond(record: dict[str, Any]) -> bool:
    """Whether the cover's title or author has a letter the reader's model cannot write."""
    return any(record.get(role + "_as_reader_spells") for role in ("title", "author"))


def figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(records)
    ok = [r for r in records if "error" not in r]
    contrasts = [r["contrast"] for r in ok if r.get("contrast") is not None]
    ms = [r["ms"] for r in records]
    result: dict[str, Any] = {
        "covers": n,
        "errors": n - len(ok),
        "titles": sum(r["title_exact"] for r in records),
        "authors": sum(r["author_exact"] for r in records),
        "both": sum(r["both_exact"] for r in records),
        "both_alphabet": sum(r.get("both_alphabet_exact", False) for r in records),
        "beyond_alphabet": sum(_beyond(r) for r in records),
        "both_writable": sum(r["both_exact"] for r in records if not _beyond(r)),  # of the covers it can write
        "plain": sum(_plain(r) for r in records),  # title and author in ASCII letters and marks only
        "both_plain": sum(r["both_exact"] for r in records if _plain(r)),
        "titles_folded": sum(r.get("title_folded", False) for r in records),
        "authors_folded": sum(r.get("author_folded", False) for r in records),
        "both_sparse": sum(r.get("both_sparse_exact", False) for r in records),
        "titles_sparse": sum(r.get("title_sparse_exact", False) for r in records),
        "authors_sparse": sum(r.get("author_sparse_exact", False) for r in records),
        "titles_crop": sum(r["title_crop_exact"] for r in records),
        "authors_crop": sum(r["author_crop_exact"] for r in records),
        "contrast_min": min(contrasts) if contrasts else None,
        "contrast_median": statistics.median(contrasts) if contrasts else None,
        "contrast_below": sum(c < 4.5 for c in contrasts) + (n - len(ok)),
        "self_read": sum(bool(r.get("self_read")) for r in records),  # the typesetter's own check passed
        "retried": sum(r.get("self_tries", 1) > 1 for r in records),  # laid out again after its page read
        "washed": sum(r.get("art_wash") is not None for r in records),
        "ms_median": statistics.median(ms) if ms else None,
        "ms_p95": percentile(ms, 95),
    }
    for kind in ("photo", "pattern"):
        share = [r["salient_coverage"] for r in ok if r["kind"] == kind]
        result[f"salient_{kind}_mean"] = statistics.fmean(share) if share else None
        result[f"salient_{kind}_max"] = max(share) if share else None
        result[f"salient_{kind}_top15"] = sum(r["salient_method"] != "otsu" for r in records if r["kind"] == kind)
    return result


def _pct(count: int, n: int) -> str:
    return f"{count}/{n} ({100 * count / n:.1f}%)" if n else "0/0"


def report(records: list[dict[str, Any]], wall_s: float) -> tuple[dict[str, Any], str]:
    """Print the table and every miss; return the figures and the one-line summary."""
    fig = figures(records)
    n = fig["covers"]
    rows = []
    for kind in ("photo", "pattern", "all"):
        part = [r for r in records if kind in ("all", r["kind"])]
        if not part:
            continue
        f = figures(part)
        rows.append({"set": kind, "covers": f["covers"], "failed": f["errors"],
                     "titles": _pct(f["titles"], f["covers"]),
                     "authors": _pct(f["authors"], f["covers"]), "both": _pct(f["both"], f["covers"]),
                     "titles (psm 11)": _pct(f["titles_sparse"], f["covers"]),
                     "authors (psm 11)": _pct(f["authors_sparse"], f["covers"]),
                     "both (psm 11)": _pct(f["both_sparse"], f["covers"]),
                     "titles (crop, psm 6)": _pct(f["titles_crop"], f["covers"]),
                     "authors (crop, psm 6)": _pct(f["authors_crop"], f["covers"]),
                     "contrast min": f["contrast_min"], "contrast median": f["contrast_median"],
                     "below 4.5": f["contrast_below"],
                     "salient covered mean %": 100 * (f[f"salient_{kind}_mean"] or 0) if kind != "all" else "",
                     "salient covered max %": 100 * (f[f"salient_{kind}_max"] or 0) if kind != "all" else "",
                     "ms median": f["ms_median"], "ms p95": f["ms_p95"]})  # fmt: skip
    columns = list(rows[0])
    print(table(rows, columns))
    print(f"# whole-cover reads with accents, typographic quotes and dashes folded: titles {fig['titles_folded']}/{n}, "
          f"authors {fig['authors_folded']}/{n}")  # fmt: skip
    alphabet = reader_alphabet()
    print(f"# {fig['beyond_alphabet']} covers have a letter the reader's model cannot write "
          f"({'its alphabet unknown' if alphabet is None else f'{len(alphabet)} characters in it'}); read exactly "
          f"with each such letter as the reader spells it (ó: o, ø: o): {_pct(fig['both_alphabet'], n)}; "
          f"of the other {n - fig['beyond_alphabet']}, read exactly: "
          f"{_pct(fig['both_writable'], n - fig['beyond_alphabet'])}; of the {fig['plain']} with no accented "
          f"letter at all, {_pct(fig['both_plain'], fig['plain'])}")  # fmt: skip
    print(f"# salient region by the top-15% fallback (Otsu degenerate): photos {fig['salient_photo_top15']}, "
          f"patterns {fig['salient_pattern_top15']}")  # fmt: skip
    misses = [r for r in records if not r["both_exact"] or (r.get("contrast") or 0) < 4.5]
    print(f"\n# misses ({len(misses)}): unread text or contrast under 4.5")
    for r in misses:
        where = f"{r['index']:3d} {r['kind']:7s} {r['name']}"
        if "error" in r:
            print(f"{where}: typeset failed: {r['error']}")
            continue
        wrong = [role for role in ("title", "author") if not r[role + "_exact"]]
        lines = [f"{where}: contrast {r['contrast']:.2f}" + (f", unread: {', '.join(wrong)}" if wrong else "")]
        for role in wrong:
            block = r.get(role + "_block") or {}
            spelled = r.get(role + "_as_reader_spells")
            beyond = f", as the reader spells it {spelled!r}: {'read' if r[role + '_alphabet_exact'] else 'unread'}"
            lines.append(f"      {role} {r[role]!r} ({block.get('colour')} {block.get('treatment')}) "
                         f"crop read {r.get(role + '_crop_read', '')!r}" + (beyond if spelled else ""))  # fmt: skip
        if wrong:
            lines.append(f"      whole cover read {r['read'][:160]!r}")
        print("\n".join(lines))
    ms = fig["ms_median"] or 0
    photo_mean = 100 * (fig["salient_photo_mean"] or 0)
    photo_max = 100 * (fig["salient_photo_max"] or 0)
    cmin = "n/a" if fig["contrast_min"] is None else f"{fig['contrast_min']:.2f}"
    writable = n - fig["beyond_alphabet"]
    line = (f"covers {n}, read {_pct(fig['both'], n)} (in the reader's alphabet {_pct(fig['both_alphabet'], n)}; "
            f"of the {writable} it can write, {_pct(fig['both_writable'], writable)}), "
            f"titles {fig['titles']}/{n}, authors {fig['authors']}/{n}, "
            f"sparse-text mode {_pct(fig['both_sparse'], n)}, typesetter's own page read {fig['self_read']}/{n} "
            f"(laid out again {fig['retried']}, art washed {fig['washed']}), "
            f"worst-glyph contrast min {cmin} ({fig['contrast_below']} below 4.5), salient coverage photos mean "
            f"{photo_mean:.1f}% max {photo_max:.1f}%, {ms:.0f} ms/cover (p95 {fig['ms_p95']:.0f}), "
            f"wall {wall_s:.0f} s")  # fmt: skip
    return fig, line


def contact_sheet(records: list[dict[str, Any]], out: Path) -> None:
    misses = [r for r in records if "error" not in r and (not r["both_exact"] or r["contrast"] < 4.5)]
    if not misses:
        return
    thumbs = []
    for r in misses:
        found = sorted(out.glob(f"{r['index']:03d}-*.png"))
        if found:
            with Image.open(found[0]) as image:
                thumbs.append(image.convert("RGB").resize((200, round(200 * image.height / image.width))))
    if not thumbs:
        return
    cols = 8
    rows = math.ceil(len(thumbs) / cols)
    sheet = Image.new("RGB", (cols * 204, rows * (thumbs[0].height + 4)), (128, 128, 128))
    for i, thumb in enumerate(thumbs):
        sheet.paste(thumb, ((i % cols) * 204 + 2, (i // cols) * (thumbs[0].height + 4) + 2))
    sheet.save(out / "misses.jpg", quality=85)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default=f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}", help="cover size WxH")
    parser.add_argument(
        "--set",
        choices=(*SETS, "both", "all"),
        default="all",
        help="tuned (the art the typesetter was tuned on), unseen (drawn after, since tuned on), fresh and "
        "wallpapers (drawn after the page read), desktops (after the bold sans authors), samples (after the "
        "line breaks), both (tuned and unseen) or all",
    )
    parser.add_argument("--limit", type=int, default=0, help="the first N covers of each kind only (quick run)")
    parser.add_argument("--workers", type=int, default=2, help="tesseract processes at once")
    parser.add_argument("--json", help="write every per-cover record here")
    parser.add_argument("--out", help="save the finished covers (and misses.jpg, a contact sheet) here, a folder a set")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    size = (width, height)
    info = header("Typeset legibility: finished covers read back by tesseract (issue 22 item 4)")
    version = subprocess.run(["tesseract", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"# reader: {version}, -l eng, default page segmentation; typeset(size=) accepted: {accepts_size()}")
    results: dict[str, Any] = {}
    summaries = []
    for which in {"all": SETS, "both": ("tuned", "unseen")}.get(args.set, (args.set,)):
        covers = make_set(size, which=which)
        if args.limit:
            covers = [c for c in covers if c.kind == "photo"][: args.limit] + [
                c for c in covers if c.kind == "pattern"][: args.limit]  # fmt: skip
        out = Path(args.out) / which if args.out else None
        if out:
            out.mkdir(parents=True, exist_ok=True)
        print(f"\n# set {which}: {sum(c.kind == 'photo' for c in covers)} photo crops, "
              f"{sum(c.kind == 'pattern' for c in covers)} patterns, {width}x{height}", flush=True)  # fmt: skip
        started = time.perf_counter()
        records = run(covers, size, args.workers, out, progress=True)
        wall_s = time.perf_counter() - started
        fig, summary_line = report(records, wall_s)
        if out:
            contact_sheet(records, out)
        results[which] = {"figures": fig, "wall_s": wall_s, "records": records}
        summaries.append(f"{which}: {summary_line}")
    write_json(args.json, {**info, "size": [width, height], "sets": results})
    print("\n" + "\n".join(summaries))


if __name__ == "__main__":
    main()
