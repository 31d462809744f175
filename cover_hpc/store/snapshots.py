"""Snapshots of a run's LoRA along training, and which of them a stage uses.

Training writes a LoRA-only snapshot (the diffusers file, no optimizer state) at the steps that
``validate.every_steps`` and ``validate.at_steps`` name, into ``<run>/train/snapshots/step-N/``.
Snapshots are written once, atomically (a staging folder renamed into place), and never pruned:
the resumable checkpoints are. The final LoRA (``train/pytorch_lora_weights.safetensors``) is the
point at the run's last step, and the base model is the point at step 0. With ``train.ema`` the
EMA of the LoRA weights (``train/ema/``) is one more point at the last step, ``ema-step-N``.

Validation scores every point and picks one by ``validate.select_by``
(:mod:`cover_hpc.stages.select`); batch inference takes ``infer.checkpoint``: ``best``, ``final`` or
a step.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from cover_hpc.spec.schema import ValidateConfig
from cover_hpc.spec.vocab import CheckpointError, parse_checkpoint
from cover_hpc.store.paths import LORA_WEIGHTS, RunPaths


def snapshot_steps(config: ValidateConfig, total_steps: int) -> list[int]:
    """Steps strictly inside ``(0, total_steps)`` that get a snapshot; the last step is the final LoRA."""
    steps = set(config.at_steps)
    if config.every_steps:
        steps.update(range(config.every_steps, total_steps, config.every_steps))
    return sorted(s for s in steps if 0 < s < total_steps)


def clear_staging(paths: RunPaths) -> None:
    """Remove snapshot staging folders left by a start that was killed while writing one."""
    if paths.snapshots.is_dir():
        for leftover in paths.snapshots.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)


@dataclass(frozen=True)
class Point:
    """One LoRA on a run's step axis: a snapshot, the final LoRA (``final``) at the last step, or
    the EMA of the LoRA weights (``ema``) at the last step."""

    step: int
    weights: Path
    final: bool
    ema: bool = False

    @property
    def name(self) -> str:
        return f"{'ema-' if self.ema else ''}step-{self.step:08d}"

    @property
    def kind(self) -> str:
        """Its kind in validation records: snapshot, final or ema."""
        return "ema" if self.ema else "final" if self.final else "snapshot"


def total_steps(paths: RunPaths) -> int | None:
    """The last step of a finished training (from ``train_result.json``), else None."""
    try:
        return int(json.loads(paths.train_result.read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lora_points(paths: RunPaths) -> list[Point]:
    """The run's snapshots on disk and, once training finished, its final LoRA (then its EMA LoRA
    when there is one), by step."""
    points = []
    if paths.snapshots.is_dir():
        for folder in sorted(paths.snapshots.glob("step-*")):
            with contextlib.suppress(ValueError):
                step = int(folder.name.removeprefix("step-"))
                if (folder / LORA_WEIGHTS).is_file():
                    points.append(Point(step, folder / LORA_WEIGHTS, False))
    last = total_steps(paths)
    if last is not None and paths.lora_weights.is_file():
        points = [p for p in points if p.step < last] + [Point(last, paths.lora_weights, True)]
        if (paths.ema / LORA_WEIGHTS).is_file():
            points.append(Point(last, paths.ema / LORA_WEIGHTS, False, ema=True))
    return points


def resolve_checkpoint(paths: RunPaths, choice: str, selection: Path | None, select_by: str | None = None) -> Point:
    """The LoRA that ``infer.checkpoint`` names for this run. ``best`` reads ``selection`` (the
    selection.json of the validation with the run's settings), which must have chosen by
    ``select_by`` when that is given; a run without snapshots has one LoRA, which is then the best
    without a validation."""
    wanted = parse_checkpoint(choice)
    points = lora_points(paths)
    final = next((p for p in points if p.final), None)
    if final is None:
        raise CheckpointError(
            f"run {paths.root.name} has not finished training ({paths.train_result} is missing); train it first"
        )
    if wanted == "final":
        return final
    if isinstance(wanted, int):
        found = next((p for p in points if p.step == wanted), None)
        if found is None:
            steps = ", ".join(str(p.step) for p in points)
            raise CheckpointError(
                f"infer.checkpoint={wanted}: run {paths.root.name} has no snapshot at step {wanted}; its LoRA "
                f"points are at steps {steps} (set validate.every_steps or at_steps before training to get more)"
            )
        return found
    if selection is not None and selection.is_file():
        try:
            data = json.loads(selection.read_text())
            step, chosen_by = int(data["best"]["step"]), data.get("select_by")
            ema = data["best"].get("kind") == "ema"
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(
                f"{selection} is not a selection cover-hpc wrote ({type(error).__name__}: {error}); delete it and "
                "validate again (cover-hpc validate re-selects from the scores on disk)"
            ) from None
        if select_by is not None and chosen_by is not None and chosen_by != select_by:
            raise CheckpointError(
                f"{selection} chose by {chosen_by}, but validate.select_by is {select_by}; validate again to "
                f"re-select by {select_by} (cover-hpc validate: nothing is scored again), or set "
                f"validate.select_by={chosen_by}"
            )
        found = next((p for p in points if p.step == step and p.ema == ema), None)
        if found is None:
            what = f"the EMA LoRA at step {step}" if ema else f"step {step}"
            raise CheckpointError(f"{selection} chose {what}, which run {paths.root.name} no longer has")
        return found
    if len(points) == 1:
        return final
    raise CheckpointError(
        f"infer.checkpoint=best: run {paths.root.name} has {len(points)} LoRA points and no selection yet "
        f"({selection} is missing); validate it first (cover-hpc validate), or set infer.checkpoint=final "
        "or a step number"
    )
