"""Image generation shared by validation and inference: the base pipeline plus the trained LoRA
in all three models, prompts encoded exactly as training encoded them.

The original encoded prompts with freshly loaded base text encoders, so the text-encoder
adapters were never used at test time; here the pipeline's own (adapted) encoders encode the
prompt through :func:`cover_hpc.prompts.encode_chunks`, with the same chunking and token limit
as training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cover_hpc import preemption
from cover_hpc.config import ModelConfig
from cover_hpc.prompts import encode_chunks, tokenize_chunks

log = logging.getLogger(__name__)

SCHEDULERS = {
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "ddim": "DDIMScheduler",
}


class MissingLoraError(FileNotFoundError):
    """A LoRA folder without the weights file it should hold."""


def device_and_dtype(precision: str) -> tuple[torch.device, torch.dtype]:
    """The device, and the compute dtype: 'auto' is fp16 on a GPU and fp32 on a CPU."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    return device, {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]


def lora_file(path: Path) -> Path:
    """The weights file of a LoRA folder (or the file itself); a clear error when absent."""
    candidate = path / "pytorch_lora_weights.safetensors" if path.is_dir() or not path.suffix else path
    if not candidate.is_file():
        raise MissingLoraError(
            f"no LoRA weights at {candidate}: expected pytorch_lora_weights.safetensors in {candidate.parent} "
            "(written when training finishes); train the run first or point to a finished run's train/ folder"
        )
    return candidate


@dataclass
class Generator:
    """A loaded pipeline that turns prompts and seeds into images."""

    pipeline: Any
    device: torch.device
    max_caption_tokens: int
    has_lora: bool

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pipe = self.pipeline
        ids = tokenize_chunks(pipe.tokenizer, prompts, self.max_caption_tokens).to(self.device)
        ids_2 = tokenize_chunks(pipe.tokenizer_2, prompts, self.max_caption_tokens).to(self.device)
        with torch.no_grad():
            return encode_chunks(pipe.text_encoder, pipe.text_encoder_2, ids, ids_2)

    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        steps: int,
        guidance: float,
        size: tuple[int, int],
        negative_prompt: str = "",
    ) -> tuple[list[Any], float]:
        """PIL images, one per prompt, each from its own seeded generator; and the seconds taken."""
        started = time.perf_counter()
        embeds, pooled = self.encode(prompts)
        if negative_prompt or not self.pipeline.config.force_zeros_for_empty_prompt:
            negative, negative_pooled = self.encode([negative_prompt] * len(prompts))
        else:  # SDXL's convention for an empty negative prompt
            negative, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        generators = [torch.Generator(self.device).manual_seed(int(seed)) for seed in seeds]
        with torch.no_grad():
            images = self.pipeline(
                prompt_embeds=embeds,
                pooled_prompt_embeds=pooled,
                negative_prompt_embeds=negative,
                negative_pooled_prompt_embeds=negative_pooled,
                num_inference_steps=steps,
                guidance_scale=float(guidance),
                height=size[0],
                width=size[1],
                generator=generators,
                callback_on_step_end=_stop_between_steps,
            ).images
        return images, time.perf_counter() - started


def _stop_between_steps(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
    """A stop request (SLURM's signal) ends sampling after the current denoising step: an SDXL image
    can take longer than the warning SLURM gives. The unfinished image is dropped; finished ones stay."""
    preemption.check()
    return tensors


def load_generator(
    model: ModelConfig,
    lora: Path | None,
    max_caption_tokens: int,
    precision: str = "auto",
    scheduler: str = "euler",
    compile_unet: bool = False,
    vae_tiling: bool = False,
) -> Generator:
    """The base pipeline, with the LoRA (if given) loaded into the UNet and both text encoders."""
    import diffusers
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline

    from cover_hpc import env

    weights = lora_file(lora) if lora is not None else None
    device, dtype = device_and_dtype(precision)
    if device.type == "cpu":  # the job's share of the cores, not all of them (see env.cpu_threads)
        torch.set_num_threads(env.cpu_threads(env.dist_env()))
    kwargs: dict[str, Any] = {"dtype": dtype, "revision": model.revision, "variant": model.variant}
    if model.vae:
        kwargs["vae"] = AutoencoderKL.from_pretrained(model.vae, dtype=dtype)
    pipe = StableDiffusionXLPipeline.from_pretrained(model.pretrained, **kwargs)
    # SDXL's own VAE overflows to NaN (black images) in fp16; its config sets force_upcast, so the
    # pipeline decodes in fp32. An fp16-safe VAE (model.vae) clears that flag and stays in fp16.
    if scheduler != "euler":
        scheduler_class = getattr(diffusers, SCHEDULERS[scheduler])
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    if weights is not None:
        from cover_hpc.lora import load_lora_checked

        load_lora_checked(pipe, weights, "cover")
    pipe.to(device)
    if vae_tiling:
        pipe.vae.enable_tiling()
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet, mode="max-autotune-no-cudagraphs", fullgraph=False)
    pipe.set_progress_bar_config(disable=True)
    return Generator(pipe, device, max_caption_tokens, weights is not None)
