"""Models staged on the login node: the offline check against a real Hugging Face cache layout,
and ``cover-hpc fetch`` without network. (The download itself needs the hub: not tested here.)"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from cover_hpc.model.weights import ModelRef, locate, model_problems, problem, select_files, weight_files
from cover_hpc.spec.load import load_spec
from cover_hpc.spec.schema import ExperimentSpec
from cover_hpc.spec.sweep import expand

from .test_submit import cli, spec_file

PIPELINE_COMMIT = "1" * 40
CLIP_COMMIT = "2" * 40


def cache_repo(cache: Path, repo_id: str, source: Path, commit: str, refs: Sequence[str] = ("main",)) -> Path:
    """Lay ``source`` out as huggingface_hub's downloads do: ``models--org--name/`` with content in
    ``blobs/``, ``snapshots/<commit>/`` of relative symlinks to them, and ``refs/<name>`` holding the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, blob)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A cache holding org/tiny-sdxl (refs main and v1), org/tiny-clip, org/partial-sdxl (no UNet
    weights), org/tiny-openclip and org/openclip-tok (whose config names a tokenizer repo not cached)."""
    from cover_hpc.demo.tiny_clip import build_tiny_open_clip, build_tiny_transformers_clip

    tmp = tmp_path_factory.mktemp("hub")
    cache = tmp / "hub"
    cache_repo(cache, "org/tiny-sdxl", tiny_model_dir, PIPELINE_COMMIT, refs=("main", "v1"))
    cache_repo(cache, "org/tiny-clip", build_tiny_transformers_clip(tmp / "clip"), CLIP_COMMIT)
    partial = cache_repo(cache, "org/partial-sdxl", tiny_model_dir, PIPELINE_COMMIT)
    (partial / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    open_clip = build_tiny_open_clip(tmp / "open_clip")
    cache_repo(cache, "org/tiny-openclip", open_clip, CLIP_COMMIT)
    config = json.loads((open_clip / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = "org/absent-tokenizer"
    (open_clip / "open_clip_config.json").write_text(json.dumps(config))
    cache_repo(cache, "org/openclip-tok", open_clip, CLIP_COMMIT)
    return cache


def specs(*overrides: str) -> list[ExperimentSpec]:
    """The runs' specs of a spec naming the cached models, with these overrides."""
    spec = load_spec(None, ["model.pretrained=org/tiny-sdxl", "validate.clip_model=org/tiny-clip", *overrides])
    return [run.spec for run in expand(spec)]


@pytest.mark.tiny
def test_hub_ids_in_the_cache_pass_and_resolve_to_their_snapshot(hub: Path) -> None:
    assert model_problems(specs("sweep.grid.lora.rank=[4,8]"), hub) == []
    found = locate(ModelRef("model.pretrained", "org/tiny-sdxl", "pipeline"), hub)
    assert found.ok and found.path == hub / "models--org--tiny-sdxl" / "snapshots" / PIPELINE_COMMIT
    # a tag in refs/ and a commit hash resolve too; a revision the cache never saw does not
    assert model_problems(specs("model.revision=v1"), hub) == []
    assert model_problems(specs(f"model.revision={PIPELINE_COMMIT}"), hub) == []
    (absent,) = model_problems(specs("model.revision=v2"), hub)
    assert absent.key == "model.pretrained" and "'org/tiny-sdxl' (revision v2)" in absent.message
    assert (
        "neither a folder here nor in the local Hugging Face cache" in absent.message
        and "cover-hpc fetch SPEC" in absent.message
    )


@pytest.mark.tiny
def test_from_pretrained_loads_that_cache_offline(hub: Path) -> None:
    """The layout is the one the loaders read with the hub disabled (conftest sets HF_HUB_OFFLINE=1)."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPModel, CLIPProcessor

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    pipe = StableDiffusionXLPipeline.from_pretrained("org/tiny-sdxl", cache_dir=hub, revision="v1")
    assert pipe.unet.config.sample_size > 0 and pipe.tokenizer_2 is not None
    CLIPModel.from_pretrained("org/tiny-clip", cache_dir=hub)
    CLIPProcessor.from_pretrained("org/tiny-clip", cache_dir=hub)
    with pytest.raises(OSError):
        StableDiffusionXLPipeline.from_pretrained("org/tiny-sdxl", cache_dir=hub, revision="v2")


@pytest.mark.tiny
def test_partial_snapshots_and_missing_variants_are_refused(hub: Path) -> None:
    (partial,) = model_problems(specs("model.pretrained=org/partial-sdxl"), hub)
    assert "only partly in the local Hugging Face cache" in partial.message and "no unet/weights" in partial.message
    (variant,) = model_problems(specs("model.variant=fp16"), hub)  # training loads every part in the variant
    assert "unet/weights in variant 'fp16'" in variant.message and "text_encoder/weights in variant" in variant.message


@pytest.mark.tiny
def test_a_missing_model_is_refused_by_submit_and_plan_warns(
    hub: Path, tmp_path: Path, demo_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    path = spec_file(tmp_path, Path("org/missing-sdxl"), demo_data_dir,
                     sweep={"grid": {"validate.clip_model": ["org/tiny-clip", "org/missing-clip"]}})  # fmt: skip
    refused = cli("submit", str(path), "--executor", "slurm", "lora.rank=8")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "model.pretrained: 'org/missing-sdxl' is neither a folder here nor in" in refused.stderr
    assert "validate.clip_model: 'org/missing-clip' is neither" in refused.stderr  # the second run of the sweep
    assert "'org/tiny-clip'" not in refused.stderr
    assert f"network access: cover-hpc fetch {path} lora.rank=8" in refused.stderr
    assert not (tmp_path / "experiments" / "sub" / "experiment.json").exists()
    plan = cli("plan", str(path))
    assert plan.returncode == 0 and "2 runs of experiment 'sub'" in plan.stdout
    assert "cover-hpc: warning: model.pretrained: 'org/missing-sdxl' is neither" in plan.stderr
    assert f"cover-hpc fetch {path}" in plan.stderr
    dry = cli("submit", str(path), "--executor", "slurm", "--dry-run")
    assert dry.returncode == 0 and "# warning: validate.clip_model: 'org/missing-clip' is neither" in dry.stdout
    assert f"network access: cover-hpc fetch {path}" in dry.stdout
    # staged: a spec naming cached models plans without a warning
    (tmp_path / "staged").mkdir()
    staged = spec_file(
        tmp_path / "staged", Path("org/tiny-sdxl"), demo_data_dir, validate={"clip_model": "org/tiny-clip"}
    )
    result = cli("plan", str(staged))
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr


@pytest.mark.tiny
def test_open_clip_hub_models_and_the_tokenizer_repo_they_name(hub: Path) -> None:
    open_clip = ("validate.clip_backend=open_clip", "validate.clip_model=hf-hub:org/tiny-openclip")
    assert model_problems(specs(*open_clip), hub) == []
    (tokenizer,) = model_problems(specs(open_clip[0], "validate.clip_model=hf-hub:org/openclip-tok"), hub)
    assert tokenizer.key == "validate.clip_model" and "'org/absent-tokenizer' is neither" in tokenizer.message


def test_local_folders_are_checked_for_what_their_loaders_read(tmp_path: Path) -> None:
    pipeline = problem(locate(ModelRef("model.pretrained", str(tmp_path), "pipeline")))
    assert (
        pipeline.render()
        == f"model.pretrained: {str(tmp_path)!r} is not a diffusers pipeline folder (no model_index.json)"
    )
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text("{}")
    (clip / "tokenizer_config.json").write_text("{}")
    found = locate(ModelRef("validate.clip_model", str(clip), "clip"))
    assert found.missing == ("weights",) and "is not a complete clip model: missing weights" in problem(found).message
    (clip / "model.safetensors").write_bytes(b"")
    assert locate(ModelRef("validate.clip_model", str(clip), "clip")).ok
    gone = locate(ModelRef("validate.clip_model", f"local-dir:{tmp_path / 'nope'}", "open_clip"))
    assert gone.path is None and "does not exist" in gone.missing[0]


@pytest.mark.tiny
def test_fetch_without_network_is_a_clear_error(hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("model: {pretrained: org/tiny-sdxl}\nvalidate: {clip_model: org/tiny-clip}\n")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    ready = cli("fetch", str(spec))  # all in the cache: nothing to download, no network needed
    assert ready.returncode == 0, ready.stderr
    assert f"model.pretrained: 'org/tiny-sdxl' -> {hub / 'models--org--tiny-sdxl' / 'snapshots'}" in ready.stdout
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    failed = cli("fetch", str(spec), "validate.clip_model=org/not-cached", timeout=120)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert (
        "validate.clip_model: cannot download 'org/not-cached' from http://127.0.0.1:9: ConnectError" in failed.stderr
    )
    assert "model.pretrained: 'org/tiny-sdxl' ->" in failed.stdout  # the cached one is still reported
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = cli("fetch", str(spec), "validate.clip_model=org/not-cached", timeout=120)
    assert offline.returncode == 1 and "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set" in offline.stderr


# What fetch downloads: only the files the loaders read, from the repos' real file lists.

SDXL_BASE_FILES = [
    ".gitattributes", "01.png", "LICENSE.md", "README.md", "model_index.json", "sd_xl_base_1.0.safetensors",
    "sd_xl_base_1.0_0.9vae.safetensors", "sd_xl_offset_example-lora_1.0.safetensors", "scheduler/scheduler_config.json",
    *(f"{enc}/{f}" for enc in ("text_encoder", "text_encoder_2") for f in (
        "config.json", "flax_model.msgpack", "model.fp16.safetensors", "model.onnx", "model.safetensors",
        "openvino_model.bin", "openvino_model.xml")),
    *(f"{tok}/{f}" for tok in ("tokenizer", "tokenizer_2")
      for f in ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")),
    "unet/config.json", "unet/diffusion_flax_model.msgpack", "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.safetensors", "unet/model.onnx", "unet/model.onnx_data", "unet/openvino_model.bin",
    *(f"{vae}/{f}" for vae in ("vae", "vae_1_0") for f in (
        "config.json", "diffusion_flax_model.msgpack", "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.safetensors")),
    "vae_decoder/config.json", "vae_decoder/model.onnx", "vae_encoder/config.json", "vae_encoder/model.onnx",
]  # fmt: skip
SDXL_INDEX = {"_class_name": "StableDiffusionXLPipeline", "feature_extractor": [None, None],
              "image_encoder": [None, None], "scheduler": ["diffusers", "EulerDiscreteScheduler"],
              "text_encoder": ["transformers", "CLIPTextModel"],
              "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
              "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
              "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}  # fmt: skip


def test_fetch_selects_one_set_of_weights_in_the_variant() -> None:
    ref = ModelRef("model.pretrained", "stabilityai/stable-diffusion-xl-base-1.0", "pipeline", variant="fp16")
    chosen = select_files(ref, SDXL_BASE_FILES, SDXL_INDEX)
    tokenizers = [f for f in SDXL_BASE_FILES if f.startswith("tokenizer")]
    assert sorted(chosen) == sorted([
        "model_index.json", "scheduler/scheduler_config.json", *tokenizers,
        "text_encoder/config.json", "text_encoder/model.fp16.safetensors",
        "text_encoder_2/config.json", "text_encoder_2/model.fp16.safetensors",
        "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors",
    ])  # fmt: skip
    full = select_files(ModelRef(ref.key, ref.name, "pipeline"), SDXL_BASE_FILES, SDXL_INDEX)
    assert "unet/diffusion_pytorch_model.safetensors" in full and not any(".fp16." in f for f in full)
    clip = [".gitattributes", "config.json", "flax_model.msgpack", "merges.txt", "preprocessor_config.json",
            "pytorch_model.bin", "special_tokens_map.json", "tf_model.h5", "tokenizer.json", "tokenizer_config.json",
            "vocab.json"]  # fmt: skip
    clip_ref = ModelRef("validate.clip_model", "openai/clip-vit-base-patch16", "clip")
    assert "pytorch_model.bin" in select_files(clip_ref, clip) and "tf_model.h5" not in select_files(clip_ref, clip)
    assert "pytorch_model.bin" not in select_files(clip_ref, [*clip, "model.safetensors"])  # safetensors first
    open_clip = ["README.md", "open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    assert select_files(ModelRef("validate.clip_model", "hf-hub:laion/x", "open_clip"), open_clip) == [
        "open_clip_config.json", "open_clip_model.safetensors"]  # fmt: skip


def test_weight_files_follow_the_variant_and_shard_names() -> None:
    names = ["diffusion_pytorch_model.fp16-00001-of-00002.safetensors", "diffusion_pytorch_model.safetensors",
             "diffusion_pytorch_model.safetensors.index.fp16.json", "diffusion_flax_model.msgpack"]  # fmt: skip
    assert weight_files(names, "fp16") == [names[0], names[2]]
    assert weight_files(names, None) == ["diffusion_pytorch_model.safetensors"]
    assert weight_files(["model-00001-of-00002.safetensors", "model.safetensors.index.json"], None) == [
        "model-00001-of-00002.safetensors", "model.safetensors.index.json"]  # fmt: skip
