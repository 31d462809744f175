"""Checkpoint cost: save and load time and size for the tiny model (measured), and the LoRA state of
full-size SDXL at rank 32 against a full ``accelerate.save_state`` of the model (computed from the
shapes, on the meta device).

    python benchmarks/checkpoint_size.py [--repeat 5] [--json out.json]

cover-hpc's checkpoint holds the adapter weights (fp32), the AdamW moments, the LR scheduler and the
RNG states, sealed by a COMPLETE marker with sha256 sums. A plain ``save_state`` would also write
every frozen base weight.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from common import demo_assets, header, spec_dict, summary, table, write_json


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def tiny_figures(root: Path, repeat: int) -> list[dict[str, Any]]:
    import torch

    from cover_hpc.spec.schema import spec_from_dict
    from cover_hpc.spec.sweep import expand
    from cover_hpc.stages import train
    from cover_hpc.store import checkpoint
    from cover_hpc.store.runs import prepare_run

    model, data = demo_assets(root)
    spec = spec_from_dict(spec_dict(model, data, root / f"ckpt-{time.time_ns()}", train={"max_steps": 10}))
    (run,) = expand(spec)
    paths = prepare_run(spec, run)
    paths.train.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("COVER_HPC_THREADS", str(os.cpu_count() or 1))
    setup = train.build(spec, paths)
    progress = checkpoint.Progress(0, 0, 0, 1, 1, 0.0, 0.0)
    saves, loads = [], []
    for index in range(repeat):
        here = checkpoint.Progress(index + 1, 0, index + 1, 1, 1, 0.0, 0.0)
        started = time.perf_counter()
        train.save_checkpoint(setup, here)
        saves.append(time.perf_counter() - started)
        started = time.perf_counter()
        progress = train.resume(setup)
        loads.append(time.perf_counter() - started)
    latest = checkpoint.latest(paths.checkpoints)
    assert latest is not None and progress.step == repeat
    ours = folder_bytes(latest)
    # the same state saved the way accelerate does by default: every weight of the model
    setup.accelerator._save_model_state_pre_hook.clear()
    full_dir = root / f"full-save-state-{time.time_ns()}"
    started = time.perf_counter()
    setup.accelerator.save_state(str(full_dir))
    full_save = time.perf_counter() - started
    full = folder_bytes(full_dir)
    trainable = sum(p.numel() for p in setup.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in setup.model.parameters())
    del torch
    return [
        {"what": "tiny: cover-hpc checkpoint", "bytes": ours, "save_s": summary(saves)["median"],
         "load_s": summary(loads)["median"], "params": f"{trainable:,} trained"},
        {"what": "tiny: full accelerate.save_state", "bytes": full, "save_s": full_save, "load_s": "",
         "params": f"{total:,} in all"},
    ]  # fmt: skip


def sdxl_figures(rank: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    import sdxl

    from cover_hpc.model.lora import PARTS, SDXLParts, add_adapters
    from cover_hpc.spec.schema import LoraConfig

    parts = sdxl.build_parts("meta")
    holder = SDXLParts(unet=parts["unet"], vae=parts["vae"], text_encoder=parts["text_encoder"],
                       text_encoder_2=parts["text_encoder_2"], tokenizer=None, tokenizer_2=None,
                       scheduler_config={})  # fmt: skip
    add_adapters(holder, LoraConfig(rank=rank, alpha=float(rank)), seed=0)
    counts = {}
    for part in PARTS:
        module = parts[part]
        counts[f"{part}_lora"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
        counts[f"{part}_base"] = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    lora = sum(v for k, v in counts.items() if k.endswith("_lora"))
    base = sum(v for k, v in counts.items() if k.endswith("_base"))
    adam = 2 * 4 * lora  # exp_avg + exp_avg_sq, fp32
    rows = [
        {"what": f"SDXL r{rank}: exported LoRA (fp16)", "bytes": 2 * lora},
        {"what": f"SDXL r{rank}: cover-hpc checkpoint (fp32 adapters + AdamW)", "bytes": 4 * lora + adam},
        {"what": "SDXL: full save_state, bf16 base + fp32 adapters + AdamW", "bytes": 2 * base + 4 * lora + adam},
        {"what": "SDXL: full save_state, fp32 (no mixed precision)", "bytes": 4 * (base + lora) + adam},
    ]
    return rows, {**counts, "lora_total": lora, "base_total": base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    info = header("checkpoint size and time")
    with tempfile.TemporaryDirectory() as scratch:
        rows = tiny_figures(args.workdir or Path(scratch), args.repeat)
    sdxl_rows, counts = sdxl_figures(args.rank)
    rows += sdxl_rows
    for row in rows:
        row["MB"] = row["bytes"] / 1e6
    print(table(rows, ["what", "MB", "save_s", "load_s", "params"]))
    total = counts["lora_total"] + counts["base_total"]
    print(f"\nSDXL LoRA rank {args.rank} (UNet + both text encoders, default targets): "
          f"{counts['lora_total']:,} trained of {total:,} parameters")  # fmt: skip
    full = next(r for r in rows if r["what"].startswith("SDXL: full save_state, bf16"))["bytes"]
    ours = next(r for r in rows if "cover-hpc checkpoint" in r["what"] and r["what"].startswith("SDXL"))["bytes"]
    print(f"full save_state (bf16 base) / cover-hpc checkpoint: {full / ours:.1f}x")
    write_json(args.json, {**info, "rows": rows, "counts": counts})


if __name__ == "__main__":
    main()
