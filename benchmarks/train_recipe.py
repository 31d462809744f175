"""The tuned defaults against the original recipe, with cover-hpc's own trainer, in one run.

    python benchmarks/train_recipe.py [--size 1152x896] [--batch 2] [--steps 6] [--json out.json]

original: what the research scripts did: every image decoded and VAE-encoded (fp32) at every step,
          nothing cached (data.cache_latents=false).
tuned:    the defaults: latents encoded once into the on-disk cache (its fill is timed apart), the
          step reads them back.
Both train LoRA (rank 4) on the tiny SDXL-structured model's UNet and both text encoders, fp32, on
the same images. Reported: median seconds per step of each, their ratio (target: 5x or more),
the one-off cache fill, and the whole process's wall time for the same number of steps.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from common import demo_assets, header, run_trainer, spec_dict, step_seconds, summary, table, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1152x896", help="HEIGHTxWIDTH (default 1152x896, the original's)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per recipe")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--books", type=int, default=8, help="books in the synthetic set (7 train images)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    info = header("training step: tuned defaults vs the original recipe (tiny SDXL, CPU)")
    height, width = (int(v) for v in args.size.lower().split("x"))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = args.workdir or Path(scratch)
        model, data = demo_assets(root / f"books-{args.books}", num_books=args.books)
        for recipe, cache in (("original", False), ("tuned", True)):
            out = root / f"recipe-{recipe}-{time.time_ns()}"
            spec = spec_dict(model, data, out, data={"size": [height, width], "cache_latents": cache},
                             train={"batch_size": args.batch, "max_steps": args.warmup + args.steps})  # fmt: skip
            started = time.perf_counter()
            metrics = run_trainer(spec, args.threads)
            wall = time.perf_counter() - started
            steps = step_seconds(metrics, args.batch, skip=args.warmup)
            rows.append({"recipe": recipe, **summary(steps), "process_wall_s": wall})
            if cache:  # the same again: the cache is filled now, so the difference is its fill
                out2 = root / f"recipe-tuned-warm-{time.time_ns()}"
                spec["output_dir"] = str(out2 / "experiments")
                started = time.perf_counter()
                run_trainer(spec, args.threads)
                rows[-1]["cache_fill_s"] = wall - (time.perf_counter() - started)
    original, tuned = rows
    ratio = original["median"] / tuned["median"]
    print(
        f"\nsize {height}x{width} (HxW), batch {args.batch}, {args.threads} threads, fp32, "
        "LoRA rank 4 on UNet + both text encoders"
    )
    print(table(rows, ["recipe", "median", "min", "max", "n", "process_wall_s", "cache_fill_s"]))
    print(f"\nspeed-up of the step (original / tuned, median s/step): {ratio:.2f}x")
    write_json(args.json, {**info, "rows": rows, "ratio": ratio, "size": [height, width], "batch": args.batch})


if __name__ == "__main__":
    main()
