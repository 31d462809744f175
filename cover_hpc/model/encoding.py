"""Long captions for CLIP: chunked tokenisation and encoding, one function for training,
validation and inference alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

# --------------------------------------------------------------------------------------------
# Long captions: one function for training, validation and inference alike.

CLIP_WINDOW = 77
CHUNK_CONTENT = CLIP_WINDOW - 2  # each chunk gets its own start and end token


def num_chunks(max_caption_tokens: int) -> int:
    """Chunks per caption: fixed by the limit, so a caption encodes the same in any batch."""
    return max(1, -(-max_caption_tokens // CHUNK_CONTENT))


def tokenize_chunks(tokenizer: Any, captions: Sequence[str], max_caption_tokens: int) -> torch.Tensor:
    """Token ids of shape (batch, chunks, 77).

    A caption is tokenized whole, cut to ``max_caption_tokens``, and split into 75-token pieces;
    each piece becomes ``<start> piece <end> <pad>...``. Unused chunks are ``<start> <end> <pad>...``.
    (The original gave start/end tokens only to the first slice.)
    """
    import torch

    chunks = num_chunks(max_caption_tokens)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    encoded = tokenizer(list(captions), add_special_tokens=False, truncation=False, verbose=False).input_ids
    rows = torch.full((len(captions), chunks, CLIP_WINDOW), pad, dtype=torch.long)
    for index, ids in enumerate(encoded):
        ids = ids[:max_caption_tokens]
        for chunk in range(chunks):
            piece = ids[chunk * CHUNK_CONTENT : (chunk + 1) * CHUNK_CONTENT]
            rows[index, chunk, : len(piece) + 2] = torch.tensor([bos, *piece, eos])
    return rows


def encode_chunks(
    text_encoder: Any, text_encoder_2: Any, ids: torch.Tensor, ids_2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL prompt embeddings of chunked ids: ``(batch, chunks * 77, d1 + d2)`` and pooled ``(batch, p)``.

    Each chunk is encoded on its own; both encoders are read at their penultimate layer, as SDXL
    does, and the chunks are concatenated along the sequence. The pooled embedding (from the
    second encoder's projection) is the mean over the chunks that hold caption tokens.
    """
    import torch

    batch, chunks, window = ids.shape
    hidden = text_encoder(ids.reshape(-1, window), output_hidden_states=True).hidden_states[-2]
    output_2 = text_encoder_2(ids_2.reshape(-1, window), output_hidden_states=True)
    hidden_2 = output_2.hidden_states[-2]
    embeds = torch.cat([hidden, hidden_2.to(hidden.dtype)], dim=-1).reshape(batch, chunks * window, -1)
    pooled = output_2.text_embeds.reshape(batch, chunks, -1)
    eos = text_encoder_2.config.eos_token_id
    used = ids_2[:, :, 1] != eos  # a chunk whose second token is <end> holds no caption tokens
    used[:, 0] = True
    weights = used.to(pooled.dtype).unsqueeze(-1)
    return embeds, (pooled * weights).sum(1) / weights.sum(1)
