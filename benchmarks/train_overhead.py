"""The trainer's overhead: cover-hpc's training step against a bare loop over the same model and batch.

    python benchmarks/train_overhead.py [--size 192x128] [--batch 4] [--steps 30] [--json out.json]

Both sides train LoRA (rank 4) on the tiny SDXL-structured model's UNet and both text encoders from
cached latents, in fp32 with the same thread count, same AdamW groups and gradient clipping. The bare
loop is what a minimal script does: one fixed batch in memory, forward, MSE, backward, step. The
trainer's step is everything it does per step in a real run (data loader reading the latent cache,
tokenising, noise draws, accelerate, loss all-reduce and logging), taken from its own per-step
metrics. The bare loop runs before and after the trainer; its figure is the median of both runs.
Reported: median seconds per step and the ratio trainer / bare (target: under 1.15).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from common import demo_assets, header, run_trainer, spec_dict, step_seconds, summary, table, write_json


def bare_loop(model: Path, data: Path, size: tuple[int, int], batch: int, steps: int, threads: int) -> list[float]:
    import torch
    from diffusers import DDPMScheduler

    from cover_hpc.model.encoding import encode_chunks, tokenize_chunks
    from cover_hpc.model.lora import PARTS, add_adapters, load_parts
    from cover_hpc.spec.schema import LoraConfig, ModelConfig, OptimConfig
    from cover_hpc.store.data import load_pixels

    torch.set_num_threads(threads)
    parts = load_parts(ModelConfig(pretrained=str(model)))
    rows = [json.loads(line) for line in (data / "train_set" / "metadata.jsonl").read_text().splitlines()][:batch]
    height, width = size
    pixels = torch.stack([load_pixels(data / "train_set" / row["file_name"], (height, width)) for row in rows])
    with torch.no_grad():
        latents = parts.vae.encode(pixels).latent_dist.mean * parts.vae.config.scaling_factor
    texts = [row["text"] for row in rows]
    ids = tokenize_chunks(parts.tokenizer, texts, 525)  # the default data.max_caption_tokens
    ids_2 = tokenize_chunks(parts.tokenizer_2, texts, 525)
    time_ids = torch.tensor([[height, width, 0, 0, height, width]] * batch, dtype=torch.float32)
    add_adapters(parts, LoraConfig(rank=4, alpha=4.0), seed=42)
    optim = OptimConfig()
    lrs = {"unet": optim.lr_unet, "text_encoder": optim.lr_text_encoder, "text_encoder_2": optim.lr_text_encoder_2}
    groups = [{"params": [p for p in parts.part(n).parameters() if p.requires_grad], "lr": lrs[n]} for n in PARTS]
    trainable = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)
    scheduler = DDPMScheduler.from_config(parts.scheduler_config)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, 1000, (batch,), generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        embeds, pooled = encode_chunks(parts.text_encoder, parts.text_encoder_2, ids, ids_2)
        prediction = parts.unet(
            noisy, timesteps, embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}
        ).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="192x128", help="HEIGHTxWIDTH (default 192x128, the demo's)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the assets here (default: a temp folder)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    info = header("trainer overhead: cover-hpc trainer vs bare loop (tiny SDXL, CPU)")
    height, width = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as scratch:
        root = args.workdir or Path(scratch)
        model, data = demo_assets(root)
        first = bare_loop(model, data, (height, width), args.batch, args.warmup + args.steps, args.threads)
        spec = spec_dict(model, data, root / f"overhead-{time.time_ns()}",
                         data={"size": [height, width]},
                         train={"batch_size": args.batch, "max_steps": args.warmup + args.steps})  # fmt: skip
        metrics = run_trainer(spec, args.threads)
        trainer = step_seconds(metrics, args.batch, skip=args.warmup)
        second = bare_loop(model, data, (height, width), args.batch, args.warmup + args.steps, args.threads)
    bare = first[args.warmup :] + second[args.warmup :]
    rows: list[dict[str, Any]] = [
        {"side": "bare loop", **summary(bare)},
        {"side": "cover-hpc trainer", **summary(trainer)},
    ]
    ratio = rows[1]["median"] / rows[0]["median"]
    print(
        f"\nsize {height}x{width} (HxW), batch {args.batch}, {args.threads} threads, fp32, "
        "LoRA rank 4 on UNet + both text encoders"
    )
    print(table(rows, ["side", "median", "min", "max", "n"]))
    print(f"\noverhead ratio (trainer / bare, median s/step): {ratio:.3f}")
    write_json(args.json, {**info, "rows": rows, "ratio": ratio, "size": [height, width], "batch": args.batch})


if __name__ == "__main__":
    main()
