"""An exponential moving average of the trained LoRA weights (``train.ema``).

The average is kept in fp32 next to the trained parameters (on their device), updated after every
optimizer step, saved with each checkpoint and restored on resume, so a resumed run averages the
same weights bit for bit. :meth:`LoraEMA.swapped` puts the averaged weights into the model for a
moment (to write the EMA LoRA with the ordinary savers), and back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

#: The averaged weights' file in a checkpoint folder.
EMA_STATE = "ema_state.safetensors"


def ema_decay(decay: float, warmup_steps: int, step: int) -> float:
    """The decay of the update after optimizer step ``step`` (counted from 0): ``decay``, or during
    the first ``warmup_steps`` steps ``min(decay, (1 + step) / (10 + step))``."""
    return min(decay, (1 + step) / (10 + step)) if step < warmup_steps else decay


class LoraEMA:
    """The average of the trainable parameters of ``model``, by parameter name."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup_steps: int) -> None:
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.shadow = {name: p.detach().float().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Average in the parameters after optimizer step ``step`` (counted from 0)."""
        decay = ema_decay(self.decay, self.warmup_steps, step)
        for name, param in self.params.items():
            self.shadow[name].lerp_(param.detach().float(), 1 - decay)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in sorted(self.shadow.items())}, str(path))

    def load(self, path: Path) -> None:
        from safetensors.torch import load_file

        if not path.is_file():
            raise RuntimeError(f"{path} is missing: the checkpoint has no EMA of the LoRA weights (train.ema)")
        state = load_file(str(path))
        if set(state) != set(self.shadow):
            missing, extra = sorted(set(self.shadow) - set(state))[:3], sorted(set(state) - set(self.shadow))[:3]
            raise RuntimeError(f"{path} does not match this run's adapters: missing {missing}, extra {extra}")
        for name, value in state.items():
            self.shadow[name].copy_(value)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own ones again after it."""
        saved = {name: p.detach().clone() for name, p in self.params.items()}
        try:
            with torch.no_grad():
                for name, param in self.params.items():
                    param.copy_(self.shadow[name].to(param.dtype))
            yield
        finally:
            with torch.no_grad():
                for name, param in self.params.items():
                    param.copy_(saved[name])
