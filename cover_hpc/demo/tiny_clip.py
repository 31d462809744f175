"""Tiny random CLIP models for the CLIP-score path, saved where the real loaders read them.

- transformers: a ``CLIPModel`` plus ``CLIPProcessor`` folder (``from_pretrained(folder)``).
- open_clip: a ``local-dir:`` folder (``open_clip_config.json`` + ``open_clip_model.safetensors``),
  the layout ``open_clip.create_model_and_transforms("local-dir:FOLDER")`` loads.
"""

from __future__ import annotations

import json
from pathlib import Path

IMAGE_SIZE = 32
#: Random CLIPs often put every image on the far side of every caption, so every score clamps
#: to 0 and a test could not see a change; with this seed the tiny scorer gives spread-out
#: positive scores on the demo covers.
SEED = 3


def build_tiny_transformers_clip(folder: str | Path, seed: int = SEED) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from cover_hpc.assets import BOS, EOS, clip_vocab_and_merges
    from cover_hpc.demo.tiny_model import build_tokenizers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, _ = clip_vocab_and_merges()
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": vocab[BOS],
                     "eos_token_id": vocab[EOS], "pad_token_id": vocab[EOS]},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": IMAGE_SIZE, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    model = CLIPModel(config)
    tokenizer, _ = build_tokenizers(folder / "_tokenizers")
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    import shutil

    shutil.rmtree(folder / "_tokenizers")
    return folder


def build_tiny_open_clip(folder: str | Path, seed: int = SEED) -> Path:
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                                          "std": [0.26862954, 0.26130258, 0.27577711]}}  # fmt: skip
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder
