"""What a run will need before it is queued: peak memory per rank, step time, time per run, GPU-hours.

``cover-hpc plan SPEC --resources`` prints it; :func:`estimate_memory` is also what the CPU benchmark
(``benchmarks/fullsize_cpu.py``) compares with the resident memory it measures.

How each part is reckoned (per rank, B = train.batch_size, W = world size = nodes x GPUs per node):

- **frozen weights**: the parameters of the UNet and both text encoders (held on the device during set-up even
  when their embeddings are cached, so always counted), counted on the meta device from the
  model folder's configs (or the full-size SDXL configs below for the hub model), held in the training dtype
  (2 bytes under fp16/bf16, 4 under ``no``: training casts them, ``stages/train.py``), the VAE in fp32 and only
  when latents are not cached (with the cache it is dropped once the cache is filled).
- **adapters**: LoRA parameters r x (in + out) per targeted Linear (r x in x k x k + r x out per Conv2d),
  selected with the training's own :func:`cover_hpc.model.lora.target_names` (DoRA adds one magnitude per
  output channel), held in fp32, as training holds them, or in the compute dtype under DeepSpeed, which casts
  the module (a fp32 master copy then sits with the optimiser states); an EMA adds a fp32 copy.
- **gradients**: one per adapter parameter in its dtype (ZeRO-2 keeps 1/W of them after the reduction);
  DDP over more than one rank adds its fp32 bucket copy.
- **optimiser states**: AdamW's fp32 m and v (+ the fp32 master under DeepSpeed with fp16/bf16, and its fp32
  gradient partition), divided by W under ZeRO-1/2/3.
- **activations**: counted, not guessed: one sample's forward (UNet, and the trained text encoders) runs on
  the meta device at the spec's latent size (data.size / 8) and every tensor saved for backward is summed
  once per storage, parameters excluded; attention is counted as a fused (flash / memory-efficient) kernel
  saves it, q, k, v, out, as on a GPU or torch's CPU flash kernel. With gradient checkpointing the sum is
  what stays between blocks (the tensors saved outside the checkpointed blocks and each block's inputs) plus
  the largest block's own saved tensors (it is recomputed in backward). Then
  ``activations = B x (saved + 3 x largest saved tensor)``, the last term being the backward's working set
  (the incoming gradient, the outgoing one and a temporary of the largest activation). Checked against the
  resident memory of a real bf16 LoRA UNet forward + backward on the CPU (an SDXL-shaped UNet with channels
  64/128/256, latents 64-160 square, peak RSS over the step): without checkpointing the count is within 9 %
  of the measured peak (174 vs 183 MiB at 64, 390 vs 360 MiB at 96); with it the count falls short by a
  roughly fixed 15-55 MiB (checkpointing's own bookkeeping: 142 vs 169 MiB at 128, 222 vs 235 MiB at 160),
  which is noise beside the GiB of a full-size UNet.
- **gradients** under ZeRO-2 add DeepSpeed's reduce bucket (contiguous gradients, 5e8 elements by default in
  the compute dtype): allocated whole on a GPU, on the CPU resident only as far as it is filled.
- **latent cache**: with data.cache_latents a batch reads cached latent mean and std (fp32, 2 x 4 x h/8 x w/8
  each); without it the VAE encodes each batch in fp32 under no_grad, whose peak is about three 128-channel
  fp32 maps at full resolution per sample.
- **loading** (CPU runs): ``load_parts`` reads every part in fp32 before training casts it, so the process's
  peak is the larger of that phase and training; the part is the excess of the first. Loading peaks at the fp32
  parameters read so far + the half-precision file of the part being read (held until it is filled; a fp32
  file's tensors become the parameters), or at all four parts in fp32 + one image's VAE encoding while the
  latent cache fills.
  :attr:`MemoryEstimate.training_gib` is the footprint while steps run.
- **runtime**: the CUDA context and allocator reserve on a GPU (1.5 GiB assumed); on the CPU the Python
  process with torch, diffusers, transformers, accelerate, peft and deepspeed imported (0.4 GiB measured) and
  its tokenizers, thread pools and arenas (0.6 GiB in all assumed).

Step time: the FLOPs of one sample (the full-size SDXL counts of ``shared/probes/ml-probe.md`` section 8 at
1024 x 1024, scaled by the pixel count, the attention core by its square) divided by the GPU's dense
fp16/bf16 peak times an assumed model-FLOPs utilisation (:data:`MFU`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cover_hpc.spec.schema import SDXL_BASE, ExperimentSpec
from cover_hpc.spec.sweep import Run

GIB = 1024**3

# Full-size SDXL base 1.0 configurations (benchmarks/sdxl.py builds the model from these), used when
# model.pretrained is the hub model and no local copy of its configs is at hand.
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048, "use_linear_projection": True, "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
}  # fmt: skip
SDXL_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "norm_num_groups": 32, "sample_size": 1024,
    "scaling_factor": 0.13025, "force_upcast": True,
}  # fmt: skip
SDXL_TEXT: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768,
}  # fmt: skip
SDXL_TEXT_2: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
    "num_attention_heads": 20, "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 1280,
}  # fmt: skip

#: Assumed model-FLOPs utilisation of a training step (LoRA SDXL steps at batch 1-4 reach 30-50 % on H100s).
MFU = 0.40
RUNTIME_GPU = 1.5 * GIB  # CUDA context, cuBLAS workspaces, the caching allocator's slack
RUNTIME_CPU = 0.6 * GIB  # imports of torch, diffusers, transformers, accelerate, peft, deepspeed: 0.4 GiB
# measured; the rest for tokenizers, thread pools and allocator arenas
DEEPSPEED_BUCKET = 500_000_000  # DeepSpeed's default reduce_bucket_size, in elements (the spec sets none)

# FLOPs of one sample at 1024 x 1024 (latent 128 x 128), full-size SDXL, ml-probe.md section 8.
UNET_FORWARD = 6.761e12
UNET_ATTENTION_SHARE = 0.116  # the bmm / attention core, which grows with the square of the pixel count
UNET_LORA_TRAIN = 14.188e12  # forward + backward with LoRA adapters (2.09 x the forward)
VAE_ENCODE = 4.879e12
TEXT_FORWARD = {"text_encoder": 13.3e9, "text_encoder_2": 97.9e9}  # one 77-token chunk
TRAIN_OVER_FORWARD = UNET_LORA_TRAIN / UNET_FORWARD


@dataclass(frozen=True)
class Gpu:
    name: str
    bf16_tflops: float  # dense fp16/bf16 tensor-core peak
    fp32_tflops: float  # dense TF32 (or plain fp32) peak, for mixed_precision 'no'
    memory_gib: float
    bf16: bool = True


GPUS: dict[str, Gpu] = {
    "h100": Gpu("H100 SXM", 989, 494, 80),
    "h200": Gpu("H200", 989, 494, 141),
    "a100": Gpu("A100", 312, 156, 80),
    "l40s": Gpu("L40S", 362, 183, 48),
    "a40": Gpu("A40", 150, 75, 48),
    "a10": Gpu("A10", 125, 62.5, 24),
    "l4": Gpu("L4", 121, 60, 24),
    "v100": Gpu("V100", 125, 15.7, 32, bf16=False),
}


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of one rank, in bytes per part: GPU memory, or resident memory for a CPU run."""

    frozen_weights: int
    adapters: int
    gradients: int
    optimizer: int
    activations: int
    latent_cache: int
    runtime: int
    #: CPU runs only: how far loading the model exceeds the training footprint. load_parts reads every part in
    #: fp32 (with the largest part's file still in memory while it is filled, or one image's VAE encoding while
    #: the latent cache fills) before training casts the weights to the compute dtype: the peak resident memory
    #: of the process is the larger of the two phases. 0 on a GPU, whose memory never holds the fp32 copy.
    loading: int = 0
    #: LoRA parameters trained (all parts), for the table.
    adapter_params: int = 0
    #: Frozen parameters (UNet + text encoders + VAE), for the table.
    frozen_params: int = 0
    device: str = "gpu"
    notes: tuple[str, ...] = field(default=())

    def parts(self) -> dict[str, int]:
        names = (
            "frozen_weights",
            "adapters",
            "gradients",
            "optimizer",
            "activations",
            "latent_cache",
            "runtime",
            "loading",
        )
        return {name: getattr(self, name) for name in names}

    @property
    def total(self) -> int:
        return sum(self.parts().values())

    @property
    def total_gib(self) -> float:
        return self.total / GIB

    @property
    def training_gib(self) -> float:
        """The footprint while training steps run (the total less the loading surplus)."""
        return (self.total - self.loading) / GIB


# --------------------------------------------------------------------------------------------
# The models, on the meta device


def _is_hub_sdxl(pretrained: str) -> bool:
    return pretrained == SDXL_BASE and not Path(pretrained).is_dir()


def _configs(spec: ExperimentSpec) -> dict[str, dict[str, Any]]:
    """Each part's config: the model folder's config.json files, or full-size SDXL's for the hub model."""
    folder = Path(spec.model.pretrained)
    if not folder.is_dir():
        if not _is_hub_sdxl(spec.model.pretrained):
            raise FileNotFoundError(
                f"model.pretrained={spec.model.pretrained!r} is neither a local folder nor {SDXL_BASE}: its "
                "configs are needed to count its parameters"
            )
        return {"unet": SDXL_UNET, "vae": SDXL_VAE, "text_encoder": SDXL_TEXT, "text_encoder_2": SDXL_TEXT_2}
    configs = {part: json.loads((folder / part / "config.json").read_text()) for part in ("unet", "vae",
               "text_encoder", "text_encoder_2")}  # fmt: skip
    if spec.model.vae and Path(spec.model.vae).is_dir():
        configs["vae"] = json.loads((Path(spec.model.vae) / "config.json").read_text())
    return configs


def _freeze(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=list)


@functools.lru_cache(maxsize=8)
def _build(part: str, config_json: str) -> Any:
    """One part with no storage: parameters and buffers on the meta device (accelerate's init_empty_weights)."""
    from accelerate import init_empty_weights

    config = {k: v for k, v in json.loads(config_json).items() if not k.startswith("_")}
    with init_empty_weights(include_buffers=True):
        if part == "unet":
            from diffusers import UNet2DConditionModel

            return UNet2DConditionModel.from_config(config)
        if part == "vae":
            from diffusers import AutoencoderKL

            return AutoencoderKL.from_config(config)
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        keep = set(CLIPTextConfig().to_dict())
        text_config = CLIPTextConfig(**{k: v for k, v in config.items() if k in keep})
        model_class = CLIPTextModel if part == "text_encoder" else CLIPTextModelWithProjection
        return model_class(text_config)


def _parts(spec: ExperimentSpec) -> dict[str, Any]:
    return {part: _build(part, _freeze(config)) for part, config in _configs(spec).items()}


def _lora_params(module: Any, part: str, spec: ExperimentSpec) -> int:
    """LoRA parameters that training adds to ``part`` (the modules chosen as cover_hpc.model.lora chooses them)."""
    import torch

    from cover_hpc.model.lora import target_names

    skip = None
    if part == "text_encoder":  # as add_adapters: the first encoder's last layer gets none
        skip = re.compile(rf"(^|\.)encoder\.layers\.{module.config.num_hidden_layers - 1}\.")
    modules = dict(module.named_modules())
    rank, total = spec.lora.rank, 0
    for name in target_names(module, getattr(spec.lora, f"{part}_targets"), skip):
        child = modules[name]
        if isinstance(child, torch.nn.Conv2d):
            kernel = child.kernel_size[0] * child.kernel_size[1]
            total += rank * child.in_channels * kernel + rank * child.out_channels
            out = child.out_channels
        else:
            total += rank * (child.in_features + child.out_features)
            out = child.out_features
        total += out if spec.lora.dora else 0
    return total


def _read_surplus(spec: ExperimentSpec, part: str, module: Any) -> int:
    """Bytes a part's weight file adds while from_pretrained fills the fp32 model from it: a half-precision file
    (the largest of the spec's variant in a local folder; the hub's fp16 variant) stays in memory beside the fp32
    copies until the part is loaded; a fp32 file's tensors become the parameters themselves (no surplus)."""
    variant = spec.model.variant
    fp32 = sum(p.numel() for p in module.parameters()) * 4
    folder = Path(spec.model.vae) if part == "vae" and spec.model.vae else Path(spec.model.pretrained) / part
    files = [path for path in folder.glob("*.safetensors") if (f".{variant}." in path.name if variant
             else path.name.count(".") == 1)] if folder.is_dir() else []  # fmt: skip
    stored = sum(path.stat().st_size for path in files) if files else fp32 // (2 if variant == "fp16" else 1)
    largest = max((path.stat().st_size for path in files), default=stored)
    return largest if stored < 0.75 * fp32 else 0


# --------------------------------------------------------------------------------------------
# Activations: tensors saved for backward, counted on the meta device


class _Saved:
    """Bytes of the distinct storages saved for backward while active, parameters excluded."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.seen: set[int] = set()
        self.keep: list[Any] = []  # holds the tensors so that no storage key is reused by another
        self.bytes = 0
        self.largest = 0

    def pack(self, tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self.exclude and key not in self.seen:
            self.seen.add(key)
            self.keep.append(tensor)
            self.bytes += storage.nbytes()
            self.largest = max(self.largest, storage.nbytes())
        return tensor

    @contextlib.contextmanager
    def active(self) -> Iterator[_Saved]:
        import torch

        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor):
            yield self


class _FusedAttention:
    """scaled_dot_product_attention as a fused kernel keeps it for backward: q, k, v and the output."""

    @staticmethod
    def function() -> Callable[..., Any]:
        import torch

        class Attention(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, query: Any, key: Any, value: Any) -> Any:
                out = query.new_empty((*query.shape[:-1], value.shape[-1]))
                ctx.save_for_backward(query, key, value, out)
                return out

            @staticmethod
            def backward(ctx: Any, grad: Any) -> Any:  # pragma: no cover - never run
                raise NotImplementedError

        def attention(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
            return Attention.apply(query, key, value)

        return attention


@dataclass(frozen=True)
class _Count:
    kept: int  # bytes held from forward to backward
    largest: int  # the largest single saved storage


def _count(module: Any, run: Callable[[], Any], checkpointing: bool) -> _Count:
    """Saved-for-backward bytes of ``run()`` (a forward of ``module``), with or without its checkpointing."""
    from unittest import mock

    import torch

    params = {p.untyped_storage()._cdata for p in module.parameters()}
    outer = _Saved(params)
    blocks: list[_Saved] = []

    def checkpoint(function: Any, *args: Any, **kwargs: Any) -> Any:
        for value in [*args, *kwargs.values()]:  # the checkpoint keeps its inputs until backward
            if isinstance(value, torch.Tensor) and value.requires_grad:
                outer.pack(value)
        inner = _Saved(params)
        blocks.append(inner)
        with inner.active():
            return function(*args, **kwargs)

    def set_checkpointing(enabled: bool) -> None:
        for child in module.modules():
            if hasattr(child, "gradient_checkpointing"):
                child.gradient_checkpointing = enabled
                child._gradient_checkpointing_func = checkpoint

    set_checkpointing(checkpointing)
    module.train()
    try:
        attention = _FusedAttention.function()
        with mock.patch("torch.nn.functional.scaled_dot_product_attention", attention), outer.active():
            run()
    finally:
        set_checkpointing(False)
    largest_block = max((block.bytes for block in blocks), default=0)
    largest = max([outer.largest, *(block.largest for block in blocks)])
    return _Count(outer.bytes + largest_block, largest)


@functools.lru_cache(maxsize=32)
def _unet_activations(config_json: str, latent: tuple[int, int], dtype_name: str, checkpointing: bool) -> _Count:
    """One sample's UNet forward at latent size ``latent``, trained through LoRA (the input needs a gradient)."""
    import torch

    dtype = getattr(torch, dtype_name)
    unet = _build("unet", config_json).to(dtype)
    config = unet.config
    meta = {"device": "meta", "dtype": dtype}
    sample = torch.empty((1, config.in_channels, *latent), **meta, requires_grad=True)
    context = torch.empty((1, 77, config.cross_attention_dim), **meta)
    added: dict[str, Any] = {}
    if config.addition_embed_type == "text_time":
        text_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        added = {"text_embeds": torch.empty((1, text_dim), **meta), "time_ids": torch.empty((1, 6), **meta)}
    timestep = torch.zeros(1, dtype=torch.long, device="meta")
    return _count(unet, lambda: unet(sample, timestep, context, added_cond_kwargs=added), checkpointing)


@functools.lru_cache(maxsize=32)
def _text_activations(part: str, config_json: str, chunks: int, dtype_name: str, checkpointing: bool) -> _Count:
    """One caption's forward through a trained text encoder: ``chunks`` sequences of 77 tokens."""
    import torch

    encoder = _build(part, config_json).to(getattr(torch, dtype_name))
    ids = torch.zeros((chunks, encoder.config.max_position_embeddings), dtype=torch.long, device="meta")
    embeddings = encoder.get_input_embeddings()
    # the adapters make the hidden states need a gradient; the frozen embedding lookup alone would not
    hook = embeddings.register_forward_hook(lambda module, args, out: out.detach().requires_grad_(True))
    try:
        return _count(encoder, lambda: encoder(ids, output_hidden_states=True), checkpointing)
    finally:
        hook.remove()


# --------------------------------------------------------------------------------------------
# Memory


def world_size(spec: ExperimentSpec) -> int:
    per_node = spec.slurm.gpus_per_node or spec.slurm.tasks_per_node or 1
    return spec.slurm.nodes * per_node


def _dtype_name(spec: ExperimentSpec) -> str:
    return {"fp16": "float16", "bf16": "bfloat16"}.get(spec.train.mixed_precision, "float32")


def _chunks(spec: ExperimentSpec) -> int:
    from cover_hpc.model.encoding import num_chunks

    return num_chunks(spec.data.max_caption_tokens)


def estimate_memory(spec: ExperimentSpec) -> MemoryEstimate:
    """Peak memory of one rank of a run of ``spec`` (GPU memory; the process's resident memory when
    slurm.gpus_per_node is 0). See the module's docstring for how each part is reckoned."""
    configs = _configs(spec)
    parts = _parts(spec)
    half = spec.train.mixed_precision in ("fp16", "bf16")
    weight_bytes = 2 if half else 4
    deepspeed = spec.distributed.backend == "deepspeed"
    zero = spec.distributed.zero_stage if deepspeed else 0
    ranks = world_size(spec)
    trained = [part for part in ("unet", "text_encoder", "text_encoder_2") if part in spec.lora.parts]
    notes: list[str] = []

    frozen_params = sum(p.numel() for p in parts["vae"].parameters())
    frozen_weights = 0
    for part in ("unet", "text_encoder", "text_encoder_2"):
        count = sum(p.numel() for p in parts[part].parameters())
        frozen_params += count
        frozen_weights += count * weight_bytes
    if not spec.data.cache_latents:
        frozen_weights += sum(p.numel() for p in parts["vae"].parameters()) * 4  # fp32 (force_upcast)

    adapter_params = sum(_lora_params(parts[part], part, spec) for part in trained)
    # DeepSpeed casts the whole module (adapters too) to the compute dtype and keeps a fp32 master copy
    adapter_bytes = weight_bytes if deepspeed and half else 4
    master = 4 if deepspeed and half else 0
    adapters = adapter_params * (adapter_bytes + (4 if spec.train.ema else 0))
    grad_share = 1 / ranks if zero >= 2 else 1.0
    gradients = adapter_params * adapter_bytes * grad_share
    gpu = spec.slurm.gpus_per_node > 0
    if zero == 2:  # contiguous_gradients' reduce bucket: allocated whole on a GPU, touched as filled on the CPU
        gradients += (DEEPSPEED_BUCKET if gpu else min(DEEPSPEED_BUCKET, adapter_params)) * adapter_bytes
    if not deepspeed and ranks > 1:
        gradients += adapter_params * 4  # DDP's bucket copy
    optimizer_share = 1 / ranks if zero >= 1 else 1.0
    optimizer = adapter_params * (4 + 4 + master + (4 if master else 0)) * optimizer_share
    if zero >= 1:
        notes.append(f"ZeRO-{zero}: optimiser states split over {ranks} rank(s)")

    height, width = spec.data.size
    latent = (height // 8, width // 8)
    dtype_name = _dtype_name(spec)
    checkpointing = spec.train.gradient_checkpointing
    unet = _unet_activations(_freeze(configs["unet"]), latent, dtype_name, checkpointing)
    counts = [unet]
    for part in trained:
        if part != "unet":
            counts.append(_text_activations(part, _freeze(configs[part]), _chunks(spec), dtype_name, checkpointing))
    per_sample = sum(count.kept for count in counts) + 3 * max(count.largest for count in counts)
    activations = spec.train.batch_size * per_sample

    latent_bytes = 2 * 4 * latent[0] * latent[1] * 4
    if spec.data.cache_latents:
        latent_cache = spec.train.batch_size * latent_bytes
    else:
        first = configs["vae"].get("block_out_channels", (128,))[0]
        latent_cache = spec.train.batch_size * 3 * first * height * width * 4
    runtime = RUNTIME_GPU if gpu else RUNTIME_CPU
    steady = frozen_weights + adapters + gradients + optimizer + activations + latent_cache + runtime
    loading = 0.0
    if not gpu:
        # load_parts reads the parts in this order, each into fp32 while its own file is held (measured: a
        # bf16 UNet's peak resident memory was its fp32 parameters + its file, 4.74 of 4.75 GiB)
        held, peak = 0, 0
        for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
            held += sum(p.numel() for p in parts[part].parameters()) * 4
            peak = max(peak, held + _read_surplus(spec, part, parts[part]))
        if spec.data.cache_latents:  # then the cache fills, one image at a time, every part still in fp32
            peak = max(peak, held + 3 * configs["vae"].get("block_out_channels", (128,))[0] * height * width * 4)
        loading = max(0.0, peak + runtime - steady)
    return MemoryEstimate(
        frozen_weights=int(frozen_weights), adapters=int(adapters), gradients=int(gradients),
        optimizer=int(optimizer), activations=int(activations), latent_cache=int(latent_cache),
        runtime=int(runtime), loading=int(loading), adapter_params=adapter_params,
        frozen_params=frozen_params, device="gpu" if gpu else "cpu", notes=tuple(notes),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Time


def gpu_kind(spec: ExperimentSpec, default: str = "h100") -> tuple[str, str]:
    """The GPU kind (a key of :data:`GPUS`) and where it came from: slurm.constraint when it names one (the
    slowest of those it names: any of them may be given), else ``default`` (the --gpu option)."""
    named = [token for token in re.split(r"[^a-z0-9]+", (spec.slurm.constraint or "").lower()) if token in GPUS]
    if named:
        slowest = min(named, key=lambda key: GPUS[key].bf16_tflops)
        return slowest, f"slurm.constraint={spec.slurm.constraint!r}"
    return default, "--gpu"


def sample_flops(spec: ExperimentSpec) -> float:
    """FLOPs of one training sample (forward + backward), full-size SDXL figures scaled by the pixel count."""
    height, width = spec.data.size
    scale = height * width / 1024**2
    unet_forward = UNET_FORWARD * ((1 - UNET_ATTENTION_SHARE) * scale + UNET_ATTENTION_SHARE * scale**2)
    flops = unet_forward * TRAIN_OVER_FORWARD
    if spec.train.gradient_checkpointing:
        flops += unet_forward  # the forward is run again in backward
    if not spec.data.cache_latents:
        flops += VAE_ENCODE * scale
    trained = set(spec.lora.parts)
    text_cached = spec.data.cache_latents and not trained & {"text_encoder", "text_encoder_2"}
    for part, forward in TEXT_FORWARD.items():
        if text_cached:
            continue
        flops += forward * _chunks(spec) * (TRAIN_OVER_FORWARD if part in trained else 1)
    return flops


def dataset_size(spec: ExperimentSpec) -> int | None:
    """Rows of the training folder's metadata, or None where it cannot be read here."""
    from cover_hpc.store.data import load_metadata

    try:
        return len(load_metadata(Path(spec.data.train_dir)).rows)
    except (OSError, ValueError):
        return None


def total_steps(spec: ExperimentSpec, images: int | None = None) -> tuple[int | None, str]:
    """Optimizer steps of a run and how they were found (as the training's EpochBatchSampler counts them);
    ``images`` stands in for the training folder's size where it cannot be read here."""
    if spec.train.max_steps:
        return spec.train.max_steps, "train.max_steps"
    size = dataset_size(spec) or images
    if size is None:
        return None, f"{spec.data.train_dir} not readable here; set train.max_steps or give --train-images"
    per_rank = size // spec.train.batch_size // world_size(spec)
    per_epoch = (per_rank - per_rank % spec.train.grad_accum) // spec.train.grad_accum
    return spec.train.epochs * per_epoch, f"{spec.train.epochs} epochs x {per_epoch} steps of {size} images"


@dataclass(frozen=True)
class RunEstimate:
    run_id: str
    memory: MemoryEstimate
    gpu: str
    gpu_source: str
    step_s: float | None
    steps: int | None
    steps_source: str
    hours: float | None
    gpu_hours: float | None
    warnings: tuple[str, ...]


def estimate_run(run: Run, default_gpu: str = "h100", images: int | None = None) -> RunEstimate:
    spec = run.spec
    memory = estimate_memory(spec)
    kind, source = gpu_kind(spec, default_gpu)
    gpu = GPUS[kind]
    ranks = world_size(spec)
    steps, steps_source = total_steps(spec, images)
    step_s = hours = gpu_hours = None
    if memory.device == "gpu":
        half = spec.train.mixed_precision != "no"
        peak = (gpu.bf16_tflops if half else gpu.fp32_tflops) * 1e12
        step_s = sample_flops(spec) * spec.train.batch_size * spec.train.grad_accum / (peak * MFU)
        if steps is not None:
            hours = steps * step_s / 3600
            gpu_hours = hours * ranks
    return RunEstimate(run.run_id, memory, kind, source, step_s, steps, steps_source, hours, gpu_hours,
                       tuple(memory_warnings(spec, memory, kind, step_s)))  # fmt: skip


def memory_warnings(spec: ExperimentSpec, memory: MemoryEstimate, kind: str, step_s: float | None) -> list[str]:
    found = []
    gpu = GPUS[kind]
    total = memory.total_gib
    if memory.device == "gpu" and total > gpu.memory_gib:
        found.append(f"the estimated {total:.1f} GiB per rank exceeds the {gpu.name}'s {gpu.memory_gib:g} GiB")
    if memory.device == "gpu" and spec.train.mixed_precision == "bf16" and not gpu.bf16:
        found.append(f"the {gpu.name} has no bf16; use train.mixed_precision=fp16")
    host = (memory.total if memory.device == "cpu" else memory.frozen_params * 4) / GIB
    what = "the estimated resident memory" if memory.device == "cpu" else "loading the model in fp32 needs"
    if host > spec.slurm.mem_per_gpu_gb:
        found.append(f"slurm.mem_per_gpu_gb={spec.slurm.mem_per_gpu_gb} is less than {what} ({host:.1f} GiB)")
    if step_s is not None:
        interval_min = spec.train.checkpoint_every * step_s / 60
        if spec.slurm.time_min < interval_min:
            found.append(
                f"slurm.time_min={spec.slurm.time_min} is shorter than one checkpoint interval "
                f"(train.checkpoint_every={spec.train.checkpoint_every} steps, about {interval_min:.0f} min): "
                "a job would end before its first checkpoint"
            )
    return found


def _gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def render_resources(
    spec: ExperimentSpec, runs: Sequence[Run], default_gpu: str = "h100", images: int | None = None
) -> str:
    """The table ``cover-hpc plan --resources`` prints: one row per run (or search trial)."""
    estimates = [estimate_run(run, default_gpu, images) for run in runs]
    header = ["run_id", "weights", "adapters", "grads", "optim", "activ", "latents", "runtime", "loading", "total GiB",
              "step s", "steps", "hours", "GPU-h"]  # fmt: skip
    rows = []
    for each in estimates:
        memory = each.memory
        rows.append([
            each.run_id, *(_gib(value) for value in memory.parts().values()), _gib(memory.total),
            "-" if each.step_s is None else f"{each.step_s:.2f}", "?" if each.steps is None else str(each.steps),
            "-" if each.hours is None else f"{each.hours:.1f}",
            "-" if each.gpu_hours is None else f"{each.gpu_hours:.1f}",
        ])  # fmt: skip
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in [header, *rows]]  # fmt: skip
    first = estimates[0] if estimates else None
    if first is not None:
        memory, gpu = first.memory, GPUS[first.gpu]
        where = "GPU memory per rank" if memory.device == "gpu" else "resident memory per process (CPU run)"
        lines.append(f"\nmemory: {where}, GiB; {memory.frozen_params / 1e9:.3f} B frozen parameters, "
                     f"{memory.adapter_params / 1e6:.1f} M LoRA parameters (first run)")  # fmt: skip
        if memory.device == "gpu":
            peak = f"{gpu.name} {gpu.bf16_tflops:g} TFLOPS dense x {MFU:.0%} MFU"
            lines.append(f"step time: {sample_flops(spec) / 1e12:.1f} TFLOPs per sample / ({peak}); GPU kind from "
                         f"{first.gpu_source}")  # fmt: skip
        lines.append(f"steps: {first.steps_source}; world size {world_size(spec)}")
    spent = [each.gpu_hours for each in estimates]
    if spent and all(hours is not None for hours in spent):
        what = "search's trials (all trained to the end)" if spec.sweep.search.sampler != "none" else "sweep"
        lines.append(f"GPU-hours of the {what}: {sum(h for h in spent if h is not None):.1f} over {len(runs)} run(s)")
    for each in estimates:
        lines.extend(f"warning: {each.run_id}: {text}" for text in each.warnings)
    return "\n".join(lines)


def resource_runs(spec: ExperimentSpec, runs: Sequence[Run]) -> list[Run]:
    """The runs to estimate: a grid's runs, a random search's planned trials, or for a TPE search (whose
    trials are chosen as it goes) the base spec once per trial."""
    if spec.sweep.search.sampler == "none":
        return list(runs)
    from cover_hpc.orchestrate import search

    planned = search.planned_trials(spec)
    if planned is not None:
        return planned
    return [Run(f"trial-{index}", {}, spec) for index in range(spec.sweep.search.trials)]


def estimates_json(runs: Sequence[Run], default_gpu: str = "h100", images: int | None = None) -> list[dict[str, Any]]:
    """``plan --resources --json``: each run's parts in GiB, step seconds, steps, hours, GPU-hours, warnings."""
    found = []
    for run in runs:
        each = estimate_run(run, default_gpu, images)
        found.append({
            "run_id": each.run_id, "device": each.memory.device,
            "memory_gib": {name: round(value / GIB, 3) for name, value in each.memory.parts().items()},
            "total_gib": round(each.memory.total_gib, 3), "gpu": each.gpu, "step_s": each.step_s,
            "steps": each.steps, "hours": each.hours, "gpu_hours": each.gpu_hours, "warnings": list(each.warnings),
        })  # fmt: skip
    return found
