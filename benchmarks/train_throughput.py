"""Training throughput on a GPU: samples/s per GPU, peak memory and MFU of cover-hpc's trainer on
full-size SDXL (random weights built from its config), LoRA rank 32 on the UNet and both text
encoders; and, in the same run, the original recipe against the tuned defaults, and DeepSpeed
ZeRO-2 against DDP.

    python benchmarks/train_throughput.py --model sdxl [--sizes 1024x1024,1152x896] [--batches 1,2,4,8]
        [--precisions bf16,fp16] [--recipes tuned,original] [--backends ddp,deepspeed] [--json out.json]
    python benchmarks/train_throughput.py --model tiny --sizes 128x128 --batches 2 --precisions no   # CPU check

Each configuration is one trainer process (jobs/train.py, as on the cluster) of --warmup + --steps
steps; samples/s is the median over the timed steps of the trainer's own per-step figure, peak
memory is torch.cuda.max_memory_allocated from train_result.json. MFU = counted FLOPs per sample x
samples/s / the GPU's dense peak for the precision (--peak-tflops, else looked up for H100/H200/A100).
FLOPs are counted with torch.utils.flop_counter on the meta device, for the step as configured:
the UNet's and text encoders' forward and backward with the adapters, plus the VAE encode where
the recipe encodes every step.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from common import demo_assets, header, run_trainer, spec_dict, summary, table, write_json

# Dense (no sparsity) bf16/fp16 tensor-core peaks, TFLOP/s, from the vendors' data sheets.
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}


def peak_tflops(override: float | None) -> float | None:
    if override:
        return override
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    for key, value in PEAK_TFLOPS.items():  # the more specific names come first
        if key in name:
            return value
    return None


def count_flops(
    model: str, size: tuple[int, int], rank: int, train_text: bool, vae_every_step: bool, caption_tokens: int = 525
) -> float:
    """FLOPs of one training sample (batch 1): both text encoders over every caption chunk and the UNet
    over the whole context, forward and backward with the adapters; the VAE encode if per step."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cover_hpc.model.encoding import encode_chunks
    from cover_hpc.model.lora import SDXLParts, add_adapters
    from cover_hpc.spec.schema import LoraConfig

    if model == "sdxl":
        import sdxl

        parts = sdxl.build_parts("meta")
    else:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        folder = Path(model)
        with torch.device("meta"):
            parts = {
                "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
                "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
                "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
                "text_encoder_2": CLIPTextModelWithProjection(
                    CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
                ),
            }
    holder = SDXLParts(tokenizer=None, tokenizer_2=None, scheduler_config={}, **parts)
    lora = LoraConfig(rank=rank, alpha=float(rank))
    if not train_text:
        lora = LoraConfig(rank=rank, alpha=float(rank), parts=("unet",))
    add_adapters(holder, lora, seed=0)
    unet, te1, te2, vae = parts["unet"], parts["text_encoder"], parts["text_encoder_2"], parts["vae"]
    height, width = size
    chunks = -(-caption_tokens // 75)  # 75 caption tokens per 77-token chunk, as the trainer encodes
    with torch.device("meta"):
        ids = torch.zeros(1, chunks, 77, dtype=torch.long)
        latents = torch.zeros(1, 4, height // 8, width // 8)
        pixels = torch.zeros(1, 3, height, width)
        with FlopCounterMode(display=False) as counter:
            if vae_every_step:
                with torch.no_grad():
                    vae.encode(pixels)
            context, pooled = encode_chunks(te1, te2, ids, ids)
            conditions = {"text_embeds": pooled, "time_ids": torch.zeros(1, 6)}
            prediction = unet(latents, torch.zeros(1), context, added_cond_kwargs=conditions).sample
            prediction.float().pow(2).mean().backward()
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sdxl", help="'sdxl' (full size, random weights), 'tiny', or a folder")
    parser.add_argument("--sizes", default="1024x1024,1152x896", help="HEIGHTxWIDTH list")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--precisions", default="bf16,fp16", help="mixed precision: bf16, fp16, no")
    parser.add_argument("--recipes", default="tuned,original", help="tuned (cached latents), original (VAE every step)")
    parser.add_argument("--backends", default="ddp", help="ddp, deepspeed (ZeRO-2), or both")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense peak at this precision")
    parser.add_argument("--workdir", type=Path, default=None, help="keeps the ~7 GB random SDXL between runs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    info = header("training throughput and MFU (cover-hpc trainer)")
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    peak = peak_tflops(args.peak_tflops)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = args.workdir or Path(scratch)
        tiny, data = demo_assets(root / "assets", num_books=max(16, max(batches) * 2 + 2))
        if args.model == "sdxl":
            import sdxl

            model = root / "sdxl-random"
            if not (model / "model_index.json").is_file():
                started = time.perf_counter()
                sdxl.build_folder(model, "fp16")
                print(f"# built random full-size SDXL in {model} ({time.perf_counter() - started:.0f} s)", flush=True)
        else:
            model = tiny if args.model == "tiny" else Path(args.model)
        flops: dict[tuple[Any, ...], float] = {}
        combos = itertools.product(sizes, args.recipes.split(","), args.backends.split(","),
                                   args.precisions.split(","), batches)  # fmt: skip
        for size, recipe, backend, precision, batch in combos:
            key = (size, recipe)
            if key not in flops:
                flops[key] = count_flops("sdxl" if args.model == "sdxl" else str(model), size, args.rank,
                                         train_text=True, vae_every_step=recipe == "original")  # fmt: skip
            out = root / f"run-{time.time_ns()}"
            spec = spec_dict(model, data, out, data={"size": list(size), "cache_latents": recipe == "tuned"},
                             lora={"rank": args.rank, "alpha": args.rank},
                             train={"batch_size": batch, "max_steps": args.warmup + args.steps,
                                    "mixed_precision": precision,
                                    "gradient_checkpointing": args.gradient_checkpointing},
                             distributed={"backend": backend, "zero_stage": 2},
                             slurm={"cpus_per_gpu": os.cpu_count() or 1})  # fmt: skip
            row: dict[str, Any] = {"size": f"{size[0]}x{size[1]}", "recipe": recipe, "backend": backend,
                                   "precision": precision, "batch": batch}  # fmt: skip
            try:
                metrics = run_trainer(spec, threads=os.cpu_count() or 1)
            except Exception as error:  # e.g. out of memory at the largest batch: reported, not fatal
                row["error"] = str(error).splitlines()[-1][-120:]
                rows.append(row)
                print(row, flush=True)
                continue
            speeds = summary([m["samples_per_s"] for m in metrics[args.warmup :]])
            result_file = next((out / "experiments" / "bench").glob("*/train/train_result.json"))
            result = json.loads(result_file.read_text())
            achieved = flops[key] * speeds["median"] / 1e12
            row.update({"samples_per_s": speeds["median"], "peak_mem_gib": result["peak_memory_mb"] / 1024,
                        "tflop_per_sample": flops[key] / 1e12, "achieved_tflops": achieved,
                        "mfu_pct": 100 * achieved / peak if peak else ""})  # fmt: skip
            rows.append(row)
            print(row, flush=True)
    columns = ["size", "recipe", "backend", "precision", "batch", "samples_per_s", "peak_mem_gib",
               "tflop_per_sample", "achieved_tflops", "mfu_pct", "error"]  # fmt: skip
    print(f"\npeak used for MFU: {peak} TFLOP/s" if peak else "\nMFU not computed: no known GPU peak (--peak-tflops)")
    print(table(rows, columns))
    for size, precision, batch, backend in itertools.product(sizes, args.precisions.split(","), batches,
                                                             args.backends.split(",")):  # fmt: skip
        pair = {r["recipe"]: r for r in rows if r["size"] == f"{size[0]}x{size[1]}" and r["precision"] == precision
                and r["batch"] == batch and r["backend"] == backend and "samples_per_s" in r}  # fmt: skip
        if "tuned" in pair and "original" in pair:
            ratio = pair["tuned"]["samples_per_s"] / pair["original"]["samples_per_s"]
            print(f"tuned / original at {size[0]}x{size[1]} {precision} batch {batch} {backend}: {ratio:.2f}x")
    write_json(args.json, {**info, "peak_tflops": peak, "rows": rows})


if __name__ == "__main__":
    main()
