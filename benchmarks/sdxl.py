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

UNET: dict[str, Any] = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048, "use_linear_projection": True, "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
}  # fmt: skip
VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "norm_num_groups": 32, "sample_size": 1024,
    "scaling_factor": 0.13025, "force_upcast": True,
}  # fmt: skip
TEXT: dict[str, Any] = {  # CLIP ViT-L/14 text tower
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768,
}  # fmt: skip
TEXT_2: dict[str, Any] = {  # OpenCLIP ViT-bigG/14 text tower, with projection
    "vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
    "num_attention_heads": 20, "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 1280,
}  # fmt: skip
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
