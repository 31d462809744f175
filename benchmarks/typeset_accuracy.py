"""Typesetting, checked as issue 13 asks: random titles over random busy images, read back by OCR.

    python benchmarks/typeset_accuracy.py [--count 200] [--seed 0] [--engine auto] [--json out.json]
                                          [--font ROLE_OR_FILE] [--word-space EM] [--read-frame A:B:S]

Titles have 1-12 words in mixed case, with digits, accented Latin letters and some punctuation; about
half the books have an author. Images are 896 x 1152 (SDXL's portrait cover size): colour noise, black
and white noise, multi-scale noise, linear and radial gradients, and the demo set's covers
(``cover_hpc.demo.covers.make_demo_data``, which carry their own drawn titles: art with text in it),
upscaled and cropped. The demo model's outputs are not used: at 64 px of random weights they are
upscaled noise, which the noise images already cover.

Each cover is read back as ``cover_hpc.typeset.read_back`` reads it (every line of a text recognised on
its own, from a crop around it, and a line the engine misses read again by the second reader,
tesseract's Latin model; ``--second none`` reads with the engine alone, and the rate of the engine
alone is printed either way). Prints the OCR exact-match rate of the titles (case, accents and
punctuation folded, as validation scores them; target 99%) and of the authors, the mean similarity, the
contrast of every text as a minimum and a distribution (none may be under 4.5:1), the remedies used, the
misses by cause, and every misread. Two figures beside the metric say what the misses are, and are not
the metric: the rate with spaces folded too, and the rate where a letter the recogniser has no class
for (Ł, Ø, Æ...: it can only answer with another letter) may be read as any one or two characters.
``--font`` sets every cover in one face (a role or a font file), to compare faces on the same titles.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import tempfile
import time
import unicodedata
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from common import header, write_json
from PIL import Image

from cover_hpc import typeset as ts

SIZE = (896, 1152)
WORDS = (
    "the", "of", "and", "a", "in", "night", "garden", "river", "secret", "house", "last", "light", "winter",
    "city", "stone", "queen", "silent", "empire", "letters", "storm", "glass", "memory", "harbor", "crown",
    "shadow", "wolf", "summer", "map", "island", "machine", "dream", "fire", "orchard", "lantern", "mountain",
    "signal", "daughter", "kingdom", "promise", "forgotten", "year", "iron", "salt", "clockwork", "orbit",
)  # fmt: skip
ACCENTED = (
    "café", "élan", "naïve", "über", "señor", "crème", "brûlée", "déjà", "façade", "Zoë", "Ångström", "jalapeño",
    "résumé", "São", "Málaga", "Dvořák", "Škoda", "Bogotá", "Zürich", "Kraków", "Pérez", "mañana", "Göteborg",
    "Łódź", "Ørsted", "Æther", "Curaçao", "Ñandú", "Émile", "Tromsø",
)  # fmt: skip
NUMBERS = ("1984", "2049", "7", "42", "13", "101", "3", "1066", "9", "88", "2", "1899", "451")
FIRST = ("Ada", "Ben", "Clara", "Dev", "Elena", "Félix", "Grace", "Hugo", "Iris", "Jonah", "Zoë", "Søren", "Inés")
LAST = ("Archer", "Bell", "Castillo", "Dunn", "Frost", "García", "Hale", "Ito", "Lindqvist", "Moreau", "Novák")
GENRES = ("literary fiction", "romance", "historical fiction", "science fiction", "thriller", "fantasy",
          "horror", "mystery", "poetry", "business")  # fmt: skip


def random_title(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randint(1, 12)):
        pool = rng.choices((WORDS, ACCENTED, NUMBERS), weights=(6, 2, 1))[0]
        words.append(rng.choice(pool))
    case = rng.choice(("title", "lower", "upper", "mixed"))
    if case == "title":
        words = [w[:1].upper() + w[1:] for w in words]
    elif case == "upper":
        words = [w.upper() for w in words]
    elif case == "mixed":
        words = [rng.choice((str.lower, str.upper, str.capitalize))(w) for w in words]
    if len(words) > 2 and rng.random() < 0.3:
        words[rng.randrange(len(words) - 1)] += rng.choice((":", ",", "'s", "!", "?"))
    return " ".join(words)


def random_author(rng: random.Random) -> str | None:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}" if rng.random() < 0.5 else None


def _noise(gen: np.random.Generator, kind: str) -> np.ndarray:
    width, height = SIZE
    if kind == "colour noise":
        return gen.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if kind == "black-white noise":
        return np.repeat(gen.integers(0, 2, (height, width, 1), dtype=np.uint8) * 255, 3, axis=2)
    layers = np.zeros((height, width, 3), dtype=np.float32)  # multi-scale: blobs to grain
    for cells, weight in ((4, 0.4), (16, 0.3), (64, 0.2), (height, 0.1)):
        small = gen.random((cells, max(1, cells * width // height), 3)).astype(np.float32)
        up = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize(SIZE, Image.Resampling.BICUBIC))
        layers += weight * up
    return np.clip(layers, 0, 255).astype(np.uint8)


def _gradient(gen: np.random.Generator, kind: str) -> np.ndarray:
    width, height = SIZE
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "linear gradient":
        angle = gen.uniform(0, 2 * np.pi)
        t = x * np.cos(angle) + y * np.sin(angle)
    else:
        cx, cy = gen.uniform(0, width), gen.uniform(0, height)
        t = np.hypot(x - cx, y - cy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    a, b = gen.integers(0, 256, 3), gen.integers(0, 256, 3)
    return (a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]).astype(np.uint8)


def _demo(rng: random.Random, demo_covers: list[Path]) -> np.ndarray:
    with Image.open(rng.choice(demo_covers)) as cover:
        cover = cover.convert("RGB")
        scale = max(SIZE[0] / cover.width, SIZE[1] / cover.height) * rng.uniform(1.0, 1.6)
        big = cover.resize((round(cover.width * scale), round(cover.height * scale)), Image.Resampling.BICUBIC)
    left, top = rng.randint(0, big.width - SIZE[0]), rng.randint(0, big.height - SIZE[1])
    return np.asarray(big.crop((left, top, left + SIZE[0], top + SIZE[1])))


KINDS = ("colour noise", "black-white noise", "multi-scale noise", "linear gradient", "radial gradient", "demo cover")


def background(kind: str, rng: random.Random, demo_covers: list[Path]) -> Image.Image:
    gen = np.random.default_rng(rng.getrandbits(32))
    if kind.endswith("noise"):
        return Image.fromarray(_noise(gen, kind))
    if kind.endswith("gradient"):
        return Image.fromarray(_gradient(gen, kind))
    return Image.fromarray(_demo(rng, demo_covers))


def demo_cover_files(root: Path) -> list[Path]:
    from cover_hpc.demo.covers import make_demo_data

    make_demo_data(root, num_books=40, extra_books=0, seed=7)
    return sorted(root.rglob("*.jpg"))


def run(
    count: int,
    seed: int,
    engine_name: str,
    options: ts.TypesetOptions,
    kinds: tuple[str, ...] = KINDS,
    font: str | None = None,
    frame: tuple[float, float, float] = (ts.READ_ABOVE, ts.READ_BELOW, ts.READ_SIDE),
    second: str = "auto",
) -> dict[str, Any]:
    from cover_hpc.metrics import ocr

    engine = ocr.load_ocr(engine_name, threads=1)
    confirm = ocr.load_second_reader(threads=1) if second == "auto" else None
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        demo_covers = demo_cover_files(Path(folder))
        for index in range(count):
            kind = kinds[index % len(kinds)]
            title, author, genre = random_title(rng), random_author(rng), rng.choice(GENRES)
            art = background(kind, rng, demo_covers)
            row: dict[str, Any] = {"index": index, "kind": kind, "title": title, "author": author, "genre": genre}
            try:
                result = ts.typeset(art, title, author=author, genres=[genre], font=font, options=options)
            except ts.TypesetError as error:
                rows.append({**row, "error": str(error)})
                continue
            started = time.perf_counter()
            read = ts.read_back(result, engine, second=confirm, frame=frame)
            row["ocr_ms"] = (time.perf_counter() - started) * 1e3
            blocks = [b for b in (result.layout.title, result.layout.author) if b is not None]
            row["blocks"] = [{"role": b.role, "text": b.text, "contrast": b.contrast, "treatment": b.treatment,
                              "size": b.font_size, "font": Path(b.font_file).name, "band": b.band,
                              "detail": b.detail, **read[b.role],
                              "second_lines": sum(r != engine.name for r in read[b.role]["readers"])}
                             for b in blocks]  # fmt: skip
            rows.append(row)
    return {"engine": engine.name, "second": confirm.name if confirm is not None else None, "rows": rows,
            "characters": getattr(engine, "characters", None)}  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _spaceless(text: str) -> str:
    from cover_hpc.metrics.ocr import normalise_title

    return normalise_title(text).replace(" ", "")


_UNKNOWN = "\ua66e"  # a letter no title has and normalise_title keeps: stands for a letter the recogniser lacks


def lacking(text: str, characters: frozenset[str] | None) -> list[str]:
    """The letters of ``text`` the recogniser has no class for, not even for their base letter (é is read
    as e, but Ł has no base letter to fall back on): it can only answer with another letter."""
    if not characters:
        return []
    return sorted({c for c in text if c.isalpha() and c not in characters
                   and unicodedata.normalize("NFD", c)[0] not in characters})  # fmt: skip


def match_but_lacking(expected: str, read: str, characters: frozenset[str] | None) -> bool:
    """Exact match when each letter the recogniser lacks may be read as any one or two characters (not
    a space): what a miss would be with those letters left unchecked. A diagnostic, not the metric."""
    from cover_hpc.metrics.ocr import normalise_title

    missing = lacking(expected, characters)
    for character in missing:
        expected = expected.replace(character, _UNKNOWN)
    pattern = re.escape(normalise_title(expected)).replace(_UNKNOWN, "[^ ]{1,2}")
    return re.fullmatch(pattern, normalise_title(read)) is not None


def miss_cause(block: dict[str, Any], characters: frozenset[str] | None) -> str:
    if _spaceless(block["read"]) == _spaceless(block["text"]):
        return "a space lost or added"
    if lacking(block["text"], characters) and match_but_lacking(block["text"], block["read"], characters):
        return "only letters the recogniser lacks"
    return "other letters misread"


def _rate_by(rows: list[dict[str, Any]], key: Any) -> dict[str, str]:
    """Title exact-match rate per group, as 'matched/count'."""
    groups: dict[str, list[bool]] = {}
    for row in rows:
        for block in row.get("blocks", []):
            if block["role"] == "title":
                groups.setdefault(key(row), []).append(block["exact"])
    return {name: f"{sum(hits)}/{len(hits)}" for name, hits in groups.items()}


def summarise(rows: list[dict[str, Any]], characters: frozenset[str] | None = None) -> dict[str, Any]:
    times = [r["ocr_ms"] for r in rows if "ocr_ms" in r]
    blocks = [block for row in rows for block in row.get("blocks", [])]
    titles = [b for b in blocks if b["role"] == "title"]
    authors = [b for b in blocks if b["role"] == "author"]
    contrasts = [b["contrast"] for b in blocks]
    buckets = Counter(next(f"{lo}-{hi}" for lo, hi in ((4.5, 5), (5, 7), (7, 10), (10, 15), (15, 21.01))
                           if lo <= c < hi) for c in contrasts)  # fmt: skip
    return {
        "covers": len(rows),
        "not typeset": [row for row in rows if "error" in row],
        "title exact-match rate": sum(b["exact"] for b in titles) / max(1, len(titles)),
        "title exact-match rate, first reader alone": sum(b["first"]["exact"] for b in titles) / max(1, len(titles)),
        "title lines whose reading came from the second reader": sum(b["second_lines"] for b in titles),
        "title match with spaces folded too (not the metric)": sum(
            _spaceless(b["read"]) == _spaceless(b["text"]) for b in titles
        )
        / max(1, len(titles)),
        "title match with letters the recogniser lacks unchecked (not the metric)": sum(
            b["exact"] or match_but_lacking(b["text"], b["read"], characters) for b in titles
        )
        / max(1, len(titles)),
        "titles with letters the recogniser lacks": sum(bool(lacking(b["text"], characters)) for b in titles),
        "title misses by cause": dict(Counter(miss_cause(b, characters) for b in titles if not b["exact"])),
        "title mean similarity": statistics.mean(b["similarity"] for b in titles) if titles else None,
        "author exact-match rate": sum(b["exact"] for b in authors) / max(1, len(authors)),
        "titles": len(titles),
        "authors": len(authors),
        "contrast min": min(contrasts),
        "contrast p1/p5/p50/p95": [percentile(contrasts, q) for q in (1, 5, 50, 95)],
        "contrast distribution": {k: buckets.get(k, 0) for k in ("4.5-5", "5-7", "7-10", "10-15", "15-21.01")},
        "below 4.5": sum(c < 4.5 for c in contrasts),
        "treatments": dict(Counter(b["treatment"] for b in blocks)),
        "title exact-match rate by background": _rate_by(rows, lambda row: row["kind"]),
        "title exact-match rate, ASCII-only / accented titles": _rate_by(
            rows, lambda row: "accented" if any(ord(c) > 127 for c in row["title"]) else "ASCII only"
        ),
        "title exact-match rate by face": _rate_by(rows, lambda row: row["blocks"][0]["font"]),
        "ocr ms per cover (median)": statistics.median(r["ocr_ms"] for r in rows if "ocr_ms" in r),
        "ocr ms per cover (mean, p95, max)": [
            round(f(times), 1) for f in (statistics.mean, lambda t: percentile(t, 95), max)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", default="auto", help="OCR engine (cover_hpc.metrics.ocr.load_ocr)")
    parser.add_argument("--calm-detail", type=float, help="override TypesetOptions.calm_detail (calibration)")
    parser.add_argument("--word-space", type=float, help="override TypesetOptions.word_space (calibration)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="backgrounds to use, comma-separated")
    parser.add_argument("--font", help="set every cover in this face: a role (serif, sans, display) or a font file")
    parser.add_argument("--read-frame", help="ABOVE:BELOW:SIDE, the line crops' reach in em (calibration; "
                        f"default {ts.READ_ABOVE}:{ts.READ_BELOW}:{ts.READ_SIDE})")  # fmt: skip
    parser.add_argument("--second", choices=("auto", "none"), default="auto",
                        help="read each line the engine misses again with the second reader (auto, as "
                        "cover_hpc.typeset.read_back does) or not (none: the engine alone)")  # fmt: skip
    parser.add_argument("--json", help="write the figures and every row here")
    args = parser.parse_args()
    info = header("typesetting: OCR read-back and contrast over random busy covers")
    options = ts.TypesetOptions()
    if args.calm_detail is not None:
        options = replace(options, calm_detail=args.calm_detail)
    if args.word_space is not None:
        options = replace(options, word_space=args.word_space)
    frame = tuple(float(v) for v in args.read_frame.split(":")) if args.read_frame else None
    if frame is not None and len(frame) != 3:
        parser.error("--read-frame: give ABOVE:BELOW:SIDE, e.g. 0.8:0.28:0.15")
    frame = frame or (ts.READ_ABOVE, ts.READ_BELOW, ts.READ_SIDE)
    measured = run(args.count, args.seed, args.engine, options, tuple(args.kinds.split(",")), args.font, frame,
                   args.second)  # fmt: skip
    figures = summarise(measured["rows"], measured["characters"])
    print(f"# OCR engine: {measured['engine']}, second reader {measured['second']}; calm_detail {options.calm_detail}, "
          f"word_space {options.word_space}, font {args.font or 'by genre'}, "
          f"read frame {':'.join(map(str, frame))} em")  # fmt: skip
    for key, value in figures.items():
        if key != "not typeset":
            print(f"{key}: {value}")
    print(f"not typeset: {len(figures['not typeset'])}")
    for row in figures["not typeset"]:
        print(f"  - {row['title']!r}: {row['error']}")
    for row in measured["rows"]:
        for block in row.get("blocks", []):
            if not block["exact"]:
                expected = row["title"] if block["role"] == "title" else row["author"]
                cause = miss_cause(block, measured["characters"])
                print(f"  misread {block['role']} ({row['kind']}, {block['font']} {block['size']} px, "
                      f"{block['treatment']}; {cause}): {expected!r} -> {block['read']!r}")  # fmt: skip
    write_json(args.json, {**info, "engine": measured["engine"], "figures": figures, "rows": measured["rows"]})


if __name__ == "__main__":
    main()
