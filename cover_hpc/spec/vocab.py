"""Spec vocabulary: the metric names a spec may select by, and the checkpoint names it may infer
from. Stages, metrics and the report read these; the spec checks them at plan time."""

from __future__ import annotations

#: The typesetter's font roles (cover_hpc.typeset.ROLE_FACES has a face list for each).
FONT_ROLES = ("serif", "sans", "display")

#: Metric name -> direction ("max": higher is better) and what it measures.
METRICS: dict[str, tuple[str, str]] = {
    "clip_score": ("max", "CLIP score of the full caption (text alignment)"),
    "clip_score_short": ("max", "CLIP score of the title-and-genres prompt"),
    "cmmd": ("min", "CMMD to the real held-out covers (x1000; distribution match)"),
    "ocr_similarity": ("max", "title read back by OCR: 1 - normalised edit distance"),
    "ocr_exact": ("max", "share of titles read back exactly by OCR"),
    "heldout_loss": ("min", "denoising loss on the held-out covers at fixed timesteps and noise"),
}


#: Which validate switch a metric needs.
NEEDS = {"cmmd": "validate.cmmd", "ocr_similarity": "validate.ocr", "ocr_exact": "validate.ocr",
         "heldout_loss": "validate.loss_images"}  # fmt: skip


class CheckpointError(ValueError):
    """``infer.checkpoint`` names a LoRA that does not exist (yet)."""


def parse_checkpoint(value: str) -> str | int:
    """``best``, ``final`` or a step number (a positive integer); ValueError otherwise."""
    text = value.strip().lower()
    if text in ("best", "final"):
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise ValueError(f"{value!r} is not best, final or a step number")
