"""data.caption_dropout: which samples train on the empty caption, and the spec's check."""

from __future__ import annotations

import pytest
import torch

from cover_hpc.spec.load import load_spec
from cover_hpc.spec.schema import ExperimentSpec, SpecError
from cover_hpc.stages.train import caption_drop_mask, step_seed


def _mask(rate: float, seed: int, count: int = 4) -> torch.Tensor | None:
    generator = torch.Generator().manual_seed(seed)
    return caption_drop_mask(rate, count, generator)


def test_dropped_samples_are_deterministic_and_at_the_rate() -> None:
    masks = [_mask(0.25, step_seed(7, step, 0, 0)) for step in range(2000)]
    again = [_mask(0.25, step_seed(7, step, 0, 0)) for step in range(2000)]
    assert all(a is not None and b is not None and torch.equal(a, b) for a, b in zip(masks, again, strict=True))
    rate = torch.cat([m for m in masks if m is not None]).float().mean().item()
    assert rate == pytest.approx(0.25, abs=0.02)
    other = [_mask(0.25, step_seed(8, step, 0, 0)) for step in range(50)]
    assert any(not torch.equal(a, b) for a, b in zip(masks[:50], other, strict=True) if a is not None and b is not None)


def test_no_dropout_draws_nothing() -> None:
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    assert caption_drop_mask(0.0, 4, generator) is None
    assert torch.equal(generator.get_state(), state)  # the other draws of a step are as before


def test_caption_dropout_default_and_check(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert ExperimentSpec().data.caption_dropout == 0.0
    path = tmp_path / "spec.yaml"
    path.write_text("data:\n  caption_dropout: 1.0\n")
    with pytest.raises(SpecError, match=r"data\.caption_dropout.*\[0, 1\)"):
        load_spec(path)
    path.write_text("data:\n  caption_dropout: 0.1\n")
    assert load_spec(path).data.caption_dropout == 0.1
