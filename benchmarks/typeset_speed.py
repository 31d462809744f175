"""Typesetting speed: milliseconds per cover at 1152 x 896, layout, render and OCR check apart.

    python benchmarks/typeset_speed.py [--covers 40] [--engine auto] [--no-ocr] [--json out.json]

Layout is fitting (wrapping and sizing); render is the saliency map and face finder, measuring each
text in each band (the pixels around its glyphs, the texture energy), trying the treatments (shadow,
wash, panel) and drawing; total is the two; the OCR
check reads the title and author back from the finished cover (``cover_hpc.typeset.read_back``: each
line recognised on its own, and a line the engine misses read again by the second reader), and
"total with ocr" is a cover typeset and checked. Covers are portrait,
896 wide and 1152 high, over a mix of flat colours, gradients and noise, so some need a treatment; each
gets a random title (1-12 words) and author. The first cover of each font is timed apart (``cold``):
fonts and their character maps are loaded once per process. Target: under 100 ms per cover without OCR.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import numpy as np
from common import header, summary, table, write_json
from PIL import Image
from typeset_accuracy import GENRES, random_author, random_title

from cover_hpc import typeset as ts

SIZE = (896, 1152)


def art(rng: random.Random, index: int) -> Image.Image:
    gen = np.random.default_rng(index)
    width, height = SIZE
    kind = index % 3
    if kind == 0:
        return Image.new("RGB", SIZE, tuple(rng.randrange(256) for _ in range(3)))
    if kind == 1:
        t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
        a, b = gen.integers(0, 256, 3), gen.integers(0, 256, 3)
        return Image.fromarray(np.broadcast_to(a * (1 - t) + b * t, (height, width, 3)).astype(np.uint8))
    return Image.fromarray(gen.integers(0, 256, (height, width, 3), dtype=np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--covers", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", default="auto", help="OCR engine for the check (cover_hpc.metrics.ocr.load_ocr)")
    parser.add_argument("--threads", type=int, default=1, help="OCR threads (default 1)")
    parser.add_argument("--no-ocr", action="store_true", help="time layout and render only")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    info = header("typesetting speed at 1152 x 896")
    rng = random.Random(args.seed)
    engine = None
    if not args.no_ocr:
        from cover_hpc.metrics import ocr

        engine = ocr.load_ocr(args.engine, threads=args.threads)
        second = ocr.load_second_reader(threads=args.threads)  # as the inference and validation checks
    cold: dict[str, float] = {}
    timings: dict[str, list[float]] = {"layout": [], "render": [], "page read": [], "total": [], "ocr": [],
                                       "total with ocr": []}  # fmt: skip
    for index in range(args.covers):
        image, genre = art(rng, index), rng.choice(GENRES)
        started = time.perf_counter()
        result = ts.typeset(image, random_title(rng), author=random_author(rng), genres=[genre])
        total = (time.perf_counter() - started) * 1e3
        role = result.layout.genre_role
        if role not in cold:
            cold[role] = total
            continue
        timings["layout"].append(result.timings_ms["layout"])
        timings["render"].append(result.timings_ms["render"])
        if "page_read" in result.timings_ms:  # the typesetter's own page read and any covers laid out again
            timings["page read"].append(result.timings_ms["page_read"])
        timings["total"].append(total)
        if engine is not None:
            started = time.perf_counter()
            ts.read_back(result, engine, second=second)
            timings["ocr"].append((time.perf_counter() - started) * 1e3)
            timings["total with ocr"].append(total + timings["ocr"][-1])
    rows: list[dict[str, Any]] = [
        {"stage": stage, **{f"{k} ms": v for k, v in summary(values).items() if k != "n"}, "covers": len(values)}
        for stage, values in timings.items()
        if values
    ]
    print(table(rows, ["stage", "median ms", "min ms", "max ms", "covers"]))
    print(
        f"cold start (first cover of each face, fonts loaded): {', '.join(f'{k} {v:.0f} ms' for k, v in cold.items())}"
    )
    if engine is not None:
        print(f"OCR engine: {engine.name}, {args.threads} thread(s)")
    write_json(args.json, {**info, "rows": rows, "cold_ms": cold})


if __name__ == "__main__":
    main()
