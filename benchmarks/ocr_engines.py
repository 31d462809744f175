"""OCR engines on book titles: which one reads titles typeset over busy images best, and how fast.

    python benchmarks/ocr_engines.py [--count 150] [--seed 0] [--engines rapidocr,tesseract]
        [--threads 2] [--json out.json]

The labelled set (cover_hpc.demo.title_images): ``--count`` random titles of 1-12 words (mixed
case, digits, accented Latin letters, some punctuation), each typeset twice over the same
background at a portrait cover size (896x1152, 832x1216 or 768x1024, width x height): ``easy`` on a solid band of
a contrasting colour, ``busy`` straight over the background in black or white. Backgrounds cycle
through multi-scale noise, gradients, random shapes and the demo covers' art (make_demo_data).

Every engine reads every image; scores use cover_hpc.metrics.ocr (title similarity = 1 - normalised edit
distance after folding case, accents and punctuation; exact match of the folded strings). An
engine is named as in ``cover_hpc.metrics.ocr.load_ocr``; ``tesseract:N`` runs tesseract with ``--psm N``
(default 11, sparse text). Time: milliseconds per image, the read only (the image is in memory),
after one warm-up read; the engine's load time is printed apart.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from common import header, summary, table, write_json


def load(spec: str, threads: int) -> Any:
    from cover_hpc.metrics.ocr import TesseractOcr, load_ocr

    name, _, psm = spec.partition(":")
    if name == "tesseract" and psm:
        engine = TesseractOcr(threads, psm=int(psm))
        engine.name = spec
        return engine
    return load_ocr(name, threads)


def labelled_set(count: int, seed: int) -> list[Any]:
    from cover_hpc.demo.covers import make_demo_data
    from cover_hpc.demo.title_images import demo_art, title_images

    with tempfile.TemporaryDirectory() as folder:
        art = demo_art(make_demo_data(folder, num_books=16, extra_books=0).root)
    return title_images(count, seed=seed, art=art)


def read_all(engine: Any, samples: Sequence[Any]) -> list[dict[str, Any]]:
    from cover_hpc.metrics.ocr import exact_match, title_similarity

    engine.read(samples[0].image)  # warm-up: first-call allocations, caches
    rows = []
    for sample in samples:
        started = time.perf_counter()
        read = engine.read(sample.image)
        elapsed = time.perf_counter() - started
        rows.append({"title": sample.title, "read": read, "style": sample.style, "background": sample.background,
                     "font": sample.font, "size": "x".join(map(str, sample.image.size)),
                     "similarity": title_similarity(sample.title, read), "exact": exact_match(sample.title, read),
                     "ms": 1000 * elapsed})  # fmt: skip
    return rows


def score(engine: str, rows: Sequence[dict[str, Any]], group: str) -> dict[str, Any]:
    return {"engine": engine, "set": group, "images": len(rows),
            "mean similarity": statistics.fmean(r["similarity"] for r in rows),
            "exact match": statistics.fmean(r["exact"] for r in rows),
            "ms/image (median)": statistics.median(r["ms"] for r in rows)}  # fmt: skip


def groups(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"all": list(rows)}
    for key in ("style", "background"):
        for row in rows:
            out.setdefault(row[key], []).append(row)
    return out


def paired(a: str, rows_a: Sequence[dict[str, Any]], b: str, rows_b: Sequence[dict[str, Any]]) -> str:
    only_a = sum(x["exact"] and not y["exact"] for x, y in zip(rows_a, rows_b, strict=True))
    only_b = sum(y["exact"] and not x["exact"] for x, y in zip(rows_a, rows_b, strict=True))
    better = sum(x["similarity"] > y["similarity"] for x, y in zip(rows_a, rows_b, strict=True))
    worse = sum(x["similarity"] < y["similarity"] for x, y in zip(rows_a, rows_b, strict=True))
    return (f"# {a} vs {b}, same images: exact only by {a}: {only_a}, only by {b}: {only_b}; "
            f"higher similarity by {a}: {better}, by {b}: {worse}, tied: {len(rows_a) - better - worse}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=150, help="titles (each typeset easy and busy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", default="rapidocr,tesseract", help="comma-separated: rapidocr, tesseract[:PSM]")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per engine")
    parser.add_argument("--worst", type=int, default=5, help="print each engine's N lowest-similarity reads")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    info = header("OCR engines on titles over busy images")
    started = time.perf_counter()
    samples = labelled_set(args.count, args.seed)
    print(f"# labelled set: {len(samples)} images of {args.count} titles in {time.perf_counter() - started:.1f} s")
    results: dict[str, list[dict[str, Any]]] = {}
    loads: dict[str, float] = {}
    for spec in args.engines.split(","):
        started = time.perf_counter()
        engine = load(spec, args.threads)
        loads[spec] = time.perf_counter() - started
        results[spec] = read_all(engine, samples)
        print(f"# {spec}: loaded in {loads[spec]:.2f} s, read {len(samples)} images", flush=True)
    rows = [score(spec, subset, name) for spec, rows_ in results.items() for name, subset in groups(rows_).items()]
    rows.sort(key=lambda r: (r["set"] != "all", r["set"], r["engine"]))
    print(table(rows, ["set", "engine", "images", "mean similarity", "exact match", "ms/image (median)"]))
    names = list(results)
    for index, a in enumerate(names):
        for b in names[index + 1 :]:
            print(paired(a, results[a], b, results[b]))
    for spec, rows_ in results.items():
        print(f"# {spec}: ms per image over all images: {summary([r['ms'] for r in rows_])}")
        for row in sorted(rows_, key=lambda r: r["similarity"])[: args.worst]:
            where = f"{row['style']}/{row['background']}"
            print(f"#   {row['similarity']:.2f} {where}: {row['title']!r} read {row['read']!r}")
    write_json(args.json, {**info, "count": args.count, "seed": args.seed, "threads": args.threads,
                           "load_s": loads, "scores": rows, "reads": results})  # fmt: skip


if __name__ == "__main__":
    main()
