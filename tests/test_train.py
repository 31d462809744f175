"""The training stage on the tiny model and demo covers, in real processes (1, 2 and DeepSpeed).

Every run is a subprocess through the production entry points (``cover-hpc train`` or
``jobs/train.py`` under torchrun), because accelerate's state is per process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from cover_hpc.spec.load import load_spec
from cover_hpc.spec.sweep import expand
from cover_hpc.store.runs import prepare_run

from .conftest import REPO

pytestmark = [pytest.mark.tiny, pytest.mark.slow]


def write_spec(tmp: Path, model: Path, data_dir: Path, **sections: dict[str, Any]) -> Path:
    spec: dict[str, Any] = {
        "name": "t",
        "output_dir": str(tmp / "experiments"),
        "model": {"pretrained": str(model)},
        "data": {"train_dir": str(data_dir / "train_set"), "test_dir": str(data_dir / "test_set"), "size": [64, 64],
                 "num_workers": 0, "cache_dir": str(tmp / "cache")},
        "lora": {"rank": 4, "alpha": 4},
        "optim": {"lr_unet": 1e-3, "lr_text_encoder": 5e-4, "lr_text_encoder_2": 2e-4, "warmup_steps": 2},
        "train": {"batch_size": 4, "max_steps": 12, "mixed_precision": "no", "checkpoint_every": 3,
                  "checkpoints_kept": 3, "seed": 1},
    }  # fmt: skip
    for section, values in sections.items():
        spec.setdefault(section, {}).update(values)
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "spec.yaml"
    path.write_text(json.dumps(spec))
    return path


def run_dir(spec_path: Path) -> Path:
    spec = load_spec(spec_path)
    (run,) = expand(spec)
    return prepare_run(spec, run).root


def env_for(threads: int) -> dict[str, str]:
    return {**os.environ, "COVER_HPC_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def train(run: Path, procs: int = 1, stop_after: int | None = None) -> subprocess.CompletedProcess[str]:
    args = [str(REPO / "jobs" / "train.py"), str(run)]
    if stop_after is not None:
        args += ["--stop-after", str(stop_after)]
    if procs > 1:
        from cover_hpc.runtime.env import free_port

        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", str(free_port())]
        args = launcher + args
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=600, env=env_for(2 // procs), cwd=REPO
    )
    if result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "train" / "pytorch_lora_weights.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def resume_equivalence(
    tmp: Path, model: Path, data: Path, procs: int, /, **sections: dict[str, Any]
) -> tuple[Path, Path]:
    """Train a run in one start and another stopped at step 7 and resumed; returns both run folders."""
    whole = run_dir(write_spec(tmp / "whole", model, data, **sections))
    train(whole, procs)
    split = run_dir(write_spec(tmp / "split", model, data, **sections))
    stopped = train(split, procs, stop_after=7)  # mid-epoch: 5 batches per rank per epoch
    assert "training stopped at step 7/12" in stopped.stdout
    assert not (split / "train" / "train_result.json").exists()
    progress = json.loads((split / "train/checkpoints/step-00000007/progress.json").read_text())
    assert (progress["step"], progress["epoch"], progress["batch_in_epoch"]) == (7, 1, 2)
    train(split, procs)
    assert losses(split) == losses(whole)  # bit-identical, step by step
    assert len(losses(whole)) == 12
    assert_same_weights(weights(split), weights(whole))
    result = json.loads((split / "train" / "train_result.json").read_text())
    assert result["requeues"] == 1 and result["steps"] == 12 and result["world_size"] == procs
    return whole, split


def test_resume_is_exact_with_ema_and_dora(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    """train.ema: the EMA's weights are in every checkpoint, so a resumed run averages the same
    weights bit for bit; the EMA LoRA (with lora.dora's magnitudes) is written in train/ema/ in both
    formats, and differs from the run's own LoRA."""
    whole, split = resume_equivalence(
        tmp_path, tiny_model_dir, demo_data_dir, 1,
        lora={"dora": True}, train={"ema": True, "ema_decay": 0.9, "ema_warmup_steps": 4},
    )  # fmt: skip
    assert (split / "train/checkpoints/step-00000007/ema_state.safetensors").is_file()
    ema_whole = load_file(whole / "train" / "ema" / "pytorch_lora_weights.safetensors")
    ema_split = load_file(split / "train" / "ema" / "pytorch_lora_weights.safetensors")
    assert_same_weights(ema_split, ema_whole)
    assert ema_whole.keys() == weights(whole).keys()
    assert any(k.endswith(".lora_magnitude_vector.weight") for k in ema_whole)
    assert not all(torch.equal(ema_whole[k], weights(whole)[k]) for k in ema_whole)
    kohya = load_file(whole / "train" / "ema" / "lora_kohya.safetensors")
    assert any(k.endswith(".dora_scale") for k in kohya)


def test_resume_is_exact_two_processes_ddp_with_ema_and_dora(
    tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    """Every rank keeps the EMA alike; rank 0 saves it in the checkpoint and every rank loads it back."""
    whole, split = resume_equivalence(
        tmp_path, tiny_model_dir, demo_data_dir, 2,
        lora={"dora": True}, train={"batch_size": 2, "ema": True, "ema_decay": 0.9},
    )  # fmt: skip
    ema = "train/ema/pytorch_lora_weights.safetensors"
    assert_same_weights(load_file(split / ema), load_file(whole / ema))


def test_resume_is_exact_single_process(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    resume_equivalence(tmp_path, tiny_model_dir, demo_data_dir, 1)


def test_resume_is_exact_two_processes_ddp(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    resume_equivalence(tmp_path, tiny_model_dir, demo_data_dir, 2, train={"batch_size": 2})


def test_resume_is_exact_deepspeed_zero2(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    resume_equivalence(
        tmp_path, tiny_model_dir, demo_data_dir, 2, train={"batch_size": 2},
        distributed={"backend": "deepspeed", "zero_stage": 2},
    )  # fmt: skip


def test_loss_falls_on_demo_covers(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    lr = {"lr_unet": 1e-2, "lr_text_encoder": 1e-2, "lr_text_encoder_2": 1e-2, "warmup_steps": 5}
    run = run_dir(write_spec(tmp_path, tiny_model_dir, demo_data_dir, optim=lr,
                             train={"max_steps": 60, "checkpoint_every": 100}))  # fmt: skip
    train(run)
    curve = losses(run)
    first, last = sum(curve[:15]) / 15, sum(curve[-15:]) / 15
    assert last < 0.95 * first, (first, last)


def test_half_written_checkpoint_is_passed_over(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    whole = run_dir(write_spec(tmp_path / "whole", tiny_model_dir, demo_data_dir))
    train(whole)
    run = run_dir(write_spec(tmp_path / "run", tiny_model_dir, demo_data_dir))
    train(run, stop_after=8)
    checkpoints = run / "train" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000003", "step-00000006", "step-00000008"]
    state = checkpoints / "step-00000008" / "lora_state.safetensors"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # corrupt the newest
    shutil.copytree(checkpoints / "step-00000006", checkpoints / ".tmp-step-00000009")  # and a half-written one
    (checkpoints / ".tmp-step-00000009" / "COMPLETE").unlink()
    result = train(run)
    assert "passing over checkpoint" in result.stderr and "step-00000008" in result.stderr
    assert "resumed from" in result.stderr and "step-00000006" in result.stderr
    assert losses(run) == losses(whole)
    assert_same_weights(weights(run), weights(whole))


def test_lora_loads_into_all_three_models_and_changes_the_image(
    tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    from diffusers import StableDiffusionXLPipeline

    from cover_hpc.model.lora import adapted_modules, verify_lora_file

    run = run_dir(write_spec(tmp_path, tiny_model_dir, demo_data_dir, train={"max_steps": 6}))
    train(run)
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)

    def generate() -> torch.Tensor:
        image = pipe("a red fantasy cover", num_inference_steps=4, height=64, width=64,
                     generator=torch.Generator().manual_seed(0), output_type="pt").images  # fmt: skip
        return torch.as_tensor(image)

    before = generate()
    lora_file = run / "train" / "pytorch_lora_weights.safetensors"
    keys = load_file(lora_file).keys()
    expected: dict[str, set[str]] = {}
    for part in ("unet", "text_encoder", "text_encoder_2"):
        names = {k[len(part) + 1 :].rsplit(".lora_", 1)[0] for k in keys if k.startswith(f"{part}.")}
        assert names, part
        expected[part] = names
    assert len(expected["unet"]) == 72
    assert not any(".lora.down" in k for k in keys)  # one key format only
    assert all("layers.2." not in name for name in expected["text_encoder"])  # te1's unused last layer
    verify_lora_file(pipe, lora_file, expected)
    pipe.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name, adapter_name="cover")
    for part, names in expected.items():
        assert adapted_modules(getattr(pipe, part)) >= names
    after = generate()
    assert (after - before).abs().max() > 1e-3


def test_kohya_export_key_names(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    from cover_hpc.model.lora import adapted_modules

    run = run_dir(write_spec(tmp_path, tiny_model_dir, demo_data_dir, train={"max_steps": 3}, lora={"alpha": 8}))
    train(run)
    kohya = load_file(run / "train" / "lora_kohya.safetensors")
    modules = {key.rsplit(".", 2)[0] if "lora_" in key.split(".")[-2] else key.rsplit(".", 1)[0] for key in kohya}
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q" in modules
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj" in modules
    assert "lora_te2_text_model_encoder_layers_2_mlp_fc2" in modules
    for module in modules:
        assert {f"{module}.lora_down.weight", f"{module}.lora_up.weight", f"{module}.alpha"} <= kohya.keys()
        assert float(kohya[f"{module}.alpha"]) == 8.0
    assert len(kohya) == 3 * len(modules) == 3 * (72 + 12 + 18)
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)  # diffusers reads the kohya form too
    pipe.load_lora_weights(str(run / "train"), weight_name="lora_kohya.safetensors")
    assert len(adapted_modules(pipe.unet)) == 72


def test_latent_cache_is_hit_by_a_second_run(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    first = run_dir(write_spec(tmp_path / "a", tiny_model_dir, demo_data_dir, train={"max_steps": 2},
                               data={"cache_dir": str(tmp_path / "shared-cache")}))  # fmt: skip
    result = train(first)
    assert "21 of 21 images to encode" in result.stderr
    entries = sorted((tmp_path / "shared-cache" / "latents").rglob("*.safetensors"))
    assert len(entries) == 21
    stamps = [p.stat().st_mtime_ns for p in entries]
    second = run_dir(write_spec(tmp_path / "b", tiny_model_dir, demo_data_dir, train={"max_steps": 3, "seed": 5},
                                data={"cache_dir": str(tmp_path / "shared-cache")}))  # fmt: skip
    result = train(second)
    assert "0 of 21 images to encode" in result.stderr
    assert [p.stat().st_mtime_ns for p in entries] == stamps
    other_size = run_dir(write_spec(tmp_path / "c", tiny_model_dir, demo_data_dir, train={"max_steps": 1},
                                    data={"cache_dir": str(tmp_path / "shared-cache"), "size": [128, 64]}))  # fmt: skip
    assert "21 of 21 images to encode" in train(other_size).stderr  # a new size is a new cache


def broken_copy(data: Path, tmp: Path) -> Path:
    copy = tmp / "broken"
    shutil.copytree(data, copy)
    rows = [json.loads(line) for line in (copy / "train_set" / "metadata.jsonl").read_text().splitlines()]
    truncated = copy / "train_set" / rows[0]["file_name"]
    truncated.write_bytes(truncated.read_bytes()[:600])
    rows[1]["text"] = ""
    (copy / "train_set" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return copy


def test_bad_samples_are_reported_by_name(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    broken = broken_copy(demo_data_dir, tmp_path)
    rows = [json.loads(line) for line in (broken / "train_set" / "metadata.jsonl").read_text().splitlines()]
    truncated, uncaptioned = rows[0]["file_name"], rows[1]["file_name"]
    strict = run_dir(write_spec(tmp_path / "strict", tiny_model_dir, broken, data={"on_bad_sample": "fail"}))
    cli = shutil.which("cover-hpc") or str(Path(sys.executable).parent / "cover-hpc")
    result = subprocess.run([cli, "train", str(tmp_path / "strict" / "spec.yaml")], capture_output=True,
                            text=True, timeout=300, env=env_for(2))  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "2 bad sample(s)" in result.stderr
    assert f"{truncated}: unreadable image" in result.stderr
    assert f"{uncaptioned}: missing or empty caption" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (strict / "train" / "train_result.json").exists()
    lenient = run_dir(write_spec(tmp_path / "lenient", tiny_model_dir, broken, train={"max_steps": 2}))
    result = train(lenient)
    assert "skipping 2 bad sample(s)" in result.stderr and truncated in result.stderr and uncaptioned in result.stderr
    assert json.loads((lenient / "train" / "train_result.json").read_text())["status"] == "finished"


def test_non_finite_loss_stops_with_a_clear_message(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    run = run_dir(write_spec(tmp_path, tiny_model_dir, demo_data_dir, train={"noise_offset": 1e38}))
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "train.py"), str(run)], capture_output=True,
                            text=True, timeout=300, env=env_for(2))  # fmt: skip
    assert result.returncode != 0
    assert "loss became" in result.stderr and "last good checkpoint" in result.stderr
    assert not (run / "train" / "train_result.json").exists()


def test_training_options_run_together(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    """bf16, gradient checkpointing, accumulation, v-prediction, min-SNR, noise offset and buckets."""
    run = run_dir(
        write_spec(
            tmp_path, tiny_model_dir, demo_data_dir,
            data={"buckets": True, "size": [128, 64]},
            optim={"schedule": "cosine"},
            train={"max_steps": 3, "batch_size": 2, "grad_accum": 2, "mixed_precision": "bf16",
                   "gradient_checkpointing": True, "prediction_type": "v_prediction", "min_snr_gamma": 5.0,
                   "noise_offset": 0.05},
        )
    )  # fmt: skip
    train(run)
    result = json.loads((run / "train" / "train_result.json").read_text())
    assert result["status"] == "finished" and result["steps"] == 3
    records = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["loss"] < 100 for r in records)
    assert len({r["lr"]["unet"] for r in records}) == 3  # warm-up then cosine decay: a new rate each step
    assert (run / "train" / "tensorboard").is_dir()


def test_frozen_text_encoders_use_cached_embeddings(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    run = run_dir(write_spec(tmp_path, tiny_model_dir, demo_data_dir, lora={"parts": ["unet"]}, train={"max_steps": 3}))
    train(run)
    entries = list((tmp_path / "cache" / "text").rglob("*.safetensors"))
    assert len(entries) == 21  # one per distinct caption
    keys = load_file(run / "train" / "pytorch_lora_weights.safetensors").keys()
    assert keys and all(k.startswith("unet.") for k in keys)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (and root itself), with each file's bytes."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in [root, *root.rglob("*")]}


def test_a_refused_training_input_leaves_the_run_as_it_was(
    tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    """A training folder without its metadata, a base model or VAE named as a folder that is not
    there, a run folder without config.json: each is refused before the training lock, starts.jsonl
    or train/ is made (in-process, as the job entry point calls it)."""
    import dataclasses

    from cover_hpc.stages.train import train as train_stage
    from cover_hpc.stages.train import train_run
    from cover_hpc.store.data import DataError
    from cover_hpc.store.paths import RunPaths

    spec = load_spec(write_spec(tmp_path, tiny_model_dir, demo_data_dir))
    (run,) = expand(spec)
    paths = prepare_run(spec, run)
    (tmp_path / "no_metadata").mkdir()
    experiment = paths.root.parent
    before = tree(experiment)
    data, model = run.spec.data, run.spec.model
    refused = [
        (dataclasses.replace(data, train_dir=str(tmp_path / "gone")), model, DataError, "data folder not found"),
        (dataclasses.replace(data, train_dir=str(tmp_path / "no_metadata")), model, DataError,
         r"\(data\.train_dir\) has neither metadata\.jsonl nor metadata\.csv"),
        (data, dataclasses.replace(model, pretrained=str(tmp_path / "no-model")), FileNotFoundError,
         "model.pretrained: folder .*no-model' does not exist"),
        (data, dataclasses.replace(model, vae=str(tmp_path / "no-vae")), FileNotFoundError,
         "model.vae: folder .*no-vae' does not exist"),
    ]  # fmt: skip
    for new_data, new_model, error, message in refused:
        with pytest.raises(error, match=message):
            train_stage(dataclasses.replace(run.spec, data=new_data, model=new_model), paths)
    assert tree(experiment) == before
    not_a_run = RunPaths(experiment / "not-a-run")
    not_a_run.root.mkdir()
    before = tree(experiment)
    with pytest.raises(FileNotFoundError, match=r"config\.json not found: .*not-a-run is not a run folder"):
        train_run(not_a_run.root)
    assert tree(experiment) == before


def test_resume_is_exact_with_caption_dropout(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    resume_equivalence(tmp_path, tiny_model_dir, demo_data_dir, 1, data={"caption_dropout": 0.5})


def test_caption_dropout_caches_the_empty_caption(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    from cover_hpc.store.cache import text_key

    run = run_dir(write_spec(tmp_path, tiny_model_dir, demo_data_dir, lora={"parts": ["unet"]},
                             data={"caption_dropout": 0.3}, train={"max_steps": 2}))  # fmt: skip
    train(run)
    assert len(losses(run)) == 2
    assert list((tmp_path / "cache" / "text").glob(f"*/{text_key('')}.safetensors"))
    plain = run_dir(write_spec(tmp_path / "plain", tiny_model_dir, demo_data_dir, lora={"parts": ["unet"]},
                               train={"max_steps": 2}))  # fmt: skip
    train(plain)
    assert losses(plain) != losses(run)  # same noise and timesteps, some captions empty


def test_resume_is_exact_deepspeed_zero2_in_bf16(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    """DeepSpeed casts the model to bf16 and accelerate then autocasts nothing: the trainer hands the
    UNet its inputs in bf16 (fp32 latents met bf16 weights: mat1 and mat2 must have the same dtype)."""
    resume_equivalence(
        tmp_path, tiny_model_dir, demo_data_dir, 1, train={"mixed_precision": "bf16"},
        distributed={"backend": "deepspeed", "zero_stage": 2},
    )  # fmt: skip
