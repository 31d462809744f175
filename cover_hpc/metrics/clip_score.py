"""CLIP score as torchmetrics defines it: ``max(100 * cos(image, text), 0)``, per image.

Two backends, each from a local folder or a hub id:

- ``transformers``: ``CLIPModel`` + ``CLIPProcessor`` (needs no torchvision). Default model
  ``openai/clip-vit-base-patch16``, as the original's reported 13.6 and 15.18 used.
- ``open_clip``: ``local-dir:FOLDER`` or ``hf-hub:ORG/NAME`` (for larger models such as ViT-bigG).

torchmetrics' own ``CLIPScore`` is not used: version 1.9 fails with transformers 5. Captions are
cut at the metric's 77-token window; :meth:`tokens` reports how many tokens each caption has, so
a report can say how much of a long caption the metric saw.

:meth:`image_embeddings` returns the same model's image features (before normalisation), in
batches, for :func:`cover_hpc.metrics.cmmd.cmmd`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from PIL import Image

WINDOW = 77
#: Images per forward pass in :meth:`image_embeddings` (bounds memory at any set size).
EMBED_BATCH = 16


class ClipScorer(Protocol):
    name: str

    def scores(self, images: Sequence[Any], texts: Sequence[str]) -> list[float]: ...

    def tokens(self, texts: Sequence[str]) -> list[int]: ...

    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor: ...


def _score(image_features: torch.Tensor, text_features: torch.Tensor) -> list[float]:
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    cosine = (image_features * text_features).sum(dim=-1)
    return [float(v) for v in (100 * cosine).clamp(min=0)]


def _features(output: Any) -> torch.Tensor:
    """transformers 5 returns output objects from get_*_features; older versions returned tensors."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _embed_in_batches(
    images: Sequence[Image.Image], embed: Callable[[Sequence[Image.Image]], torch.Tensor]
) -> torch.Tensor:
    if len(images) == 0:
        raise ValueError("image_embeddings needs at least one image")
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), EMBED_BATCH):
            parts.append(embed(images[start : start + EMBED_BATCH]).float().cpu())
    return torch.cat(parts)


class TransformersClip:
    def __init__(self, name: str, device: torch.device) -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.name = name
        self.device = device
        self.model = CLIPModel.from_pretrained(name).to(device).eval()  # type: ignore[arg-type]
        self.processor = CLIPProcessor.from_pretrained(name)

    def scores(self, images: Sequence[Any], texts: Sequence[str]) -> list[float]:
        inputs = self.processor(
            text=list(texts), images=list(images), return_tensors="pt", padding=True, truncation=True, max_length=WINDOW
        ).to(self.device)
        with torch.no_grad():
            image = _features(self.model.get_image_features(pixel_values=inputs["pixel_values"]))
            text = _features(
                self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            )
        return _score(image.float(), text.float())

    def tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.processor.tokenizer(list(texts), truncation=False, verbose=False).input_ids]

    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """CLIP image features, (len(images), projection dim), float32 on the CPU, not normalised."""

        def embed(batch: Sequence[Image.Image]) -> torch.Tensor:
            pixels = self.processor(images=list(batch), return_tensors="pt")["pixel_values"].to(self.device)
            return _features(self.model.get_image_features(pixel_values=pixels))

        return _embed_in_batches(images, embed)


class OpenClip:
    def __init__(self, name: str, device: torch.device) -> None:
        import open_clip

        self.name = name
        self.device = device
        identifier = f"local-dir:{name}" if Path(name).is_dir() else (name if ":" in name else f"hf-hub:{name}")
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(identifier, device=device)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(identifier)

    def scores(self, images: Sequence[Any], texts: Sequence[str]) -> list[float]:
        pixels = torch.stack([self.preprocess(image) for image in images]).to(self.device)
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.no_grad():
            return _score(self.model.encode_image(pixels).float(), self.model.encode_text(tokens).float())

    def tokens(self, texts: Sequence[str]) -> list[int]:
        from open_clip.tokenizer import _tokenizer

        return [len(_tokenizer.encode(text)) + 2 for text in texts]

    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """CLIP image features, (len(images), embedding dim), float32 on the CPU, not normalised."""

        def embed(batch: Sequence[Image.Image]) -> torch.Tensor:
            pixels = torch.stack([self.preprocess(image) for image in batch]).to(self.device)
            return self.model.encode_image(pixels)

        return _embed_in_batches(images, embed)


def load_scorer(backend: str, name: str, device: torch.device) -> ClipScorer:
    if backend == "open_clip":
        return OpenClip(name, device)
    return TransformersClip(name, device)
