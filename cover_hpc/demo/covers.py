"""Synthetic book covers for the demo and the tests, deterministic from a seed.

Each book gets a genre-keyed look (palette, motif, type face) with its title and author drawn in
real fonts, and a caption in the original template. The set is written in Hugging Face
imagefolder layout (``train_set/`` and ``test_set/`` with ``metadata.jsonl``) plus a
``books.jsonl`` of held-out books for batch inference.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from cover_hpc.store.captions import Book, book_caption

Color = tuple[int, int, int]
Draw = ImageDraw.ImageDraw


@dataclass(frozen=True)
class Genre:
    name: str
    tags: tuple[str, ...]
    palette: tuple[Color, Color, Color]  # background top, background bottom, accent
    motif: str
    serif: bool
    nouns: tuple[str, ...]


GENRES = (
    Genre("fantasy", ("magic", "epic fantasy", "young adult", "fiction", "dragons"),
          ((40, 20, 80), (20, 70, 60), (230, 200, 90)), "mountains", True,
          ("crown", "dragon", "sword", "kingdom", "spell", "throne", "forest")),
    Genre("science fiction", ("space", "space opera", "aliens", "fiction", "dystopia"),
          ((5, 10, 35), (20, 30, 80), (120, 220, 255)), "planet", False,
          ("star", "orbit", "signal", "colony", "machine", "void", "station")),
    Genre("romance", ("contemporary", "contemporary romance", "love", "new adult", "chick lit"),
          ((250, 180, 200), (200, 60, 100), (255, 240, 245)), "hearts", True,
          ("heart", "kiss", "summer", "promise", "wedding", "letter", "rose")),
    Genre("mystery", ("crime", "detective", "suspense", "fiction", "murder mystery"),
          ((50, 50, 55), (15, 15, 20), (230, 190, 60)), "keyhole", True,
          ("key", "secret", "shadow", "lie", "witness", "alibi", "door")),
    Genre("thriller", ("suspense", "action", "crime", "espionage", "fiction"),
          ((10, 10, 10), (90, 0, 0), (240, 240, 240)), "slashes", False,
          ("target", "edge", "code", "hunt", "deadline", "agent", "storm")),
    Genre("horror", ("ghosts", "paranormal", "gothic", "supernatural", "fiction"),
          ((20, 0, 0), (0, 0, 0), (200, 30, 30)), "tree", True,
          ("house", "night", "grave", "whisper", "bone", "hollow", "hunger")),
    Genre("historical fiction", ("history", "war", "historical", "fiction", "world war ii"),
          ((210, 180, 130), (140, 100, 60), (60, 35, 20)), "frame", True,
          ("empire", "war", "harbor", "letters", "queen", "river", "winter")),
    Genre("childrens", ("picture books", "animals", "adventure", "middle grade", "humor"),
          ((255, 220, 60), (80, 180, 255), (230, 40, 60)), "balloons", False,
          ("bear", "balloon", "friend", "treehouse", "puppy", "rocket", "garden")),
    Genre("poetry", ("poems", "classics", "literature", "nature", "anthologies"),
          ((230, 240, 235), (170, 200, 210), (40, 70, 90)), "waves", True,
          ("sea", "light", "seasons", "birds", "silence", "rain", "moon")),
    Genre("business", ("nonfiction", "leadership", "economics", "self help", "management"),
          ((250, 250, 250), (210, 220, 235), (20, 60, 140)), "bars", False,
          ("growth", "habit", "strategy", "market", "leader", "focus", "profit")),
)

ADJECTIVES = ("lost", "silent", "burning", "hidden", "last", "golden", "broken", "distant",
              "crimson", "forgotten", "wild", "secret", "endless", "quiet", "iron", "bright")
FIRST_NAMES = ("ada", "ben", "clara", "dev", "elena", "felix", "grace", "hugo", "iris", "jonah",
               "kira", "leo", "maya", "noah", "olive", "paul", "rosa", "sam", "tara", "viktor")
LAST_NAMES = ("archer", "bell", "castillo", "dunn", "ellis", "frost", "garcia", "hale", "ito",
              "keane", "lindqvist", "moreau", "novak", "okafor", "price", "quinn", "reyes", "stone")
PUBLISHERS = ("harbor lane press", "north star books", "blue fern publishing", "tor books",
              "little lantern", "meridian house", "oakleaf press", "crescent moon media")
PLACES = ("a northern harbor town", "the edge of the galaxy", "a crumbling manor", "old vienna",
          "a sleepy valley", "the city of glass", "a remote island", "the capital")


def font_path(bold: bool, serif: bool) -> Path:
    """A DejaVu font: Debian's fonts-dejavu-core, else the copy matplotlib ships."""
    name = f"DejaVu{'Serif' if serif else 'Sans'}{'-Bold' if bold else ''}.ttf"
    candidates = [Path("/usr/share/fonts/truetype/dejavu") / name]
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.append(Path(location) / "mpl-data" / "fonts" / "ttf" / name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"font {name} not found in {', '.join(str(c.parent) for c in candidates)}; "
        "install Debian's fonts-dejavu-core or the matplotlib package"
    )


def make_book(rng: random.Random, index: int) -> tuple[Book, Genre, str]:
    """A random book, its main genre and its author."""
    genre = GENRES[index % len(GENRES)] if index < len(GENRES) else rng.choice(GENRES)
    noun, other = rng.sample(genre.nouns, 2)
    adjective = rng.choice(ADJECTIVES)
    title = rng.choice(
        (f"the {adjective} {noun}", f"{noun} of {other}s", f"a {noun} for {rng.choice(FIRST_NAMES)}",
         f"{adjective} {other}", f"the {noun} and the {other}")
    )
    author = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    hero = rng.choice(FIRST_NAMES)
    place = rng.choice(PLACES)
    description = (
        f"In {place}, {hero.title()} finds a {adjective} {noun} that changes everything. "
        f"Now, with the {other} at stake, {hero.title()} must choose between duty and desire. "
        f"A {genre.name} story about {other}s, courage and the price of the truth."
    )
    tags = [genre.name, *rng.sample(genre.tags, rng.randint(2, 4))]
    if rng.random() < 0.5:  # the original's genre lists repeat tags
        tags.append(genre.name)
    book = Book(
        book_id=f"book-{index:04d}",
        title=title,
        publisher=rng.choice(PUBLISHERS),
        genres=tuple(tags),
        description=description,
    )
    return book, genre, author


def _mix(a: Color, b: Color, t: float) -> Color:
    r, g, bl = (round(x + (y - x) * t) for x, y in zip(a, b, strict=True))
    return (r, g, bl)


def _motif_mountains(draw: Draw, box: tuple[int, int, int, int], color: Color, rng: random.Random) -> None:
    left, top, right, bottom = box
    for _ in range(3):
        peak = rng.randint(left, right)
        height = rng.randint((bottom - top) // 4, (bottom - top) // 2)
        spread = rng.randint((right - left) // 4, (right - left) // 2)
        draw.polygon([(peak - spread, bottom), (peak, bottom - height), (peak + spread, bottom)], fill=color)
    draw.ellipse([right - 60, top + 10, right - 20, top + 50], fill=color)


def _motif_planet(draw: Draw, box: tuple[int, int, int, int], color: Color, rng: random.Random) -> None:
    left, top, right, bottom = box
    for _ in range(40):
        x, y = rng.randint(left, right), rng.randint(top, bottom)
        draw.point((x, y), fill=(255, 255, 255))
    cx, cy, radius = (left + right) // 2, (top + bottom) // 2, (right - left) // 5
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=color)
    draw.ellipse([cx - 2 * radius, cy - radius // 3, cx + 2 * radius, cy + radius // 3], outline=color, width=3)


def _motif_hearts(draw: Draw, box: tuple[int, int, int, int], color: Color, rng: random.Random) -> None:
    left, top, right, bottom = box
    for _ in range(rng.randint(3, 6)):
        size = rng.randint(14, 40)
        x, y = rng.randint(left, right - size), rng.randint(top, bottom - size)
        draw.ellipse([x, y, x + size // 2 + 2, y + size // 2 + 2], fill=color)
        draw.ellipse([x + size // 2 - 2, y, x + size, y + size // 2 + 2], fill=color)
        draw.polygon([(x, y + size // 4 + 2), (x + size, y + size // 4 + 2), (x + size // 2, y + size)], fill=color)


def _motif_keyhole(draw: Draw, box: tuple[int, int, int, int], color: Color, rng: random.Random) -> None:
    left, top, right, bottom = box
    cx, cy, radius = (left + right) // 2, (top + bottom) // 2 - 20, (right - left) // 8
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=color)
    draw.polygon([(cx - radius // 2, cy), (cx + radius // 2, cy), (cx + radius, cy + 3 * radius),
                  (cx - radius, cy + 3 * radius)], fill=color)


def _motif_slashes(draw: Draw, box: tuple[int, int, int, int], color: Color, rng: random.Random) -> None:
    left, top, right, bottom = box
    for _ in range(rng.randint(3, 5)):
        x = rng.randint(left, right)
        draw.line([(x - 60, bottom), (x + 60, top)], fill=color, width=rng.randint(3, 9))


def _motif_tree(draw: Draw, box: tuple[int, int, int, int], color: Color, rng: random.Random) -> None:
    left, top, right, bottom = box
    cx = rng.randint(left + 40, right - 40)
    draw.line([(cx, bottom), (cx, top + 40)], fill=color, width=6)
    for depth in range(6):
        y = top + 40 + depth * (bottom - top - 40) // 8
        length = rng.randint(20, 60)
        draw.line([(cx, y), (cx + rng.choice((-1, 1)) * length, y - 25)], fill=color, width=3)
    draw.ellipse([left + 10, top + 5, left + 50, top + 45], fill=(230, 230, 210))


def _motif_frame(draw: Draw, box: tuple[int, int, int, int], color: Color, rng: random.Random) -> None:
    left, top, right, bottom = box
    for inset in (4, 10):
        draw.rectangle([left + inset, top + inset, right - inset, bottom - inset], outline=color, width=2)
    cx, cy = (left + right) // 2, (top + bottom) // 2
    draw.regular_polygon((cx, cy, (right - left) // 6), 4, rotation=45, fill=color)


def _motif_balloons(draw: Draw, box: tuple[int, int, int, int], color: Color, rng: random.Random) -> None:
    left, top, right, bottom = box
    for hue in range(rng.randint(3, 5)):
        x, y = rng.randint(left + 20, right - 40), rng.randint(top, bottom - 80)
        fill = ((color[0] + 70 * hue) % 256, (color[1] + 110 * hue) % 256, (color[2] + 50 * hue) % 256)
        draw.ellipse([x, y, x + 32, y + 42], fill=fill)
        draw.line([(x + 16, y + 42), (x + 16 + rng.randint(-10, 10), bottom)], fill=(40, 40, 40), width=1)


def _motif_waves(draw: Draw, box: tuple[int, int, int, int], color: Color, rng: random.Random) -> None:
    left, top, right, bottom = box
    for row in range(5):
        base = top + (row + 1) * (bottom - top) // 6
        phase = rng.random() * math.tau
        points = [(x, base + 8 * math.sin(phase + x / 14)) for x in range(left, right, 4)]
        draw.line(points, fill=color, width=2)


def _motif_bars(draw: Draw, box: tuple[int, int, int, int], color: Color, rng: random.Random) -> None:
    left, top, right, bottom = box
    width = (right - left) // 7
    for index in range(5):
        height = (index + 1) * (bottom - top) // 7 + rng.randint(-10, 10)
        x = left + width * (index + 1)
        draw.rectangle([x, bottom - height, x + width - 6, bottom], fill=color)


MOTIFS: dict[str, Callable[[Draw, tuple[int, int, int, int], Color, random.Random], None]] = {
    "mountains": _motif_mountains,
    "planet": _motif_planet,
    "hearts": _motif_hearts,
    "keyhole": _motif_keyhole,
    "slashes": _motif_slashes,
    "tree": _motif_tree,
    "frame": _motif_frame,
    "balloons": _motif_balloons,
    "waves": _motif_waves,
    "bars": _motif_bars,
}


def _wrap(draw: Draw, text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def draw_cover(book: Book, genre: Genre, author: str, rng: random.Random) -> Image.Image:
    """A portrait cover: gradient, genre motif, title on top, author at the bottom."""
    width = rng.choice((256, 288, 320))
    height = int(width * rng.uniform(1.35, 1.6))
    top_color, bottom_color, accent = genre.palette
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):
        draw.line([(0, y), (width, y)], fill=_mix(top_color, bottom_color, y / height))
    MOTIFS[genre.motif](draw, (16, height // 3, width - 16, height - 60), accent, rng)
    title_font = ImageFont.truetype(str(font_path(bold=True, serif=genre.serif)), size=width // 9)
    y = 18
    for line in _wrap(draw, book.title.title(), title_font, width - 32):
        draw.text((width // 2, y), line, font=title_font, fill=accent, anchor="ma",
                  stroke_width=1, stroke_fill=_mix(top_color, (0, 0, 0), 0.5))
        y += int(title_font.size) + 6
    author_font = ImageFont.truetype(str(font_path(bold=False, serif=genre.serif)), size=width // 16)
    draw.text((width // 2, height - 16), author.title(), font=author_font, fill=accent, anchor="md")
    return image


@dataclass(frozen=True)
class DemoSet:
    root: Path
    train: int
    test: int
    books: int


def make_demo_data(root: str | Path, num_books: int = 64, test_fraction: float = 0.125,
                   extra_books: int = 8, seed: int = 42) -> DemoSet:
    """Write the demo set under ``root``; the same seed always gives the same files."""
    if num_books < 2:
        raise ValueError(f"num_books must be at least 2 (one train, one test), got {num_books}")
    root = Path(root)
    rng = random.Random(seed)
    covers = [make_book(rng, index) for index in range(num_books + extra_books)]
    held_out = covers[num_books:]
    order = list(range(num_books))
    random.Random(seed).shuffle(order)
    num_test = max(1, round(num_books * test_fraction))
    test_ids = set(order[:num_test])
    splits: dict[str, list[tuple[Book, Genre, str]]] = {"train_set": [], "test_set": []}
    for index, cover in enumerate(covers[:num_books]):
        splits["test_set" if index in test_ids else "train_set"].append(cover)
    for split, items in splits.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for book, genre, author in items:
            file_name = f"{book.book_id}.jpg"
            draw_cover(book, genre, author, random.Random(f"{seed}-{book.book_id}")).save(
                folder / file_name, quality=92
            )
            row = {"file_name": file_name, "text": book_caption(book), **book.to_json()}
            row.pop("id")
            row["book_id"] = book.book_id
            row["author"] = author
            lines.append(json.dumps(row))
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    books = [book for book, _, _ in splits["test_set"]] + [book for book, _, _ in held_out]
    (root / "books.jsonl").write_text("\n".join(json.dumps(b.to_json()) for b in books) + "\n", encoding="utf-8")
    return DemoSet(root, len(splits["train_set"]), len(splits["test_set"]), len(books))
