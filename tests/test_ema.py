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
