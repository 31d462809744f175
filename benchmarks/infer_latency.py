"""Inference latency: seconds per image for the plain diffusers SDXL pipeline against cover-hpc's
generator (the one validation and batch inference use), in the same run, on the same model.

    python benchmarks/infer_latency.py --model sdxl [--size 1024x1024] [--steps 30] [--batches 1,4,8]
        [--lora FILE] [--json out.json]
    python benchmarks/infer_latency.py --model tiny --size 128x128 --batches 1,2 --steps 4   # CPU check

plain:  StableDiffusionXLPipeline.from_pretrained(dtype=fp16 on GPU), prompts as strings.
ours:   cover_hpc.sampling.load_generator: long captions in 77-token chunks, per-image seeds, the
        UNet compiled with torch.compile (--no-compile to leave it out).
Both: Euler, --steps steps, guidance 5.0. Each batch is timed --repeat times after one warm-up call
(which absorbs compilation); reported: the median seconds per image.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from common import demo_assets, header, summary, table, write_json

PROMPT = ('Book Cover - This book title is "the lighthouse keeper". This book publisher is "harbor lane press". '
          "This book genres are mystery , fiction. A keeper finds a letter that was never sent.")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sdxl", help="'sdxl' (full size, random weights), 'tiny', or a folder")
    parser.add_argument("--size", default="1024x1024", help="HEIGHTxWIDTH")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lora", type=Path, default=None, help="a LoRA to load into both")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    info = header("inference latency: plain diffusers pipeline vs cover-hpc generator")
    import torch
    from diffusers import StableDiffusionXLPipeline

    from cover_hpc.config import ModelConfig
    from cover_hpc.sampling import device_and_dtype, load_generator

    height, width = (int(v) for v in args.size.lower().split("x"))
    batches = [int(b) for b in args.batches.split(",")]
    device, dtype = device_and_dtype("auto")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = args.workdir or Path(scratch)
        if args.model == "sdxl":
            import sdxl

            model = root / "sdxl-random"
            if not (model / "model_index.json").is_file():
                sdxl.build_folder(model, "fp16")
        else:
            model = demo_assets(root / "assets")[0] if args.model == "tiny" else Path(args.model)

        def measure(name: str, call: Any) -> None:
            for batch in batches:
                call(batch)  # warm-up (and compilation)
                times = []
                for _ in range(args.repeat):
                    sync()
                    started = time.perf_counter()
                    call(batch)
                    sync()
                    times.append((time.perf_counter() - started) / batch)
                rows.append({"pipeline": name, "batch": batch, **summary(times)})
                print(rows[-1], flush=True)

        plain = StableDiffusionXLPipeline.from_pretrained(str(model), dtype=dtype).to(device)
        if args.lora:
            plain.load_lora_weights(str(args.lora))
        plain.set_progress_bar_config(disable=True)

        def run_plain(batch: int) -> None:
            with torch.no_grad():
                plain([PROMPT] * batch, num_inference_steps=args.steps, guidance_scale=5.0, height=height,
                      width=width, generator=torch.Generator(device).manual_seed(0))  # fmt: skip

        measure("plain diffusers", run_plain)
        plain.to("cpu")  # free the GPU for the second pipeline
        if device.type == "cuda":
            torch.cuda.empty_cache()
        ours = load_generator(ModelConfig(pretrained=str(model)), args.lora, 525, "auto",
                              compile_unet=not args.no_compile)  # fmt: skip

        def run_ours(batch: int) -> None:
            ours.generate([PROMPT] * batch, list(range(batch)), args.steps, 5.0, (height, width))

        measure("cover-hpc" + ("" if args.no_compile else " (compiled UNet)"), run_ours)
    print(f"\n{height}x{width}, {args.steps} Euler steps, guidance 5.0, {dtype}, {device}")
    print(table(rows, ["pipeline", "batch", "median", "min", "max", "n"]))
    write_json(args.json, {**info, "rows": rows})


if __name__ == "__main__":
    main()
