"""A tiny SDXL-structured pipeline with random weights, built offline in seconds.

It has every part real SDXL has, so the production code paths run on it unchanged: two CLIP text
encoders (the second with a projection, both read at their penultimate layer), the UNet's
``text_time`` micro-conditioning, an 8x-downsampling VAE, an Euler discrete scheduler with SDXL's
settings, and two working CLIP BPE tokenizers (the second pads with "!", as SDXL's does). The
tokenizers use the first 4000 merges of the real CLIP BPE, vendored in ``cover_hpc/assets``, so
captions split into tokens much as they do for SDXL. It is saved with ``save_pretrained`` and
loaded back with ``StableDiffusionXLPipeline.from_pretrained(folder)``, no hub needed.
"""

from __future__ import annotations

import json
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from cover_hpc.assets import BOS, EOS, clip_vocab_and_merges

MAX_TOKENS = 77
HIDDEN = 32
PROJECTION = 32
TIME_EMBED = 8


def build_tokenizers(folder: Path) -> tuple[Any, Any]:
    """CLIP tokenizers for both encoders (the second pads with '!', as SDXL's does)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    with tempfile.TemporaryDirectory() as scratch:
        vocab_file = Path(scratch) / "vocab.json"
        merges_file = Path(scratch) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        common: dict[str, Any] = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS}
        tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), pad_token=EOS, **common)
        tokenizer_2 = CLIPTokenizer(str(vocab_file), str(merges_file), pad_token="!", **common)
        tokenizer.model_max_length = tokenizer_2.model_max_length = MAX_TOKENS
        tokenizer.save_pretrained(folder / "tokenizer")
        tokenizer_2.save_pretrained(folder / "tokenizer_2")
    return tokenizer, tokenizer_2


def _text_config(vocab: dict[str, int], pad: str) -> dict[str, Any]:
    return {
        "vocab_size": len(vocab),
        "hidden_size": HIDDEN,
        "intermediate_size": 4 * HIDDEN,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": MAX_TOKENS,
        "hidden_act": "gelu",
        "projection_dim": PROJECTION,
        "bos_token_id": vocab[BOS],
        "eos_token_id": vocab[EOS],
        "pad_token_id": vocab[pad],
    }


def build_tiny_sdxl(folder: str | Path, seed: int = 0) -> Path:
    """Build and save the tiny pipeline into ``folder``; deterministic from ``seed``."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, _ = clip_vocab_and_merges()
    tokenizer, tokenizer_2 = build_tokenizers(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        cross_attention_dim=2 * HIDDEN,  # both encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TIME_EMBED + PROJECTION,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32, 64, 64),  # four levels: 8x down, as SDXL's VAE
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=0.13025,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config(vocab, EOS)))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_text_config(vocab, "!")))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        timestep_spacing="leading",
        steps_offset=1,
        prediction_type="epsilon",
    )
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)  # type: ignore[attr-defined]
    return folder
