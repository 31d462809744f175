"""prepare-data speed: covers per second from a raw bookdb dump to a training set with its report.

    python benchmarks/prepare_speed.py [--covers 2000] [--large 0.1] [--converted 0.05] [--workers N] [--json out.json]

Builds a synthetic dump in the research layout (``text/<sub>/<id>.txt`` with ``image/<sub>/<id>.jpg``):
covers drawn with a gradient, shapes and a title, 305-420 px wide and up to 600 px tall (the
research set's sizes: about 300-600 px on the long side, both sides >= 305), a share at
1152x896 (``--large``), a share that has to be converted (``--converted``: CMYK
JPEGs and palette PNGs, written out as RGB PNGs; the rest are RGB JPEGs, copied as they are), and
a few bad items (2 % too small, 2 % landscape, 1 % re-encoded duplicates). Then times
``cover-hpc prepare-data`` over it twice in this process: the first run decodes everything, the
second finds it all done. Reported: covers per second and CPU seconds (this process, and the
decoding workers) of each run, and the time 12,000 covers would take (target: under 2 minutes on
2 cores), both at the measured rate and from the CPU time on free cores, since other processes
may share the machine (the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from common import header, table, write_json

TARGET_COVERS, TARGET_SECONDS = 12_000, 120.0


def draw_cover(rng: random.Random, width: int, height: int) -> Any:
    from PIL import Image, ImageDraw

    top, bottom = [tuple(rng.randrange(256) for _ in range(3)) for _ in range(2)]
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    image = Image.composite(Image.new("RGB", image.size, top), Image.new("RGB", image.size, bottom),
                            image.convert("L"))  # fmt: skip
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randrange(2, 6)):
        box = sorted(rng.randrange(width) for _ in range(2)), sorted(rng.randrange(height) for _ in range(2))
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.ellipse((box[0][0], box[1][0], box[0][1], box[1][1]), fill=colour)
    title = " ".join(rng.choice(["lost", "night", "river", "crown", "code", "winter", "glass"]) for _ in range(3))
    draw.text((width // 10, height // 8), title.title(), fill=(255, 255, 255), font_size=max(12, width // 12))
    return image


def build_dump(root: Path, covers: int, large: float, converted: float, seed: int) -> dict[str, int]:
    """The synthetic dump; returns how many covers of each kind it holds."""
    rng = random.Random(seed)
    kinds: dict[str, int] = {}
    previous = None
    for index in range(covers):
        book_id, sub = f"b{index:06d}", f"{index % 16:02d}"
        roll = rng.random()
        if roll < large:
            kind, size = "1152x896", (896, 1152)
        elif roll < large + 0.02:
            kind, size = "too small", (200, 290)
        elif roll < large + 0.04:
            kind, size = "landscape", (rng.randrange(400, 601), rng.randrange(300, 400))
        else:
            short_side = rng.randrange(305, 421)  # both sides >= 305, as the research set kept
            kind, size = "305-600 px", (short_side, min(600, round(short_side * rng.uniform(1.3, 1.6))))
        image = draw_cover(rng, *size)
        if previous is not None and rng.random() < 0.01:  # the previous cover again, larger and re-encoded
            kind, image = "duplicate", previous.resize((previous.width * 5 // 4, previous.height * 5 // 4))
        previous = image
        text = root / "text" / sub / f"{book_id}.txt"
        text.parent.mkdir(parents=True, exist_ok=True)
        text.write_text(f"Title {index}\nPublisher {index % 40}\n\n\nfiction, genre {index % 30}\nA description.\n")
        folder = root / "image" / sub
        folder.mkdir(parents=True, exist_ok=True)
        if rng.random() < converted:
            kind += ", converted"
            if rng.random() < 0.5:
                image.convert("CMYK").save(folder / f"{book_id}.jpg", quality=90)
            else:
                image.convert("P").save(folder / f"{book_id}.png")
        else:
            image.save(folder / f"{book_id}.jpg", quality=90)
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def warm_imports() -> float:
    """Seconds to import what prepare-data needs, paid once per command (left out of the timed runs)."""
    started = time.perf_counter()
    from cover_hpc.stages.prepare import pipeline, summary  # noqa: F401

    summary.clip_tokenizer()
    summary._pyplot()
    return time.perf_counter() - started


def timed_run(source: Path, out: Path, workers: int) -> dict[str, Any]:
    """One prepare-data run: wall seconds, CPU seconds of this process and of its worker processes."""
    from cover_hpc.stages.prepare.pipeline import PrepareOptions, prepare

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu, started = time.process_time(), time.perf_counter()
    result = prepare(PrepareOptions(source=source, out=out, workers=workers))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the pool's workers, reaped when it shut down
    workers_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    return {"seconds": wall, "cpu_main_s": cpu, "cpu_workers_s": workers_cpu, "decoded": result.decoded,
            "result": result}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--covers", type=int, default=2000)
    parser.add_argument("--large", type=float, default=0.1, help="share of 1152x896 covers (default 0.1)")
    parser.add_argument("--converted", type=float, default=0.05, help="share of CMYK / palette covers (default 0.05)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="default: the usable CPUs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="build the dump here (default: a temp folder)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    info = header("prepare-data speed: raw bookdb dump -> imagefolder + report")
    with tempfile.TemporaryDirectory() as scratch:
        root = args.workdir or Path(scratch)
        started = time.perf_counter()
        kinds = build_dump(root / "dump", args.covers, args.large, args.converted, args.seed)
        print(f"# built {args.covers} covers in {time.perf_counter() - started:.1f} s: {kinds}", flush=True)
        imports_s = warm_imports()
        print(
            f"# imports (PIL, numpy, torch via cover_hpc.store.data, tokenizer, matplotlib): {imports_s:.1f} s",
            flush=True,
        )
        load_before = os.getloadavg()[0]
        cold = timed_run(root / "dump", root / "out", args.workers)
        warm = timed_run(root / "dump", root / "out", args.workers)
        load_after = os.getloadavg()[0]
    rows = [{"run": name, "covers/s": args.covers / run["seconds"], **{k: v for k, v in run.items() if k != "result"}}
            for name, run in (("first (decode all)", cold), ("again (nothing to do)", warm))]  # fmt: skip
    counts = cold["result"].summary["counts"]
    dropped = counts["dropped_by_reason"]
    print(f"\n{args.covers} covers, {args.workers} workers; kept {counts['kept']}, dropped {dropped}; load average "
          f"{load_before:.1f} before, {load_after:.1f} after (other processes share these cores)")  # fmt: skip
    print(table(rows, ["run", "seconds", "covers/s", "cpu_main_s", "cpu_workers_s", "decoded"]))
    # 12,000 covers: the imports once, then the first run scaled (its own fixed costs too: an
    # overestimate). Measured: wall time, under whatever else the machine runs. Free cores: this
    # process's work is serial, the workers' is spread over them (the two also overlap: an upper bound).
    scale = TARGET_COVERS / args.covers
    measured = imports_s + cold["seconds"] * scale
    free = imports_s + (cold["cpu_main_s"] + cold["cpu_workers_s"] / max(1, args.workers)) * scale
    for what, seconds in (("measured rate", measured), (f"CPU time, {args.workers} free cores", free)):
        verdict = "met" if seconds <= TARGET_SECONDS else "NOT met"
        print(f"{TARGET_COVERS:,} covers at the {what}: {seconds:.0f} s (target {TARGET_SECONDS:.0f} s: {verdict})")
    write_json(args.json, {**info, "covers": args.covers, "workers": args.workers, "kinds": kinds, "counts": counts,
                           "rows": rows, "projected_12k_s": {"measured": measured, "free_cores": free},
                           "imports_s": imports_s, "load_average": [load_before, load_after]})  # fmt: skip


if __name__ == "__main__":
    main()
