"""Inference latency: seconds per image for the plain diffusers SDXL pipeline against cover-hpc's
generator (the one validation and batch inference use), in the same run, on the same model.

    python benchmarks/infer_latency.py --model sdxl [--size 1024x1024] [--steps 30] [--batches 1,4,8]
        [--lora FILE] [--json out.json]
    python benchmarks/infer_latency.py --model tiny --size 128x128 --batches 1,2 --steps 4   # CPU check

plain:  StableDiffusionXLPipeline.from_pretrained(dtype=fp16 on GPU), prompts as strings: one 77-token
        window (the prompt fits in it).
ours:   cover_hpc.model.sampling.load_generator: captions in 7 chunks of 77 tokens (525 caption tokens, as
        training encodes them: a 539-token context, more cross-attention work than plain's 77), per-image
        seeds, the stop check between steps, the UNet compiled with torch.compile (--no-compile to leave
        it out).
Both: the model's own scheduler (Euler), --steps steps, guidance 5.0, the same dtype, the same CPU
thread count (cover-hpc's rule, env.cpu_threads, set before either runs), both pipelines on the
device at once. Per batch size, each side gets one warm-up call (which absorbs compilation), then
the two alternate, --repeat calls each, in the order plain-ours, ours-plain, ... so that a change in
the machine's load falls on both. Reported: seconds per image (wall), and on a CPU cpu_median, the
median process CPU seconds per image (all threads), which other processes on a shared machine move
less than the wall time.
"""

from __future__ import annotations

import argparse
import statistics
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

    from cover_hpc.model.sampling import device_and_dtype, load_generator
    from cover_hpc.runtime import env
    from cover_hpc.spec.schema import ModelConfig

    height, width = (int(v) for v in args.size.lower().split("x"))
    batches = [int(b) for b in args.batches.split(",")]
    device, dtype = device_and_dtype("auto")
    if device.type == "cpu":  # the count load_generator gives ours, given to plain too
        torch.set_num_threads(env.cpu_threads(env.dist_env()))
    threads = torch.get_num_threads()
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

        plain = StableDiffusionXLPipeline.from_pretrained(str(model), dtype=dtype).to(device)
        if args.lora:
            plain.load_lora_weights(str(args.lora))
        plain.set_progress_bar_config(disable=True)
        ours = load_generator(ModelConfig(pretrained=str(model)), args.lora, 525, "auto",
                              compile_unet=not args.no_compile)  # fmt: skip
        assert torch.get_num_threads() == threads, "both sides must run on the same thread count"

        def run_plain(batch: int) -> None:
            with torch.no_grad():
                plain([PROMPT] * batch, num_inference_steps=args.steps, guidance_scale=5.0, height=height,
                      width=width, generator=torch.Generator(device).manual_seed(0))  # fmt: skip

        def run_ours(batch: int) -> None:
            ours.generate([PROMPT] * batch, list(range(batch)), args.steps, 5.0, (height, width))

        sides = {"plain diffusers": run_plain, "cover-hpc" + ("" if args.no_compile else " (compiled UNet)"): run_ours}
        for batch in batches:
            times: dict[str, list[float]] = {name: [] for name in sides}
            cpu_times: dict[str, list[float]] = {name: [] for name in sides}
            for call in sides.values():
                call(batch)  # warm-up (and compilation)
            for repeat in range(args.repeat):
                for name in list(sides)[:: 1 if repeat % 2 == 0 else -1]:
                    sync()
                    started, cpu_started = time.perf_counter(), time.process_time()
                    sides[name](batch)
                    sync()
                    times[name].append((time.perf_counter() - started) / batch)
                    cpu_times[name].append((time.process_time() - cpu_started) / batch)
            for name, samples in times.items():
                rows.append({"pipeline": name, "batch": batch, **summary(samples)})
                if device.type == "cpu":
                    rows[-1]["cpu_median"] = statistics.median(cpu_times[name])
                print(rows[-1], flush=True)
    print(f"\n{height}x{width}, {args.steps} Euler steps, guidance 5.0, {dtype}, {device}, {threads} threads")
    print(table(rows, ["pipeline", "batch", "median", "min", "max", "n"] + ["cpu_median"] * (device.type == "cpu")))
    write_json(args.json, {**info, "threads": threads, "rows": rows})


if __name__ == "__main__":
    main()
