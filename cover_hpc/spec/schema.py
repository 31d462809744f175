"""The experiment spec: typed sections, loading (defaults < YAML < overrides) and validation.

Every section is a frozen, keyword-only dataclass whose field ``help`` metadata documents the
field (``cover-hpc spec-help`` prints it). Loading never mutates a spec after validation: a new
spec is built with :func:`dataclasses.replace` where a sweep sets values.

Errors are collected, not raised one at a time, and reported as :class:`SpecError`, whose message
names the YAML key path, the file line when known, the bad value, and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

#: The VAE downsamples by 8 and the UNet by up to 8 more, so image sides must divide by this.
SIZE_MULTIPLE = 64

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "mlp.fc1", "mlp.fc2")
PARTS = ("unet", "text_encoder", "text_encoder_2")
LR_SCHEDULES = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
)


def doc(text: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field with its documentation in ``metadata['help']``."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed; use a tuple")
    return field(default=default, metadata={"help": text, **kwargs.pop("metadata", {})}, **kwargs)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The base SDXL pipeline the adapters are trained on."""

    pretrained: str = doc("Base pipeline: a local folder in diffusers layout or a Hugging Face hub id.", SDXL_BASE)
    vae: str | None = doc("Separate VAE (folder or hub id), e.g. an fp16-safe SDXL VAE; empty = the pipeline's.", None)
    revision: str | None = doc("Hub revision (branch, tag or commit) of `pretrained`.", None)
    variant: str | None = doc("Weight file variant to load, e.g. 'fp16'.", None)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Training and held-out data in Hugging Face imagefolder layout."""

    train_dir: str = doc("Training folder: images plus metadata.jsonl or metadata.csv.", "data/train_set")
    test_dir: str = doc("Held-out folder, same layout, used for validation prompts.", "data/test_set")
    caption_column: str = doc("Metadata column holding the caption.", "text")
    image_column: str = doc("Metadata column holding the image file name.", "file_name")
    size: tuple[int, int] = doc(
        f"Training size as [height, width] (or 'HxW'); both multiples of {SIZE_MULTIPLE}.", (1152, 896)
    )
    caption_template: bool = doc(
        "Build captions from the book fields (title, publisher, genres, description) with the "
        "book-cover template instead of using the caption column as given.",
        False,
    )
    max_caption_tokens: int = doc(
        "Caption tokens kept, not counting the start/end tokens that each 77-token chunk gets; "
        "525 = 7 chunks of 75, the original's 539-token window.",
        525,
    )
    buckets: bool = doc("Group images into aspect-ratio buckets instead of one fixed size.", False)
    on_bad_sample: Literal["skip", "fail"] = doc(
        "What an unreadable image or a missing caption does: 'skip' it (reported) or 'fail'.", "skip"
    )
    cache_latents: bool = doc("Cache VAE latents (and frozen text embeddings) on disk.", True)
    cache_dir: str | None = doc("Latent cache folder; empty = <train_dir>/../.cover_hpc_cache.", None)
    num_workers: int = doc("DataLoader worker processes per rank.", 2)
    caption_dropout: float = doc(
        "Probability, in [0, 1), that a training sample is trained on the empty caption instead of its own "
        "(classifier-free guidance learns the unconditional prediction from it); 0 = never.",
        0.0,
    )


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """LoRA adapters on the UNet and both text encoders."""

    rank: int = doc("LoRA rank.", 32)
    alpha: float = doc("LoRA alpha (scale = alpha / rank).", 32.0)
    init: Literal["gaussian", "kaiming"] = doc("Initialisation of the LoRA A matrices.", "gaussian")
    dropout: float = doc("Dropout on the LoRA path, in [0, 1).", 0.0)
    dora: bool = doc(
        "DoRA (weight-decomposed LoRA, peft's use_dora) on every adapted module: also trains a magnitude per "
        "output channel; the kohya export stores it as dora_scale.",
        False,
    )
    unet_targets: tuple[str, ...] = doc("UNet module names that get adapters.", UNET_TARGETS)
    text_encoder_targets: tuple[str, ...] = doc(
        "Text encoder 1 (CLIP ViT-L) module names that get adapters.", TEXT_ENCODER_TARGETS
    )
    text_encoder_2_targets: tuple[str, ...] = doc(
        "Text encoder 2 (OpenCLIP ViT-bigG) module names that get adapters.", TEXT_ENCODER_TARGETS
    )
    parts: tuple[Literal["unet", "text_encoder", "text_encoder_2"], ...] = doc("Which parts are trained.", PARTS)


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with one parameter group and learning rate per trained part."""

    lr_unet: float = doc("Learning rate of the UNet adapters.", 1e-4)
    lr_text_encoder: float = doc("Learning rate of the text encoder 1 adapters.", 5e-5)
    lr_text_encoder_2: float = doc("Learning rate of the text encoder 2 adapters.", 1e-5)
    weight_decay: float = doc("AdamW weight decay.", 1e-2)
    betas: tuple[float, float] = doc("AdamW betas.", (0.9, 0.999))
    eps: float = doc("AdamW epsilon.", 1e-8)
    max_grad_norm: float = doc("Gradient-norm clip; 0 turns clipping off.", 1.0)
    schedule: str = doc(f"LR schedule, one of {', '.join(LR_SCHEDULES)}.", "constant_with_warmup")
    warmup_steps: int = doc("Warm-up steps of the schedule.", 950)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The training loop."""

    batch_size: int = doc("Images per GPU (per process) per step.", 3)
    epochs: int = doc("Passes over the training set (ignored when max_steps is set).", 25)
    max_steps: int | None = doc("Optimizer steps to run; overrides epochs when set.", None)
    grad_accum: int = doc("Micro-batches accumulated per optimizer step.", 1)
    mixed_precision: Literal["no", "fp16", "bf16"] = doc(
        "Mixed precision of the UNet and text encoders; the VAE stays fp32.", "fp16"
    )
    seed: int = doc("Seed of data order, noise and timesteps.", 42)
    checkpoint_every: int = doc("Optimizer steps between checkpoints.", 500)
    checkpoints_kept: int = doc("Complete checkpoints kept (older ones are pruned).", 3)
    gradient_checkpointing: bool = doc("Recompute activations in backward to save memory.", False)
    prediction_type: Literal["epsilon", "v_prediction"] | None = doc(
        "Training target; empty = the scheduler's configured prediction type.", None
    )
    min_snr_gamma: float | None = doc("Min-SNR loss weighting gamma (5.0 is usual); empty = off.", None)
    noise_offset: float = doc("Noise offset added to the training noise; 0 = off.", 0.0)
    log_every: int = doc("Steps between log lines when not attached to a terminal.", 10)
    ema: bool = doc(
        "Also keep an exponential moving average of the LoRA weights, updated after every optimizer step and "
        "kept in the checkpoints; a finished training writes it to train/ema/ (diffusers file and kohya export), "
        "which validation scores as a point of its own (kind ema, at the last step) that can be selected as best.",
        False,
    )
    ema_decay: float = doc("EMA decay per optimizer step, in (0, 1).", 0.999)
    ema_warmup_steps: int = doc(
        "EMA warm-up: for the first ema_warmup_steps steps the decay is min(ema_decay, (1 + step) / (10 + step)) "
        "(step counted from 0), so early averages are not dominated by the initial weights; 0 = ema_decay "
        "from the first step.",
        0,
    )


@dataclass(frozen=True, kw_only=True)
class DistributedConfig:
    """How the processes of one run share the work."""

    backend: Literal["ddp", "deepspeed"] = doc("Data parallelism: plain DDP or DeepSpeed ZeRO.", "ddp")
    zero_stage: int = doc("DeepSpeed ZeRO stage (0-3); used when backend is deepspeed.", 2)
    timeout_min: int = doc(
        "Minutes a process waits in a collective (gradient all-reduce, barrier) for the others before it fails "
        "the run, e.g. after losing a node; the checkpoint written before stays.",
        30,
    )


@dataclass(frozen=True, kw_only=True)
class ValidateConfig:
    """CLIP-score validation on held-out books."""

    prompts: str = doc("Prompt source: 'test_set' (captions of data.test_dir) or a books JSONL file.", "test_set")
    num_prompts: int = doc("Held-out prompts generated and scored.", 6)
    steps: int = doc("Sampling steps per image.", 50)
    guidance: float = doc("Classifier-free guidance scale.", 5.0)
    seed: int = doc("Base seed; prompt i uses seed + i, so re-runs give the same images.", 42)
    batch_size: int = doc("Images per pipeline call.", 3)
    clip_model: str = doc("CLIP model (folder or hub id) for the score.", "openai/clip-vit-base-patch16")
    clip_backend: Literal["transformers", "open_clip"] = doc("Library that runs the CLIP model.", "transformers")
    baseline: bool = doc("Also score the base model without the LoRA on the same prompts and seeds.", True)
    precision: Literal["auto", "fp16", "bf16", "fp32"] = doc("Sampling dtype; auto = fp16 on GPU, fp32 on CPU.", "auto")
    every_steps: int | None = doc(
        "Write a LoRA-only snapshot every N training steps (train/snapshots/), and validate each; empty = "
        "only the final LoRA.",
        None,
    )
    at_steps: tuple[int, ...] = doc("Further training steps that get a snapshot (with or without every_steps).", ())
    select_by: str = doc(
        "Metric that picks a run's best snapshot (copied to <run>/best/): clip_score, clip_score_short, "
        "cmmd (lower is better), ocr_similarity, ocr_exact or heldout_loss (lower is better).",
        "clip_score",
    )
    tasks: int = doc("SLURM array tasks that share a run's snapshots (one task validates every tasks-th point).", 1)
    cmmd: bool = doc("Score CMMD against the real covers of data.test_dir (same CLIP model).", True)
    ocr: bool = doc("Score title legibility: the book's title read back from each image by OCR.", True)
    loss_images: int = doc("Held-out images (data.test_dir) of the denoising loss at fixed timesteps and noise.", 8)
    loss_timesteps: tuple[int, ...] = doc("Timesteps of the held-out loss.", (100, 300, 500, 700, 900))


@dataclass(frozen=True, kw_only=True)
class InferConfig:
    """Sharded batch inference over a books file."""

    books_file: str | None = doc("Books JSONL (id, title, publisher, genres, description or prompt).", None)
    checkpoint: str = doc(
        "The LoRA that makes the covers: best (validation's choice, see validate.select_by), final, or a "
        "snapshot's step number.",
        "best",
    )
    shards: int = doc("Inference shards (array tasks) per run.", 1)
    steps: int = doc("Sampling steps per image.", 50)
    guidance: float = doc("Classifier-free guidance scale.", 5.0)
    size: tuple[int, int] = doc(f"Image size as [height, width]; multiples of {SIZE_MULTIPLE}.", (1152, 896))
    batch_size: int = doc("Images per pipeline call.", 1)
    seed: int = doc("Base seed; each book's seed is derived from it and the book id.", 0)
    negative_prompt: str = doc("Negative prompt for every image.", "")
    scheduler: Literal["euler", "euler_a", "dpmpp_2m", "ddim"] = doc("Sampling scheduler.", "euler")
    precision: Literal["auto", "fp16", "bf16", "fp32"] = doc("Sampling dtype; auto = fp16 on GPU, fp32 on CPU.", "auto")
    compile: bool = doc("torch.compile the UNet (pays off over many images on a GPU).", False)
    vae_tiling: bool = doc("Decode with VAE tiling (less memory at large sizes).", False)
    typeset: bool = doc(
        "Finished covers: generate the art without lettering, then typeset the exact title and author over "
        "it (images/), keeping the raw art (art/). A book whose cover cannot be finished keeps its art and "
        "gets the reason in the manifest.",
        True,
    )
    cover_size: tuple[int, int] | None = doc(
        "Finished covers' size as [height, width] in pixels, e.g. [2560, 1600] for an ebook; empty = the "
        "art's own (infer.size). The art is resampled once, cropped to the aspect (never stretched), and "
        "the lettering set at this size.",
        None,
    )
    typeset_negative: str = doc(
        "Added to negative_prompt when typeset is on (empty = nothing added).",
        "text, letters, words, title, typography, lettering, watermark, signature, logo",
    )
    typeset_font: str | None = doc(
        "Font for typeset covers: serif, sans, display or a font file; empty = by genre.", None
    )
    typeset_verify: bool = doc("Read every typeset title back by OCR and record its similarity.", True)


@dataclass(frozen=True, kw_only=True)
class SlurmConfig:
    """Cluster resources, in user terms; translated to sbatch options in one place."""

    partition: str | None = doc("SLURM partition.", None)
    account: str | None = doc("SLURM account.", None)
    qos: str | None = doc("SLURM quality of service.", None)
    constraint: str | None = doc("SLURM node feature constraint, e.g. 'a100|h100'.", None)
    nodes: int = doc("Nodes per training run.", 1)
    gpus_per_node: int = doc("GPUs per node (one process per GPU); 0 = CPU only.", 3)
    tasks_per_node: int | None = doc("Processes per node when gpus_per_node is 0; empty = 1.", None)
    cpus_per_gpu: int = doc("CPU cores per process.", 8)
    mem_per_gpu_gb: int = doc("Host memory per process, in GiB.", 64)
    time_min: int = doc("Time limit per job, in minutes.", 24 * 60)
    signal_lead_s: int = doc("Seconds before the time limit at which the job is told to stop.", 120)
    max_requeues: int = doc("Requeues after preemption or timeout before a run gives up.", 10)
    array_parallelism: int = doc("Training array tasks running at once.", 4)
    setup: tuple[str, ...] = doc("Shell lines run before each job, e.g. module loads.", ())


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """A search over dotted keys, with early stopping by asynchronous successive halving (Optuna)."""

    sampler: Literal["none", "random", "tpe"] = doc(
        "none (no search), random, or tpe (Bayesian: later trials learn from earlier ones).", "none"
    )
    trials: int = doc("Trials (runs) of the search; each is one task of the training array.", 0)
    parallelism: int = doc("Trials that train at once (array tasks running); 0 = slurm.array_parallelism.", 0)
    seed: int = doc("Seed of the sampler: the same seed gives the same trials (random: known at plan time).", 0)
    space: dict[str, dict[str, Any]] = doc(
        "Dotted key -> distribution: {distribution: uniform|log_uniform|int|choice, low, high[, step]} or "
        "{distribution: choice, values: [...]}.",
        default_factory=dict,
    )
    metric: str = doc(
        "Validation metric the search ranks trials by and stops them on (its direction is the metric's); "
        "validate.select_by must be the same.",
        "heldout_loss",
    )
    grace_steps: int = doc(
        "Early stopping: the first rung, in training steps (rungs at grace_steps x reduction_factor^k); "
        "0 = every trial trains to the end.",
        0,
    )
    reduction_factor: int = doc("Early stopping: only the top 1/reduction_factor of a rung go on.", 3)


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """Sweep axes over any dotted key of the spec."""

    grid: dict[str, tuple[Any, ...]] = doc(
        "Axes of a full grid: dotted key -> list of values; runs = the product.",
        default_factory=dict,
    )
    zip: dict[str, tuple[Any, ...]] = doc(
        "Axes stepped together: dotted key -> list of values, all lists of one length.",
        default_factory=dict,
    )
    search: SearchConfig = field(default_factory=SearchConfig)


@dataclass(frozen=True, kw_only=True)
class TrackConfig:
    """Experiment trackers that training, validation, selection and a search also log to (the run's
    metrics.jsonl and TensorBoard files are always written). One tracker run per run id: a requeued
    or resumed job continues it and logs no step twice. A tracker that cannot be reached is turned
    off for that job with a warning; training goes on."""

    wandb: Literal["off", "offline", "online"] = doc(
        "Weights & Biases: off, offline (files in <run>/tracking/wandb/, synced later with `wandb sync` from a "
        "node with network) or online (needs network on the compute nodes and a login or WANDB_API_KEY).",
        "off",
    )
    mlflow_uri: str = doc(
        "MLflow tracking URI: a tracking server (http://host:5000, the usual choice when many jobs log at once), "
        "a SQLite database (sqlite:///path/mlflow.db) or a file store folder; empty = off.",
        "",
    )
    project: str = doc("wandb project and MLflow experiment name; empty = the spec's name.", "")
    entity: str = doc("wandb entity (team or user) owning the project; empty = the login's default.", "")
    tags: tuple[str, ...] = doc(
        "Extra tags of every tracker run; each also gets the experiment, run id, user and SLURM job as tags.", ()
    )
    images: int = doc("Validation images logged per scored point (0 = none).", 4)


@dataclass(frozen=True, kw_only=True)
class ExperimentSpec:
    """A whole experiment: what to train, on what, how, and where."""

    name: str = doc("Experiment name; the experiment folder is <output_dir>/<name>.", "book-covers")
    output_dir: str = doc("Folder holding experiment folders.", "experiments")
    model: ModelConfig = doc("Base model.", default_factory=ModelConfig)
    data: DataConfig = doc("Data.", default_factory=DataConfig)
    lora: LoraConfig = doc("LoRA adapters.", default_factory=LoraConfig)
    optim: OptimConfig = doc("Optimiser.", default_factory=OptimConfig)
    train: TrainConfig = doc("Training loop.", default_factory=TrainConfig)
    distributed: DistributedConfig = doc("Distributed training.", default_factory=DistributedConfig)
    validate: ValidateConfig = doc("Validation.", default_factory=ValidateConfig)
    infer: InferConfig = doc("Batch inference.", default_factory=InferConfig)
    slurm: SlurmConfig = doc("Cluster resources.", default_factory=SlurmConfig)
    sweep: SweepConfig = doc("Sweep axes.", default_factory=SweepConfig)
    track: TrackConfig = doc("Experiment trackers (wandb, MLflow).", default_factory=TrackConfig)


# --------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: where (key path, file line or command line) and why."""

    key: str
    message: str
    line: int | None = None
    origin: str | None = None  # "command line" for overrides; None = the spec file

    def render(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        key = f"{self.key} (set on the {self.origin})" if self.origin and self.key else self.key
        return f"{where}{key}: {self.message}" if key else f"{where}{self.message}"


class SpecError(ValueError):
    """A spec that cannot run, with every problem found and how to fix each."""

    def __init__(self, problems: Sequence[Problem], source: str | None = None) -> None:
        self.problems = tuple(problems)
        self.source = source
        count = len(self.problems)
        what = f"experiment spec {source}" if source else "experiment spec"
        head = f"invalid {what} ({count} problem{'s' if count != 1 else ''}):"
        body = "\n".join(f"  - {p.render()}" for p in self.problems)
        super().__init__(f"{head}\n{body}")


# --------------------------------------------------------------------------------------------
# Building dataclasses from plain data, with type checks


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_describe_type(a) for a in inner) + " (or empty)"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe_type(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_describe_type(a) for a in args)})"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


class _Invalid(Exception):
    pass


_SIZE_RE = re.compile(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*")  # used with fullmatch: `$` also matches before a \n


def coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise ``_Invalid`` with what was expected.

    Strings that read as numbers are accepted for numbers, because YAML 1.1 (PyYAML) reads
    ``1e-4`` as a string; sizes may be written 'HxW'.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if (value is None or value == "") and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg)
            except _Invalid:
                continue
        raise _Invalid(_describe_type(tp))
    if origin is Literal:
        if value is False and "off" in args and False not in args:  # YAML 1.1 reads a bare `off` as false
            return "off"
        if value in args:
            return value
        raise _Invalid(_describe_type(tp))
    if origin is tuple:
        if isinstance(value, str) and args == (int, int):
            match = _SIZE_RE.fullmatch(value)
            if match:
                return (int(match.group(1)), int(match.group(2)))
        if isinstance(value, str) and len(args) == 2 and args[1] is Ellipsis:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise _Invalid(_describe_type(tp))
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0]) for v in value)
        if len(value) != len(args):
            raise _Invalid(_describe_type(tp))
        return tuple(coerce(v, a) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _Invalid("a mapping")
        return {str(k): tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Invalid("true or false")
    if tp is int:
        if isinstance(value, bool):
            raise _Invalid("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            try:
                return int(value)
            except ValueError:  # more digits than Python converts (4300)
                pass
        raise _Invalid("an integer")
    if tp is float:
        return _finite(value)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Invalid("a string")
    raise _Invalid(_describe_type(tp))


def _finite(value: Any) -> float:
    """``value`` as a finite float: YAML's .inf and .nan, and '1e999', are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Invalid("a finite number")
    try:
        number = float(value)
    except ValueError:
        raise _Invalid("a finite number") from None
    if not math.isfinite(number):
        raise _Invalid("a finite number")
    return number


def _closest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'? " if close else ""


def build(cls: type, data: Any, prefix: str, problems: list[Problem], lines: Mapping[str, int]) -> Any:
    """Build dataclass ``cls`` from a mapping, recording problems instead of raising."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problems.append(Problem(prefix, f"expected a mapping of keys, got {data!r}", lines.get(prefix)))
        return cls()
    known = _fields(cls)
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in known:
            valid = ", ".join(known)
            problems.append(
                Problem(
                    path,
                    f"unknown key. {_closest(str(key), list(known))}Valid keys here: {valid}.",
                    lines.get(path),
                )
            )
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(tp, value, path, problems, lines)  # type: ignore[arg-type]
            continue
        try:
            kwargs[key] = coerce(value, tp)
        except _Invalid as invalid:
            problems.append(Problem(path, f"got {value!r}; expected {invalid}.", lines.get(path)))
    return cls(**kwargs)


def to_dict(spec: Any) -> Any:
    """Plain JSON-able data (tuples become lists) of a spec or section."""
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        return {f.name: to_dict(getattr(spec, f.name)) for f in dataclasses.fields(spec)}
    if isinstance(spec, (tuple, list)):
        return [to_dict(v) for v in spec]
    if isinstance(spec, dict):
        return {k: to_dict(v) for k, v in spec.items()}
    return spec


# --------------------------------------------------------------------------------------------
# Dotted keys


def field_type(dotted: str) -> Any:
    """The declared type of a dotted key, or raise KeyError naming the closest valid key."""
    cls: Any = ExperimentSpec
    parts = dotted.split(".")
    for index, part in enumerate(parts):
        known = _fields(cls)
        if part not in known:
            here = ".".join(parts[:index])
            choices = [f"{here}.{k}" if here else k for k in known]
            raise KeyError(f"{_closest(dotted, all_keys()) or _closest(part, choices)}")
        tp = _hints(cls)[part]
        if index == len(parts) - 1:
            return tp
        if not dataclasses.is_dataclass(tp):
            raise KeyError("")
        cls = tp
    return cls


def all_keys(cls: Any = ExperimentSpec, prefix: str = "") -> list[str]:
    """Every settable dotted key (leaves only)."""
    keys: list[str] = []
    for name, tp in _hints(cls).items():
        path = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(tp):
            keys.extend(all_keys(tp, path))
        else:
            keys.append(path)
    return keys


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``value`` at a dotted path in nested plain dicts, creating levels as needed.

    Keys under ``sweep.grid`` / ``sweep.zip`` are themselves dotted keys, so the path stops there.
    """
    parts = dotted.split(".")
    if len(parts) > 2 and parts[0] == "sweep" and parts[1] in ("grid", "zip"):
        parts = [parts[0], parts[1], ".".join(parts[2:])]
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def replace_dotted(spec: ExperimentSpec, values: Mapping[str, Any]) -> ExperimentSpec:
    """A new spec with already-coerced ``values`` set at their dotted keys."""
    grouped: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for dotted, value in values.items():
        section, _, name = dotted.partition(".")
        if name:
            grouped.setdefault(section, {})[name] = value
        else:
            top[section] = value
    for section, changes in grouped.items():
        top[section] = dataclasses.replace(getattr(spec, section), **changes)
    return dataclasses.replace(spec, **top)


def spec_from_dict(data: Mapping[str, Any]) -> ExperimentSpec:
    """Rebuild a resolved spec saved with :func:`to_dict` (no sweep re-validation)."""
    problems: list[Problem] = []
    spec = build(ExperimentSpec, data, "", problems, {})
    if problems:
        raise SpecError(problems)
    return spec


def field_help(cls: Any = ExperimentSpec, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) of every leaf field, for documentation and --help."""
    rows: list[tuple[str, str, str]] = []
    hints = _hints(cls)
    instance = cls()
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(field_help(tp, path))
        else:
            default = json.dumps(to_dict(getattr(instance, f.name)))
            rows.append((path, default, f.metadata.get("help", "")))
    return rows
