"""The EMA of the LoRA weights (train.ema): its decay schedule, update, file round trip and swap."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cover_hpc.model.ema import LoraEMA, ema_decay


def model() -> torch.nn.Linear:
    module = torch.nn.Linear(3, 2)
    module.bias.requires_grad_(False)  # frozen: not averaged
    with torch.no_grad():
        module.weight.fill_(1.0)
    return module


def test_decay_warms_up_then_is_the_set_decay() -> None:
    assert ema_decay(0.999, 0, 0) == 0.999
    assert ema_decay(0.999, 100, 0) == pytest.approx(1 / 10)
    assert ema_decay(0.999, 100, 10) == pytest.approx(11 / 20)
    assert ema_decay(0.5, 100, 10) == 0.5  # never above the set decay
    assert ema_decay(0.999, 100, 100) == 0.999  # after the warm-up


def test_update_averages_the_trainable_weights_only(tmp_path: Path) -> None:
    module = model()
    ema = LoraEMA(module, decay=0.9, warmup_steps=0)
    assert set(ema.shadow) == {"weight"}
    with torch.no_grad():
        module.weight.fill_(2.0)
    ema.update(0)
    torch.testing.assert_close(ema.shadow["weight"], torch.full((2, 3), 0.9 * 1.0 + 0.1 * 2.0))
    ema.save(tmp_path / "ema.safetensors")
    other = LoraEMA(model(), decay=0.9, warmup_steps=0)
    other.load(tmp_path / "ema.safetensors")
    assert torch.equal(other.shadow["weight"], ema.shadow["weight"])
    with ema.swapped():
        assert torch.equal(module.weight, ema.shadow["weight"])
    assert torch.equal(module.weight, torch.full((2, 3), 2.0))  # the trained weights again


def test_load_refuses_a_checkpoint_without_or_with_other_weights(tmp_path: Path) -> None:
    ema = LoraEMA(model(), decay=0.9, warmup_steps=0)
    with pytest.raises(RuntimeError, match="is missing"):
        ema.load(tmp_path / "ema.safetensors")
    LoraEMA(torch.nn.Linear(3, 2, bias=False), 0.9, 0).save(tmp_path / "ema.safetensors")
    with pytest.raises(RuntimeError, match="does not match"):
        LoraEMA(torch.nn.Linear(3, 2), 0.9, 0).load(tmp_path / "ema.safetensors")  # weight and bias


@pytest.mark.tiny
@pytest.mark.slow
def test_the_ema_lora_is_validated_and_can_be_the_best(
    tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    """A run trained with train.ema has its EMA LoRA validated as a point of its own (kind ema, at
    the last step, beside the final LoRA); selection and best/ take whichever scores better."""
    import dataclasses
    import json
    import subprocess
    import sys

    from cover_hpc.demo.tiny_clip import build_tiny_transformers_clip
    from cover_hpc.spec.load import load_spec
    from cover_hpc.spec.sweep import expand
    from cover_hpc.stages.validate import validate
    from cover_hpc.store.runs import prepare_run
    from cover_hpc.store.snapshots import resolve_checkpoint

    from .conftest import REPO

    clip = build_tiny_transformers_clip(tmp_path / "clip")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps({
        "name": "ema", "output_dir": str(tmp_path / "experiments"),
        "model": {"pretrained": str(tiny_model_dir)},
        "data": {"train_dir": str(demo_data_dir / "train_set"), "test_dir": str(demo_data_dir / "test_set"),
                 "size": [64, 64], "num_workers": 0, "cache_dir": str(tmp_path / "cache")},
        "lora": {"rank": 4, "alpha": 4},
        "optim": {"lr_unet": 1e-2, "lr_text_encoder": 1e-2, "lr_text_encoder_2": 1e-2, "warmup_steps": 1},
        "train": {"batch_size": 4, "max_steps": 4, "mixed_precision": "no", "ema": True, "ema_decay": 0.5},
        "validate": {"num_prompts": 2, "steps": 3, "batch_size": 2, "clip_model": str(clip), "loss_images": 2,
                     "select_by": "heldout_loss"},
    }))  # fmt: skip
    spec = load_spec(spec_file)
    (run,) = expand(spec)
    paths = prepare_run(spec, run)
    subprocess.run([sys.executable, str(REPO / "jobs" / "train.py"), str(paths.root)], check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    result = validate(run.spec, paths)
    assert result is not None
    assert [(p["point"], p["step"], p["kind"]) for p in result["points"]] == [
        ("base", 0, "base"), ("step-00000004", 4, "final"), ("ema-step-00000004", 4, "ema"),
    ]  # fmt: skip
    losses = {p["kind"]: p["metrics"]["heldout_loss"] for p in result["points"] if p["kind"] != "base"}
    assert losses["final"] != losses["ema"]  # two LoRAs, each scored
    for metric in ("heldout_loss", "cmmd"):  # each picks the better of the two (lower is better for both)
        settings = dataclasses.replace(run.spec.validate, select_by=metric)
        chosen = validate(dataclasses.replace(run.spec, validate=settings), paths)
        assert chosen is not None
        values = {p["kind"]: p["metrics"][metric] for p in chosen["points"] if p["kind"] != "base"}
        kind = min(values, key=lambda k: (values[k], k != "final"))
        assert chosen["best"]["kind"] == kind and chosen["best"]["step"] == 4
        weights = paths.ema / "pytorch_lora_weights.safetensors" if kind == "ema" else paths.lora_weights
        assert (paths.best / "pytorch_lora_weights.safetensors").read_bytes() == weights.read_bytes()
        assert resolve_checkpoint(paths, "best", paths.selection, metric).weights == weights
