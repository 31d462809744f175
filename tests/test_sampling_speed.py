"""Sampling after the speed-ups of issue 12: the same images, whatever the batch, and a stop request
still ends sampling between denoising steps. Tiny model, CPU, small images (~20 s in all)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cover_hpc.model.encoding import CLIP_WINDOW
from cover_hpc.model.sampling import DistinctContextAttention, Generator, load_generator
from cover_hpc.runtime import preemption
from cover_hpc.spec.schema import ModelConfig

PROMPTS = [
    'Book Cover - This book title is "the lighthouse keeper". This book genres are mystery , fiction.',
    "Book Cover - " + "a storm over the harbor , gulls and a red door . " * 14,  # three chunks
    "a quiet garden",
]
SIZE = (96, 64)
STEPS = 3


@pytest.fixture(scope="module")
def generator(tiny_model_dir: Path) -> Generator:
    return load_generator(ModelConfig(pretrained=str(tiny_model_dir)), None, 525)


def pixels(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_same_image(generator: Generator, a: np.ndarray, b: np.ndarray) -> None:
    """Equal: exactly on a CPU, where each image is sampled alone; on a GPU a batch is one call, and
    batched matrix products may round differently (one level in a handful of values)."""
    if generator.device.type == "cpu":
        assert np.array_equal(a, b)
    else:
        assert np.abs(a - b).max() <= 1 and np.count_nonzero(a != b) <= a.size // 1000


def test_cross_attention_over_distinct_vectors_equals_full_attention(generator: Generator) -> None:
    unet = generator.pipeline.unet
    cross = {name: p for name, p in unet.attn_processors.items() if name.endswith("attn2.processor")}
    assert cross and all(isinstance(p, DistinctContextAttention) for p in cross.values())
    with torch.inference_mode():
        embeds, pooled = generator.encode([*PROMPTS, "blurry, text"])
        # a one-chunk caption: its unused chunks (and every chunk's first token) encode alike
        assert torch.unique(embeds[0], dim=0).shape[0] <= 2 * CLIP_WINDOW < embeds.shape[1]
        # rows as the pipeline batches them: zero contexts (SDXL's empty negative prompt) first
        context = torch.cat([torch.zeros_like(embeds[:2]), embeds])
        text_embeds = torch.cat([torch.zeros_like(pooled[:2]), pooled])
        rows = context.shape[0]
        latents = torch.randn(rows, 4, 12, 8, generator=torch.Generator().manual_seed(0))
        added = {"text_embeds": text_embeds, "time_ids": torch.tensor([[96.0, 64.0, 0.0, 0.0, 96.0, 64.0]] * rows)}
        ours = unet(latents, 500, encoder_hidden_states=context, added_cond_kwargs=added).sample
        processors = unet.attn_processors
        unet.set_attn_processor(DistinctContextAttention().fallback)  # diffusers' own, everywhere
        try:
            full = unet(latents, 500, encoder_hidden_states=context, added_cond_kwargs=added).sample
        finally:
            unet.set_attn_processor(processors)
    torch.testing.assert_close(ours, full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("negative", ["", "blurry, text"])
def test_a_prompt_and_seed_give_the_same_image_alone_and_in_any_batch(generator: Generator, negative: str) -> None:
    seeds = [11, 22, 33]
    alone = [
        pixels(generator.generate([prompt], [seed], STEPS, 5.0, SIZE, negative)[0][0])
        for prompt, seed in zip(PROMPTS, seeds, strict=True)
    ]
    together = [pixels(i) for i in generator.generate(PROMPTS, seeds, STEPS, 5.0, SIZE, negative)[0]]
    backwards = [pixels(i) for i in generator.generate(PROMPTS[::-1], seeds[::-1], STEPS, 5.0, SIZE, negative)[0]]
    for index, image in enumerate(alone):
        assert_same_image(generator, image, together[index])
        assert_same_image(generator, image, backwards[-1 - index])
    assert not np.array_equal(alone[0], alone[2])
    # the seed, not the place in the batch, draws the noise: one prompt, two seeds, in one batch
    twice = [pixels(i) for i in generator.generate([PROMPTS[0]] * 2, [seeds[0], 7], STEPS, 5.0, SIZE, negative)[0]]
    assert_same_image(generator, alone[0], twice[0])
    assert not np.array_equal(twice[0], twice[1])
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        generator.generate(PROMPTS[:2], seeds[:1], STEPS, 5.0, SIZE, negative)


def test_a_stop_request_ends_sampling_after_the_current_step(
    generator: Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    unet = generator.pipeline.unet
    forward = unet.forward
    calls = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            preemption.STOP.set()  # as SLURM's signal would, during the second step
        return forward(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", counted)
    try:
        with pytest.raises(preemption.Stopped):
            generator.generate(["a cover"], [0], 10, 5.0, (64, 64))
    finally:
        preemption.reset()
    assert len(calls) == 2  # the second step finished, no third began
