"""Image generation shared by validation and inference: the base pipeline plus the trained LoRA
in all three models, prompts encoded exactly as training encoded them.

The original encoded prompts with freshly loaded base text encoders, so the text-encoder
adapters were never used at test time; here the pipeline's own (adapted) encoders encode the
prompt through :func:`cover_hpc.model.encoding.encode_chunks`, with the same chunking and token limit
as training.

Speed (issue 12, measured with ``benchmarks/infer_latency.py``; docs/PERFORMANCE.md): on a CPU
each image is sampled alone, the UNet's cross-attention attends to each prompt's distinct context
vectors only (:class:`DistinctContextAttention`), and the VAE decodes channels-last with in-place
activations (:func:`speed_up_vae_decoder`). Everywhere, sampling runs under ``torch.inference_mode``.
On a GPU the pipeline is otherwise as diffusers sets it up: none of this was measured there yet.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cover_hpc.model.encoding import encode_chunks, tokenize_chunks
from cover_hpc.runtime import preemption
from cover_hpc.spec.schema import ModelConfig

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
        """PIL images, one per prompt, each from its own seeded generator; and the seconds taken.

        An image depends on its prompt, seed and the settings, never on the other prompts of the
        batch: on a CPU each image is sampled alone, so exactly; on a GPU, where a batch is one
        pipeline call, up to float rounding (batched matrix products may sum in another order).
        """
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        started = time.perf_counter()
        # On a CPU one image at a time: a batch was no faster per image (tiny model, 1152x896: the
        # UNet step and the channels-last decode), and alone an image cannot depend on its batch.
        step = 1 if self.device.type == "cpu" else max(1, len(prompts))
        images: list[Any] = []
        # inference mode, not only no_grad: no autograd bookkeeping (version counters) on any tensor
        with torch.inference_mode():
            for first in range(0, len(prompts), step):
                images += self._sample(
                    prompts[first : first + step], seeds[first : first + step], steps, guidance, size, negative_prompt
                )
        return images, time.perf_counter() - started

    def _sample(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        steps: int,
        guidance: float,
        size: tuple[int, int],
        negative_prompt: str,
    ) -> list[Any]:
        """One pipeline call: the images of ``prompts``, in order."""
        embeds, pooled = self.encode(prompts)
        if negative_prompt or not self.pipeline.config.force_zeros_for_empty_prompt:
            negative, negative_pooled = self.encode([negative_prompt] * len(prompts))
        else:  # SDXL's convention for an empty negative prompt
            negative, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        generators = [torch.Generator(self.device).manual_seed(int(seed)) for seed in seeds]
        images: list[Any] = self.pipeline(
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
        return images


def _stop_between_steps(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
    """A stop request (SLURM's signal) ends sampling after the current denoising step: an SDXL image
    can take longer than the warning SLURM gives. The unfinished image is dropped; finished ones stay.
    (One Event.is_set per step: microseconds against a step's tens of milliseconds or more.)"""
    preemption.check()
    return tensors


class DistinctContextAttention:
    """Cross-attention processor (the UNet's ``attn2``) that attends to each row's distinct context
    vectors, each once, with log(count) added to its logit.

    The 539-token context of a caption holds many equal vectors: the chunks a short caption leaves
    unused are all ``<start> <end> <pad>...`` and encode alike, and CLIP's causal mask makes every
    chunk's first token alike; the zero context of an empty negative prompt is one vector 539 times.
    Attention over n equal keys (with their n equal values) is attention over one of them whose
    softmax weight is n times larger, exp(s + log n) = n exp(s): the same result, up to float
    rounding, for a fraction of the work (153 keys instead of 539 for a one-chunk caption, one for
    the zero context, whose output is then its value).

    Which vectors are equal is read from the context tensor itself (exact equality), once per
    tensor: the pipeline passes the same one to every cross-attention of every step. Each row keeps
    its own distinct vectors in sorted order, so a row's keys do not depend on the other rows of the
    batch; rows with as many distinct vectors go through one attention call. Anything else (a mask,
    other attention options) goes to diffusers' own processor.
    """

    def __init__(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.fallback = AttnProcessor2_0()
        self._source: weakref.ref[torch.Tensor] | None = None
        # per group of rows with the same number of distinct vectors: rows, vectors, logit bias
        self._groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def _plan(self, context: torch.Tensor) -> None:
        members: dict[int, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
        for row in range(context.shape[0]):
            distinct, counts = torch.unique(context[row], dim=0, return_counts=True)
            members.setdefault(distinct.shape[0], []).append((row, distinct, counts))
        self._groups = []
        for group in members.values():
            rows = torch.tensor([row for row, _, _ in group], device=context.device)
            vectors = torch.stack([distinct for _, distinct, _ in group])
            bias = torch.stack([counts for _, _, counts in group]).to(context.dtype).log()
            self._groups.append((rows, vectors, bias[:, None, None, :]))
        self._source = weakref.ref(context)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if (
            encoder_hidden_states is None
            or attention_mask is not None
            or args
            or hidden_states.ndim != 3
            or attn.spatial_norm is not None
            or attn.group_norm is not None
            or attn.norm_cross
            or attn.norm_q is not None
            or attn.norm_k is not None
            or attn.residual_connection
        ):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if self._source is None or self._source() is not encoder_hidden_states:
            self._plan(encoder_hidden_states)
        import torch.nn.functional as F

        batch, length, _ = hidden_states.shape
        query = attn.to_q(hidden_states)
        heads, inner = attn.heads, query.shape[-1]
        head_dim = inner // heads
        query = query.view(batch, length, heads, head_dim).transpose(1, 2)
        output: torch.Tensor | None = None
        for rows, vectors, bias in self._groups:
            size, count = vectors.shape[:2]
            key = attn.to_k(vectors).view(size, count, heads, head_dim).transpose(1, 2)
            value = attn.to_v(vectors).view(size, count, heads, head_dim).transpose(1, 2)
            if count == 1:  # the softmax over one key is 1: the output is its value
                part = value.expand(size, heads, length, head_dim)
            else:
                part = F.scaled_dot_product_attention(
                    query if size == batch else query.index_select(0, rows), key, value, attn_mask=bias
                )
            part = part.transpose(1, 2).reshape(size, length, inner).to(query.dtype)
            if size == batch:
                output = part
            else:
                if output is None:
                    output = query.new_empty(batch, length, inner)
                output.index_copy_(0, rows, part)
        assert output is not None
        output = attn.to_out[1](attn.to_out[0](output))
        if attn.rescale_output_factor != 1.0:
            output = output / attn.rescale_output_factor
        return output


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

    from cover_hpc.runtime import env

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
        from cover_hpc.model.lora import load_lora_checked

        load_lora_checked(pipe, weights, "cover")
    pipe.to(device)
    if device.type == "cpu":
        speed_up_vae_decoder(pipe.vae)
        if not compile_unet:  # its planning is data-dependent Python, not for a compiled graph
            use_distinct_context_attention(pipe.unet)
    if vae_tiling:
        pipe.vae.enable_tiling()
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet, mode="max-autotune-no-cudagraphs", fullgraph=False)
    pipe.set_progress_bar_config(disable=True)
    return Generator(pipe, device, max_caption_tokens, weights is not None)


def speed_up_vae_decoder(vae: Any) -> None:
    """A CPU VAE decode in about three quarters of the time (tiny model, 1152 x 896, one core:
    5.2 s -> 3.9 s an image).

    Channels-last weights: oneDNN convolves channels-last tensors without reordering every input
    and output (~20 % less time; its sums run in another order, so pixels may move by one level
    against a channels-first decode). In-place SiLU in the decoder: at full size each activation is
    a fresh tensor of over 100 MB an image, whose page faults cost several times the arithmetic
    (the same values; safe there because no decoder SiLU input is read again: each is a fresh
    GroupNorm output, and the decoder has no time embedding).
    """
    vae.to(memory_format=torch.channels_last)
    for module in vae.decoder.modules():
        if isinstance(module, torch.nn.SiLU):
            module.inplace = True


def use_distinct_context_attention(unet: Any) -> None:
    """Give the UNet's cross-attention layers that run diffusers' default processor a
    :class:`DistinctContextAttention` (one, shared: it plans once per context tensor)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    shared = DistinctContextAttention()
    unet.set_attn_processor({
        name: shared if name.endswith("attn2.processor") and type(processor) is AttnProcessor2_0 else processor
        for name, processor in unet.attn_processors.items()
    })  # fmt: skip
