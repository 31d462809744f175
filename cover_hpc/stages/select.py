"""Choosing a run's best LoRA point, and the ``<run>/best/`` folder made from it.

``validate.select_by`` names one metric of :data:`METRICS`; its direction is fixed by what the
metric means (CMMD and the held-out loss are distances, lower is better). The base model is a
point on the axis for comparison, never a candidate: it is not a LoRA. Ties go to the earliest
step (the least trained LoRA that does as well).

``best/`` holds the chosen LoRA in diffusers format and as a kohya export, a model card
``README.md`` with Hugging Face's YAML front matter, sample covers and the selection. It is built
in a staging folder and renamed into place, so it is never half written.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cover_hpc.spec.schema import ExperimentSpec, to_dict
from cover_hpc.spec.vocab import METRICS, NEEDS
from cover_hpc.store import atomic, locks
from cover_hpc.store.paths import KOHYA_WEIGHTS, LORA_WEIGHTS, RunPaths
from cover_hpc.store.provenance import Provenance, describe
from cover_hpc.store.records import RecordError, Selection, ValidationPoint, read_record, write_record


class SelectionError(ValueError):
    """No point can be chosen by the metric asked for."""


class Scored(Protocol):
    """A point with its metrics (:class:`cover_hpc.store.records.ValidationPoint` or ``SelectionPoint``)."""

    @property
    def step(self) -> int: ...

    @property
    def kind(self) -> str: ...

    @property
    def metrics(self) -> Mapping[str, float | None]: ...


@dataclass(frozen=True)
class Choice:
    """The point chosen by ``metric`` (in its ``direction``): its step, value and kind (at the last
    step, the final LoRA and its EMA are two points)."""

    metric: str
    direction: str
    step: int
    value: float
    kind: str = "final"


def select(points: Sequence[Scored], metric: str) -> Choice:
    """The best LoRA point of ``points`` by ``metric``; of equal values the earliest step, and at one
    step the first in ``points`` (the final LoRA before its EMA)."""
    if metric not in METRICS:
        raise SelectionError(f"validate.select_by={metric!r} is not one of {', '.join(METRICS)}")
    direction = METRICS[metric][0]
    candidates = [(p, value) for p in points if p.kind != "base" and (value := p.metrics.get(metric)) is not None]
    if not candidates:
        need = NEEDS.get(metric)
        hint = f"; it needs {need} (and data.test_dir for cmmd and heldout_loss, titles for ocr)" if need else ""
        raise SelectionError(
            f"validate.select_by={metric}: no LoRA point has a {metric} value{hint}. Choose another metric or "
            "enable it, and validate again"
        )
    sign = 1.0 if direction == "max" else -1.0
    best, value = max(candidates, key=lambda pv: (sign * float(pv[1]), -int(pv[0].step)))
    return Choice(metric, direction, int(best.step), value, best.kind)


# --------------------------------------------------------------------------------------------
# best/

SAMPLES = 4


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(spec: ExperimentSpec, paths: RunPaths, selection: Selection, samples: Sequence[tuple[str, str]]) -> str:
    """``README.md`` for a model hub: YAML front matter (license left for the user), then what the
    LoRA is, how it was trained and chosen, its metrics against the base model, and sample covers."""
    best = selection.best
    points = selection.points
    base = next((p for p in points if p.kind == "base"), None)
    final = next((p for p in points if p.kind == "final"), None)
    chosen = next(p for p in points if p.step == best.step and p.kind == best.kind)
    lora, optim, train, data = spec.lora, spec.optim, spec.train, spec.data
    tags = ["stable-diffusion-xl", "stable-diffusion-xl-diffusers", "text-to-image", "diffusers", "lora",
            "template:sd-lora", "book-cover", "cover-hpc"]  # fmt: skip
    front = [
        "---",
        f"base_model: {json.dumps(spec.model.pretrained)}",
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        "tags:",
        *[f"- {tag}" for tag in tags],
        "# license: set the license of your training data and of the base model before uploading",
        "---",
    ]
    rows = [f"| metric | base model | this LoRA (step {best.step}) | final LoRA |", "|---|---|---|---|"]
    for name, (direction, _) in METRICS.items():
        better = "higher" if direction == "max" else "lower"
        rows.append(
            f"| {name} ({better} is better) | {_fmt(base.metrics.get(name) if base else None)} | "
            f"{_fmt(chosen.metrics.get(name))} | {_fmt(final.metrics.get(name) if final else None)} |"
        )
    axis = ", ".join(f"{p.step}" for p in points if p.kind != "base")
    hyper = [
        f"- LoRA rank {lora.rank}, alpha {lora.alpha}, dropout {lora.dropout}, on {', '.join(lora.parts)}",
        f"- learning rates: UNet {optim.lr_unet}, text encoder {optim.lr_text_encoder}, "
        f"text encoder 2 {optim.lr_text_encoder_2}; {optim.schedule} schedule, {optim.warmup_steps} warm-up steps",
        f"- batch {train.batch_size} x {train.grad_accum} accumulation x {spec.slurm.nodes} node(s), "
        f"{train.mixed_precision} mixed precision, seed {train.seed}",
        f"- image size {data.size[0]} x {data.size[1]} (height x width), captions up to {data.max_caption_tokens} "
        "tokens, encoded in 77-token chunks",
    ]
    sample_lines = [f"![{prompt[:80]}]({name})\n\n*{prompt}*\n" for name, prompt in samples]
    body = [
        f"# {spec.name}: book-cover LoRA for {spec.model.pretrained}",
        "",
        f"A LoRA for Stable Diffusion XL that draws book covers from a book's title, publisher, genres and "
        f"description. Trained with cover-hpc (run `{paths.root.name}`); this is the snapshot at **step "
        f"{best.step}** ({best.kind}), chosen by **{selection.select_by}** "
        f"({METRICS[selection.select_by][1]}) among the points at steps {axis}.",
        "",
        "## Prompt",
        "",
        "Prompt it the way it was trained, with the book-cover template (fields lower-cased, punctuation of "
        "the description spaced out):",
        "",
        '    Book Cover - This book title is "<title>". This book publisher is "<publisher>". This book genres '
        "are <genre 1> , <genre 2>. <description>",
        "",
        f"For example: *{samples[0][1]}*" if samples else "",
        "",
        "## Use",
        "",
        "```python",
        "from diffusers import StableDiffusionXLPipeline",
        f"pipe = StableDiffusionXLPipeline.from_pretrained({json.dumps(spec.model.pretrained)})",
        'pipe.load_lora_weights("path/to/this/folder")  # pytorch_lora_weights.safetensors',
        "```",
        "",
        f"`{KOHYA_WEIGHTS}` is the same LoRA in kohya's format (ComfyUI, AUTOMATIC1111, Forge). Captions "
        "longer than 77 tokens were encoded in chunks during training; cover-hpc's generator encodes them the "
        "same way.",
        "",
        "## Training",
        "",
        *hyper,
        "",
        "## Provenance",
        "",
        *_provenance(paths),
        "",
        "## Validation",
        "",
        f"On {selection.num_prompts or len(samples)} held-out books, same prompts and seeds for every point "
        f"({spec.validate.steps} sampling steps, guidance {spec.validate.guidance}):",
        "",
        *rows,
        "",
        "CMMD: Jayasumana et al., *Rethinking FID*, CVPR 2024 (CLIP embeddings, RBF sigma 10, x1000). OCR: the "
        "title read back from the image, case, accents and punctuation folded.",
        "",
        "## Samples",
        "",
        *sample_lines,
    ]
    return "\n".join([*front, "", *body]) + "\n"


def _provenance(paths: RunPaths) -> list[str]:
    """The model card's lines on what the training depended on (``train/provenance.json``)."""
    try:
        return describe(read_record(paths.provenance, Provenance))
    except FileNotFoundError:
        return ["Not recorded: trained before cover-hpc wrote `train/provenance.json`."]
    except (OSError, RecordError) as error:
        return [f"Unreadable: {error}"]


def _same_best(folder: Path, selection: Selection) -> bool:
    try:
        old = read_record(folder / "selection.json", Selection)
    except (OSError, RecordError):
        return False
    return bool(old == selection and (folder / LORA_WEIGHTS).is_file() and (folder / "README.md").is_file())


def publish_best(
    spec: ExperimentSpec, paths: RunPaths, selection: Selection, best: ValidationPoint, items: Sequence[Any]
) -> Path:
    """Fill ``<run>/best/`` with the chosen point's LoRA (kept as it is when already there). One
    process at a time (two validations of a run with different settings may finish together)."""
    with locks.held(paths.root / ".best.lock", f"best/ of run {paths.root.name}", wait_s=600):
        return _publish_best(spec, paths, selection, best, items)


def _publish_best(
    spec: ExperimentSpec, paths: RunPaths, selection: Selection, best: ValidationPoint, items: Sequence[Any]
) -> Path:
    from cover_hpc.model.lora import export_kohya

    target = paths.best
    if _same_best(target, selection):
        return target
    staging = paths.root / f".best-{os.getpid()}-{time.time_ns()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "samples").mkdir(parents=True)
    assert best.weights is not None  # a LoRA point, never the base model
    shutil.copyfile(best.weights, staging / LORA_WEIGHTS)
    export_kohya(staging / LORA_WEIGHTS, staging / KOHYA_WEIGHTS)
    samples = []
    images = Path(best.images)
    for item in list(items)[:SAMPLES]:
        source = images / item.file_name
        if source.is_file():
            shutil.copyfile(source, staging / "samples" / item.file_name)
            samples.append((f"samples/{item.file_name}", item.prompt))
    atomic.write_text(staging / "README.md", model_card(spec, paths, selection, samples))
    write_record(staging / "selection.json", selection)
    atomic.write_json(staging / "config.json", to_dict(spec))
    if paths.provenance.is_file():
        shutil.copyfile(paths.provenance, staging / "provenance.json")
    old = paths.root / f".best-old-{os.getpid()}-{time.time_ns()}"
    if target.exists():
        os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)
    for leftover in paths.root.glob(".best-[0-9o]*"):  # from a start killed while it built or swapped
        shutil.rmtree(leftover, ignore_errors=True)
    return target
