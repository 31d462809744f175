"""Full-size SDXL base 1.0, built from its configuration (no download): on the meta device for shapes
and FLOP counts, or with random weights saved as a diffusers folder for throughput runs (throughput
does not depend on the values).

    python benchmarks/sdxl.py build FOLDER [--dtype fp16]   # ~7 GB in fp16; loads with from_pretrained
    python benchmarks/sdxl.py count                          # parameters per part (meta device)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import common  # noqa: F401  (the torchvision hook, the repo on sys.path)

from cover_hpc.orchestrate import resources

# The configurations are the estimate's own (``cover-hpc plan --resources``), so the benchmark builds the model
# the estimate counts.
UNET, VAE = resources.SDXL_UNET, resources.SDXL_VAE
TEXT, TEXT_2 = resources.SDXL_TEXT, resources.SDXL_TEXT_2  # CLIP ViT-L/14; OpenCLIP ViT-bigG/14, with projection
SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "timestep_spacing": "leading", "steps_offset": 1, "prediction_type": "epsilon",
}  # fmt: skip


def build_parts(
    device: str = "meta", token_ids: dict[str, int] | None = None, pad: int | None = None, pad_2: int | None = None
) -> dict[str, Any]:
    """UNet, VAE and both text encoders at full size (random weights unless on ``meta``); ``token_ids``
    and the pads set the text encoders' special token ids for a given tokenizer."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    ids = token_ids or {}
    pads = {} if pad is None else {"pad_token_id": pad}
    pads_2 = {} if pad_2 is None else {"pad_token_id": pad_2}
    with torch.device(device):
        return {
            "unet": UNet2DConditionModel(**UNET),
            "vae": AutoencoderKL(**VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**TEXT, **ids, **pads)),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_2, **ids, **pads_2)),
        }


def build_folder(folder: Path, dtype: str = "fp16") -> Path:
    """Save a random-weight full-size SDXL pipeline that ``from_pretrained(folder)`` loads offline.

    The tokenizers are the tiny model's (CLIP BPE, first 4000 merges): every id they produce is a
    valid row of the full 49408-token embedding, and the step's cost does not depend on which ids.
    """
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from cover_hpc.assets import BOS, EOS, clip_vocab_and_merges
    from cover_hpc.demo.tiny_model import build_tokenizers

    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, tokenizer_2 = build_tokenizers(folder)
    vocab, _ = clip_vocab_and_merges()
    torch.manual_seed(0)
    # the special tokens' ids as these tokenizers number them (the pooled output looks for EOS)
    parts = build_parts("cpu", {"bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS]}, vocab[EOS], vocab["!"])
    for module in parts.values():
        module.to(torch_dtype)
    pipeline = StableDiffusionXLPipeline(
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=EulerDiscreteScheduler(**SCHEDULER), **parts
    )
    pipeline.save_pretrained(folder, safe_serialization=True)  # type: ignore[attr-defined]
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build")
    build.add_argument("folder", type=Path)
    build.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    sub.add_parser("count")
    args = parser.parse_args()
    if args.command == "build":
        print(build_folder(args.folder, args.dtype))
        return
    for name, module in build_parts("meta").items():
        print(f"{name:15s} {sum(p.numel() for p in module.parameters()):>14,d} parameters")


if __name__ == "__main__":
    main()
