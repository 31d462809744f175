"""The training stage: SDXL LoRA on the UNet and both text encoders, resumable bit for bit.

``train_run(run_dir)`` is what a SLURM task, a local process and a test all call. It reads the
run's resolved config, resumes from the newest complete checkpoint if there is one, trains, and
writes ``pytorch_lora_weights.safetensors``, a kohya export and ``train_result.json`` (last).

Exact resume rests on three things: data order is a pure function of (seed, epoch, rank)
(:class:`cover_hpc.store.data.EpochBatchSampler`); every random draw of a step (latent sample, noise,
timesteps) comes from a generator seeded by (seed, step, micro-batch, rank), not from a global
RNG stream; and the checkpoint holds the LoRA weights, optimizer, LR schedule, RNG states and
data position.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import resource
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from cover_hpc.model.ema import EMA_STATE, LoraEMA
from cover_hpc.model.encoding import encode_chunks, tokenize_chunks
from cover_hpc.model.lora import (
    PARTS,
    SDXLParts,
    add_adapters,
    export_kohya,
    load_parts,
    lora_layers,
    save_lora,
    write_snapshot,
)
from cover_hpc.runtime import env, preemption
from cover_hpc.spec.schema import ExperimentSpec, to_dict
from cover_hpc.store import atomic, checkpoint, locks, snapshots
from cover_hpc.store.cache import DiskCache, file_key, latent_cache, module_hash, text_cache, text_key
from cover_hpc.store.data import DataError, EpochBatchSampler, Sample, load_pixels, report_bad, scan
from cover_hpc.store.paths import KOHYA_WEIGHTS, RunPaths
from cover_hpc.store.records import TrainResult, read_record, write_record
from cover_hpc.store.runs import count_requeues, record_start

log = logging.getLogger(__name__)
LORA_STATE = "lora_state.safetensors"

#: Set (by SLURM's signals, see cover_hpc.runtime.preemption, or anything else) to ask training to checkpoint
#: and stop at the next step.
STOP = preemption.STOP


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# --------------------------------------------------------------------------------------------
# Data


class TrainDataset(Dataset[dict[str, Any]]):
    """Items of the usable samples: cached latent statistics (or pixels) and cached embeddings (or captions)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        latents: dict[tuple[int, int], DiskCache] | None,
        text: DiskCache | None,
    ) -> None:
        self.samples = list(samples)
        self.latents = latents
        self.text = text
        self.keys = [file_key(s.path) for s in self.samples] if latents else []

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        item: dict[str, Any] = {"index": index, "time_ids": torch.tensor(sample.time_ids, dtype=torch.float32)}
        if self.latents is not None:
            entry = self.latents[sample.target_size].get(self.keys[index])
            item["latent_mean"], item["latent_std"] = entry["mean"], entry["std"]
        else:
            item["pixels"] = load_pixels(sample.path, sample.target_size)
        if self.text is not None:
            entry = self.text.get(text_key(sample.caption))
            item["prompt_embeds"], item["pooled"] = entry["prompt_embeds"], entry["pooled"]
        else:
            item["caption"] = sample.caption
        return item


class Collate:
    """Stacks tensors and tokenizes captions into 77-token chunks for both encoders."""

    def __init__(self, tokenizer: Any, tokenizer_2: Any, max_caption_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2
        self.max_caption_tokens = max_caption_tokens

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for key in items[0]:
            if key == "caption":
                captions = [item[key] for item in items]
                batch["ids"] = tokenize_chunks(self.tokenizer, captions, self.max_caption_tokens)
                batch["ids_2"] = tokenize_chunks(self.tokenizer_2, captions, self.max_caption_tokens)
            elif key == "index":
                batch[key] = torch.tensor([item[key] for item in items])
            else:
                batch[key] = torch.stack([item[key] for item in items])
        return batch


def prepare_latents(
    samples: list[Sample], vae: Any, root: Path, dist: env.DistEnv, device: torch.device, barrier: Callable[[], None]
) -> tuple[dict[tuple[int, int], DiskCache], list[Sample], list[tuple[str, str]]]:
    """Fill the latent cache (each rank its share of what is missing); returns caches, usable samples, bad ones."""
    vae_hash = module_hash(vae)
    caches = {size: latent_cache(root, vae_hash, size) for size in {s.target_size for s in samples}}
    # Share the work by position in the sample list, never by what is missing: ranks look at
    # the cache at different moments, and lists of "missing" would not partition the same way.
    mine = [s for s in samples[dist.rank :: dist.world_size] if caches[s.target_size].missing([file_key(s.path)])]
    if dist.is_main:
        todo = sum(1 for s in samples if caches[s.target_size].missing([file_key(s.path)]))
        log.info("latent cache %s: %d of %d images to encode", root, todo, len(samples))
    vae.to(device)
    for sample in mine:  # one at a time: sizes differ per bucket and a bad file must not sink a batch
        cache, key = caches[sample.target_size], file_key(sample.path)
        try:
            pixels = load_pixels(sample.path, sample.target_size).unsqueeze(0)
        except (OSError, ValueError) as error:
            cache.mark_bad(key, f"unreadable image ({error})")
            continue
        with torch.no_grad():
            latent = vae.encode(pixels.to(device, torch.float32)).latent_dist
        cache.put(key, {"mean": latent.mean[0], "std": latent.std[0]})
    barrier()
    usable, bad = [], []
    for sample in samples:
        key = file_key(sample.path)
        reason = caches[sample.target_size].bad_reason(key)
        if reason is not None:
            bad.append((sample.path.name, reason))
        elif caches[sample.target_size].has(key):
            usable.append(sample)
        else:
            raise RuntimeError(f"latent cache entry for {sample.path} vanished; is another job clearing {root}?")
    return caches, usable, bad


def prepare_text(
    samples: list[Sample], parts: SDXLParts, spec: ExperimentSpec, root: Path, dist: env.DistEnv,
    device: torch.device, dtype: torch.dtype, barrier: Callable[[], None],
) -> DiskCache:  # fmt: skip
    """Cache the frozen text encoders' embeddings of every caption (used when no encoder is trained)."""
    max_tokens = spec.data.max_caption_tokens
    identity = f"{max_tokens}|{dtype}|" + module_hash(parts.text_encoder) + module_hash(parts.text_encoder_2)
    cache = text_cache(root, module_hash(torch.nn.Identity(), identity))
    # the empty caption too when samples are trained on it (data.caption_dropout): its own key, same encoding
    captions = sorted({s.caption for s in samples} | ({""} if spec.data.caption_dropout else set()))
    mine = [c for c in captions[dist.rank :: dist.world_size] if not cache.has(text_key(c))]
    parts.text_encoder.to(device)
    parts.text_encoder_2.to(device)
    for start in range(0, len(mine), 8):
        chunk = mine[start : start + 8]
        ids = tokenize_chunks(parts.tokenizer, chunk, max_tokens).to(device)
        ids_2 = tokenize_chunks(parts.tokenizer_2, chunk, max_tokens).to(device)
        with torch.no_grad():
            embeds, pooled = encode_chunks(parts.text_encoder, parts.text_encoder_2, ids, ids_2)
        for index, caption in enumerate(chunk):
            cache.put(text_key(caption), {"prompt_embeds": embeds[index].to(dtype), "pooled": pooled[index].to(dtype)})
    barrier()
    return cache


# --------------------------------------------------------------------------------------------
# The trained module


class SDXLLora(torch.nn.Module):
    """The UNet and (unless their embeddings are cached) both text encoders, as one module.

    accelerate refuses several models in one ``prepare`` under DeepSpeed, and DDP syncs one
    module's gradients in one pass: holding all three in one module solves both.
    """

    def __init__(self, unet: Any, text_encoder: Any | None, text_encoder_2: Any | None) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        time_ids: torch.Tensor,
        ids: torch.Tensor | None = None,
        ids_2: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if prompt_embeds is None:
            assert ids is not None and ids_2 is not None
            prompt_embeds, pooled = encode_chunks(self.text_encoder, self.text_encoder_2, ids, ids_2)
        assert pooled is not None
        conditions = {"text_embeds": pooled, "time_ids": time_ids.to(pooled.dtype)}
        return self.unet(noisy, timesteps, prompt_embeds, added_cond_kwargs=conditions).sample

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().float().cpu().contiguous() for name, p in self.named_parameters() if p.requires_grad}


def caption_drop_mask(rate: float, count: int, generator: torch.Generator) -> torch.Tensor | None:
    """Which of a micro-batch's ``count`` samples train on the empty caption (each with probability
    ``rate``), drawn from the micro-batch's seeded generator: the same at every start. None (and no
    draw, so every other draw stays as it was) when ``rate`` is 0."""
    if not rate:
        return None
    return torch.rand(count, generator=generator, device=generator.device) < rate


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """Seed of one micro-batch's random draws: a pure function of where it sits in the run."""
    return ((seed * 1_000_003 + step) * 1_009 + micro) * 65_537 + rank


# --------------------------------------------------------------------------------------------
# Set-up


@dataclass
class Setup:
    spec: ExperimentSpec
    paths: RunPaths
    dist: env.DistEnv
    accelerator: Any
    model: Any
    optimizer: Any
    lr_scheduler: Any
    noise_scheduler: Any
    loader: DataLoader[dict[str, Any]]
    sampler: EpochBatchSampler
    vae: Any | None
    scaling_factor: float
    adapted: dict[str, int]
    total_steps: int
    steps_per_epoch: int
    deepspeed: bool
    #: The empty caption's cached embeddings (prompt_embeds, pooled) or token ids (ids, ids_2), each
    #: of batch 1, when data.caption_dropout is on.
    empty_caption: dict[str, torch.Tensor] | None = None


def make_accelerator(spec: ExperimentSpec, dist: env.DistEnv) -> Any:
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    cuda = torch.cuda.is_available()
    timeout = datetime.timedelta(minutes=spec.distributed.timeout_min)
    if dist.world_size > 1 and not cuda:
        PartialState(cpu=True, backend="gloo", timeout=timeout)  # accelerate picks no backend without a GPU
    kwargs: dict[str, Any] = {
        "mixed_precision": spec.train.mixed_precision,
        "cpu": not cuda,
        "kwargs_handlers": [InitProcessGroupKwargs(timeout=timeout)],
    }
    if spec.distributed.backend == "deepspeed":
        micro = spec.train.batch_size
        config = {
            "train_micro_batch_size_per_gpu": micro,
            "gradient_accumulation_steps": spec.train.grad_accum,
            "train_batch_size": micro * spec.train.grad_accum * dist.world_size,
            "zero_optimization": {"stage": spec.distributed.zero_stage},
            "gradient_clipping": spec.optim.max_grad_norm,
            "fp16": {"enabled": spec.train.mixed_precision == "fp16"},
            "bf16": {"enabled": spec.train.mixed_precision == "bf16"},
            "zero_allow_untested_optimizer": True,
        }
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=config)
        kwargs.pop("cpu")
    else:
        kwargs["gradient_accumulation_steps"] = spec.train.grad_accum
    return Accelerator(**kwargs)


def _barrier(accelerator: Any) -> Callable[[], None]:
    return lambda: accelerator.wait_for_everyone()


def load_samples(spec: ExperimentSpec) -> tuple[list[Sample], list[tuple[str, str]]]:
    folder = Path(spec.data.train_dir)
    samples, bad = scan(folder, spec.data, decode=not spec.data.cache_latents)
    return samples, [(b.file, b.reason) for b in bad]


def build(spec: ExperimentSpec, paths: RunPaths) -> Setup:
    """Everything training needs, ready to run (no step taken yet)."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    dist = env.dist_env()
    env.export_torch_env(dist)
    accelerator = make_accelerator(spec, dist)
    # after the Accelerator: accelerate resets the thread count on CPU, and too many threads on
    # shared cores make every process crawl (OpenMP spin-waits)
    torch.set_num_threads(env.cpu_threads(dist))
    log.info(
        "rank %d of %d on %s %s, %d CPU threads, rendezvous %s:%d",
        dist.rank, dist.world_size, socket.gethostname(), accelerator.device, torch.get_num_threads(),
        dist.master_addr, dist.master_port,
    )  # fmt: skip
    device = accelerator.device
    barrier = _barrier(accelerator)
    deepspeed = spec.distributed.backend == "deepspeed"
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(spec.train.mixed_precision, torch.float32)

    parts = load_parts(spec.model)
    samples, bad = load_samples(spec)
    cache_root = Path(spec.data.cache_dir or Path(spec.data.train_dir).parent / ".cover_hpc_cache")
    latents = None
    if spec.data.cache_latents:
        latents, samples, more_bad = prepare_latents(samples, parts.vae, cache_root, dist, device, barrier)
        bad += more_bad
    from cover_hpc.store.data import BadSample

    report_bad(Path(spec.data.train_dir), [BadSample(f, r) for f, r in bad], spec.data.on_bad_sample)
    if not samples:
        raise DataError(f"no usable training samples in {spec.data.train_dir}")
    train_text = [p for p in ("text_encoder", "text_encoder_2") if p in spec.lora.parts]
    text = None
    if not train_text and spec.data.cache_latents:
        text = prepare_text(samples, parts, spec, cache_root, dist, device, weight_dtype, barrier)

    adapted = add_adapters(parts, spec.lora, spec.train.seed)
    for part in PARTS:  # frozen base weights in the compute dtype, trained adapters in fp32
        module = parts.part(part)
        module.to(device, weight_dtype)
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
    if spec.train.gradient_checkpointing:
        parts.unet.enable_gradient_checkpointing()
        for part in train_text:
            parts.part(part).gradient_checkpointing_enable()
    encoders = (None, None) if text is not None else (parts.text_encoder, parts.text_encoder_2)
    bundle = SDXLLora(parts.unet, *encoders)

    lrs = {"unet": spec.optim.lr_unet, "text_encoder": spec.optim.lr_text_encoder,
           "text_encoder_2": spec.optim.lr_text_encoder_2}  # fmt: skip
    groups = []
    for part in PARTS:
        params = [p for p in parts.part(part).parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": lrs[part], "name": part})
    optimizer = torch.optim.AdamW(
        groups,
        betas=spec.optim.betas,
        eps=spec.optim.eps,
        weight_decay=spec.optim.weight_decay,
        fused=torch.cuda.is_available() or None,
    )
    sampler = EpochBatchSampler(
        [s.target_size for s in samples], spec.train.batch_size, spec.train.seed,
        dist.rank, dist.world_size, spec.train.grad_accum,
    )  # fmt: skip
    steps_per_epoch = sampler.batches_per_rank // spec.train.grad_accum
    total_steps = spec.train.max_steps or spec.train.epochs * steps_per_epoch
    lr_scheduler = get_scheduler(
        spec.optim.schedule, optimizer, num_warmup_steps=spec.optim.warmup_steps, num_training_steps=total_steps
    )
    loader: DataLoader[dict[str, Any]] = DataLoader(
        TrainDataset(samples, latents, text),
        batch_sampler=sampler,
        collate_fn=Collate(parts.tokenizer, parts.tokenizer_2, spec.data.max_caption_tokens),
        num_workers=spec.data.num_workers,
        generator=torch.Generator().manual_seed(spec.train.seed),  # keeps iterators off the global RNG
    )
    model, optimizer = accelerator.prepare(bundle, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    _register_lora_hooks(accelerator, deepspeed)

    noise_scheduler = DDPMScheduler.from_config(parts.scheduler_config)
    if spec.train.prediction_type:
        noise_scheduler.register_to_config(prediction_type=spec.train.prediction_type)
    vae = None if latents is not None else parts.vae.to(device, torch.float32)
    write_provenance(spec, paths, dist, accelerator, cache_root)
    empty_caption = None
    if spec.data.caption_dropout and text is not None:
        empty_caption = {k: v.unsqueeze(0).to(device) for k, v in text.get(text_key("")).items()}
    elif spec.data.caption_dropout:
        max_tokens = spec.data.max_caption_tokens
        empty_caption = {"ids": tokenize_chunks(parts.tokenizer, [""], max_tokens).to(device),
                         "ids_2": tokenize_chunks(parts.tokenizer_2, [""], max_tokens).to(device)}  # fmt: skip
    return Setup(
        spec, paths, dist, accelerator, model, optimizer, lr_scheduler, noise_scheduler, loader, sampler, vae,
        float(parts.vae.config.scaling_factor), adapted, total_steps, steps_per_epoch, deepspeed, empty_caption,
    )  # fmt: skip


def write_provenance(
    spec: ExperimentSpec, paths: RunPaths, dist: env.DistEnv, accelerator: Any, cache_root: Path
) -> None:
    """Rank 0 writes ``train/provenance.json`` at the run's first start (see cover_hpc.store.provenance);
    every rank gives its host and device."""
    from accelerate.utils import gather_object

    from cover_hpc.model.weights import ModelRef, locate
    from cover_hpc.store import provenance

    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    nodes = gather_object([provenance.Node(dist.rank, socket.gethostname(), name)])
    if not dist.is_main or paths.provenance.is_file():
        return
    model = spec.model
    folder = locate(ModelRef("model.pretrained", model.pretrained, "pipeline", model.revision, model.variant)).path
    vae = locate(ModelRef("model.vae", model.vae, "vae")).path if model.vae else None
    ranked = sorted(nodes, key=lambda node: node.rank)
    write_record(paths.provenance, provenance.provenance(spec, to_dict(spec), cache_root, ranked, folder, vae))


def _register_lora_hooks(accelerator: Any, deepspeed: bool) -> None:
    """Checkpoint only the adapter weights (never the frozen base model) outside DeepSpeed."""
    from safetensors.torch import load_file, save_file

    if deepspeed:
        return  # DeepSpeed saves through save_checkpoint(exclude_frozen_parameters=True)

    def save_hook(models: list[Any], weights: list[Any], output_dir: str) -> None:
        weights.clear()
        if accelerator.is_main_process:
            bundle = accelerator.unwrap_model(models[0])
            save_file(bundle.trainable_state(), str(Path(output_dir) / LORA_STATE))

    def load_hook(models: list[Any], input_dir: str) -> None:
        bundle = accelerator.unwrap_model(models.pop())
        state = load_file(str(Path(input_dir) / LORA_STATE))
        expected = {name for name, p in bundle.named_parameters() if p.requires_grad}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
            raise RuntimeError(
                f"checkpoint {input_dir} does not match this run's adapters: missing {missing}, extra {extra}"
            )
        with torch.no_grad():
            params = dict(bundle.named_parameters())
            for name, value in state.items():
                params[name].copy_(value.to(params[name].dtype))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


# --------------------------------------------------------------------------------------------
# One step


def compute_loss(setup: Setup, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
    spec, device = setup.spec, setup.accelerator.device
    batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    if "latent_mean" in batch:
        noise_shape = batch["latent_mean"].shape
        draw = torch.randn(noise_shape, generator=generator, device=device)
        latents = (batch["latent_mean"] + batch["latent_std"] * draw) * setup.scaling_factor
    else:
        assert setup.vae is not None
        with torch.no_grad():
            posterior = setup.vae.encode(batch["pixels"].float()).latent_dist
            latents = posterior.sample(generator=generator) * setup.scaling_factor
    noise = torch.randn(latents.shape, generator=generator, device=device)
    if spec.train.noise_offset:
        offset = torch.randn((*latents.shape[:2], 1, 1), generator=generator, device=device)
        noise = noise + spec.train.noise_offset * offset
    steps = setup.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (latents.shape[0],), generator=generator, device=device).long()
    dropped = caption_drop_mask(spec.data.caption_dropout, latents.shape[0], generator)
    if dropped is not None and setup.empty_caption is not None:  # drawn last: the draws above stay as they were
        for key, empty in setup.empty_caption.items():
            shape = (-1,) + (1,) * (batch[key].dim() - 1)
            batch[key] = torch.where(dropped.view(shape), empty.to(batch[key].dtype), batch[key])
    noisy = setup.noise_scheduler.add_noise(latents, noise, timesteps)
    if setup.deepspeed and spec.train.mixed_precision != "no":
        # DeepSpeed holds the model in half precision and accelerate then autocasts nothing: the
        # inputs are handed over in the model's dtype (the loss below is still taken in fp32)
        half = torch.bfloat16 if spec.train.mixed_precision == "bf16" else torch.float16
        noisy = noisy.to(half)
        batch = {
            k: v.to(half) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in batch.items()
        }
    prediction = setup.model(
        noisy, timesteps, batch["time_ids"], ids=batch.get("ids"), ids_2=batch.get("ids_2"),
        prompt_embeds=batch.get("prompt_embeds"), pooled=batch.get("pooled"),
    )  # fmt: skip
    velocity = setup.noise_scheduler.config.prediction_type == "v_prediction"
    target = setup.noise_scheduler.get_velocity(latents, noise, timesteps) if velocity else noise
    per_sample = (prediction.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
    if spec.train.min_snr_gamma:
        alphas = setup.noise_scheduler.alphas_cumprod.to(device)[timesteps]
        snr = alphas / (1 - alphas)
        clipped = snr.clamp(max=spec.train.min_snr_gamma)
        per_sample = per_sample * (clipped / (snr + 1) if velocity else clipped / snr)
    return per_sample.mean()


# --------------------------------------------------------------------------------------------
# The loop


class Metrics:
    """Per-step metrics (rank 0) through the tracker (cover_hpc.track): the JSONL file, TensorBoard, wandb and
    MLflow as the spec's track section asks; and a progress bar or log lines."""

    def __init__(self, setup: Setup, start_step: int) -> None:
        self.setup = setup
        self.enabled = setup.dist.is_main
        self.bar: Any = None
        self.tracker: Any = None
        if not self.enabled:
            return
        path = setup.paths.metrics
        if path.is_file():  # drop steps a stopped start did after its last checkpoint
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            kept = [line for line in lines if json.loads(line)["step"] <= start_step]
            atomic.write_text(path, "".join(f"{line}\n" for line in kept))
        from cover_hpc.track import open_tracker

        # the JSONL file, TensorBoard and the spec's trackers (track): one interface, steps logged once
        self.tracker = open_tracker(
            setup.spec, setup.paths, "train", jsonl=path, tensorboard=setup.paths.tensorboard,
            purge_step=start_step + 1,
        )  # fmt: skip
        if env.is_interactive():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=setup.total_steps, initial=start_step, desc="train", unit="step")

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        step = record["step"]
        self.tracker.log(record, step)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}")
        elif step % self.setup.spec.train.log_every == 0 or step == self.setup.total_steps:
            log.info(
                "step %d/%d  epoch %d  loss %.5f  %.2f samples/s",
                step, self.setup.total_steps, record["epoch"], record["loss"], record["samples_per_s"],
            )  # fmt: skip

    def close(self, finished: bool = False, failed: bool = False) -> None:
        if self.tracker is not None:
            self.tracker.close(finished, failed)
        if self.bar is not None:
            self.bar.close()


def save_checkpoint(setup: Setup, progress: checkpoint.Progress, ema: LoraEMA | None = None) -> None:
    """Every rank writes its part; rank 0 publishes the folder once all are done (with the EMA's
    weights, which every rank holds alike)."""
    accelerator, root = setup.accelerator, setup.paths.checkpoints
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        checkpoint.clear_staging(root, progress.step)
    accelerator.wait_for_everyone()
    extra = {"exclude_frozen_parameters": True} if setup.deepspeed else {}
    accelerator.save_state(str(checkpoint.temporary_dir(root, progress.step)), **extra)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ema is not None:
            ema.save(checkpoint.temporary_dir(root, progress.step) / EMA_STATE)
        checkpoint.publish(root, progress.step, progress, to_dict(setup.spec))
        checkpoint.prune(root, setup.spec.train.checkpoints_kept)
    accelerator.wait_for_everyone()


def resume(setup: Setup, ema: LoraEMA | None = None) -> checkpoint.Progress:
    """Load the newest complete checkpoint (and ``ema``'s weights from it), or return the progress
    of a fresh start."""
    fresh = checkpoint.Progress(0, 0, 0, setup.dist.world_size, 1, 0.0, 0.0)
    folder = checkpoint.latest(setup.paths.checkpoints)
    if folder is None:
        return fresh
    progress, _ = checkpoint.read_progress(folder)
    if progress.world_size != setup.dist.world_size:
        raise RuntimeError(
            f"checkpoint {folder} was written by {progress.world_size} processes, this start has "
            f"{setup.dist.world_size}; resume with the same slurm.nodes x gpus_per_node (data order depends on it)"
        )
    extra = {"load_module_strict": False} if setup.deepspeed else {}
    setup.accelerator.load_state(str(folder), **extra)
    if ema is not None:
        ema.load(folder / EMA_STATE)
    log.info("rank %d resumed from %s (step %d, epoch %d)", setup.dist.rank, folder, progress.step, progress.epoch)
    return dataclasses.replace(progress, starts=progress.starts + 1)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: Statuses of a training that is over: trained to its last step, or stopped for good by a judge.
DONE = ("finished", "pruned")


def _judged(setup: Setup, judge: Judge | None, step: int) -> bool:
    """Rank 0 asks the judge; every rank gets its answer."""
    verdict = bool(judge(step)) if judge is not None and setup.dist.is_main else False
    flag = torch.tensor(float(verdict), device=setup.accelerator.device)
    return bool(setup.accelerator.reduce(flag, reduction="sum") > 0)


def run_loop(
    setup: Setup,
    progress: checkpoint.Progress,
    stop_after: int | None,
    judge: Judge | None = None,
    judge_steps: Sequence[int] = (),
    ema: LoraEMA | None = None,
) -> tuple[checkpoint.Progress, str, float | None]:
    """Train until the last step, a stop request or a judge's stop (updating ``ema`` after every
    optimizer step); returns the progress, status and last loss."""
    metrics = Metrics(setup, progress.step)
    try:
        final, status, last_loss = _loop(setup, progress, stop_after, judge, judge_steps, ema, metrics)
    except BaseException:
        metrics.close(failed=True)  # the trackers mark the run failed; a requeue or resume continues it
        raise
    metrics.close(finished=status in DONE)
    return final, status, last_loss


def _loop(
    setup: Setup, progress: checkpoint.Progress, stop_after: int | None, judge: Judge | None,
    judge_steps: Sequence[int], ema: LoraEMA | None, metrics: Metrics,
) -> tuple[checkpoint.Progress, str, float | None]:  # fmt: skip
    spec, accelerator, device = setup.spec, setup.accelerator, setup.accelerator.device
    step, epoch, position = progress.step, progress.epoch, progress.batch_in_epoch
    loss_sum, elapsed = progress.loss_sum, progress.elapsed_s
    last_loss: float | None = None
    accum = spec.train.grad_accum
    samples_per_step = spec.train.batch_size * accum * setup.dist.world_size
    generator = torch.Generator(device=device)
    trainable = [p for p in setup.model.parameters() if p.requires_grad]
    status = "finished" if step >= setup.total_steps else ""
    rungs = sorted(s for s in set(judge_steps) if 0 < s < setup.total_steps)
    snapshot_at = set(snapshots.snapshot_steps(spec.validate, setup.total_steps)) | set(rungs)
    if setup.dist.is_main:
        snapshots.clear_staging(setup.paths)
    for rung in [r for r in rungs if r <= step]:  # passed before this start's checkpoint: asked again
        if not status and _judged(setup, judge, rung):
            status = "pruned"
    started = time.perf_counter()
    step_started = started
    accumulated = torch.zeros((), device=device)
    while not status:
        setup.sampler.set_epoch(epoch, skip=position)
        for batch in setup.loader:
            micro = position % accum
            with accelerator.accumulate(setup.model):
                generator.manual_seed(step_seed(spec.train.seed, step, micro, setup.dist.rank))
                loss = compute_loss(setup, batch, generator)
                accelerator.backward(loss)
                if accelerator.sync_gradients and spec.optim.max_grad_norm > 0 and not setup.deepspeed:
                    accelerator.clip_grad_norm_(trainable, spec.optim.max_grad_norm)
                setup.optimizer.step()
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    setup.lr_scheduler.step()
                setup.optimizer.zero_grad(set_to_none=True)
            position += 1
            accumulated += loss.detach() / accum
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.update(step)  # step: the optimizer steps before this one
            step += 1
            wants_stop = STOP.is_set() or (stop_after is not None and step >= stop_after)
            flags = torch.stack([accumulated, torch.tensor(float(wants_stop), device=device)])
            flags = accelerator.reduce(flags, reduction="sum")
            accumulated = torch.zeros((), device=device)
            last_loss = float(flags[0]) / setup.dist.world_size
            if not math.isfinite(last_loss):
                raise TrainingDiverged(
                    f"loss became {last_loss} at step {step} (epoch {epoch}); stopped without saving it. The last "
                    f"good checkpoint in {setup.paths.checkpoints} is kept: lower the learning rates, raise "
                    "optim.warmup_steps, check train.noise_offset, or use bf16 instead of fp16"
                )
            loss_sum += last_loss
            now = time.perf_counter()
            lrs = {
                group.get("name", str(i)): group["lr"]
                for i, group in enumerate(setup.lr_scheduler.optimizer.param_groups)
            }
            speed = samples_per_step / max(now - step_started, 1e-9)
            metrics.log({"step": step, "epoch": epoch, "loss": last_loss, "lr": lrs, "samples_per_s": speed})
            step_started = now
            end_of_epoch = position >= setup.sampler.batches_per_rank
            here = checkpoint.Progress(
                step, epoch + end_of_epoch, 0 if end_of_epoch else position, setup.dist.world_size, progress.starts,
                loss_sum, elapsed + now - started,
            )  # fmt: skip
            if step in snapshot_at and setup.dist.is_main:  # before the checkpoint: a resume never skips it
                write_snapshot(setup.paths, step, adapted_parts(setup))
            if step >= setup.total_steps:
                status = "finished"
            elif step in rungs and _judged(setup, judge, step):  # decided before the checkpoint is written
                status = "pruned"
            elif flags[1] > 0:
                status = "stopped"
            if status or step % spec.train.checkpoint_every == 0:
                save_checkpoint(setup, here, ema)
            if status:
                break
        else:
            epoch, position = epoch + 1, 0
            continue
    final = checkpoint.Progress(
        step, epoch, position, setup.dist.world_size, progress.starts, loss_sum, elapsed + time.perf_counter() - started
    )
    return final, status, last_loss


def adapted_parts(setup: Setup) -> dict[str, Any]:
    """The trained models by part name (unet, text_encoder, text_encoder_2), unwrapped."""
    bundle = setup.accelerator.unwrap_model(setup.model)
    return {p: getattr(bundle, p) for p in PARTS if p in setup.adapted}


def export_weights(setup: Setup) -> tuple[Path, Path]:
    """Rank 0: the LoRA in diffusers format (checked key by key) and the kohya export."""
    parts = adapted_parts(setup)
    weights = save_lora(setup.paths.train, parts)
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        keys = set(handle.keys())
    for part, module in parts.items():
        expected = {f"{part}.{key}" for key in lora_layers(module)}
        if expected - keys:
            raise RuntimeError(f"{weights} lacks {len(expected - keys)} {part} adapter tensors")
    kohya = export_kohya(weights, setup.paths.kohya_weights)
    return weights, kohya


def export_ema(setup: Setup, ema: LoraEMA) -> Path:
    """Rank 0: the EMA of the LoRA weights in diffusers format and its kohya export, in ``train/ema/``."""
    with ema.swapped():
        weights = save_lora(setup.paths.ema, adapted_parts(setup))
    export_kohya(weights, setup.paths.ema / KOHYA_WEIGHTS)
    return weights


#: Asked on rank 0 at each of its steps (a search's rungs, after the snapshot there is written):
#: True stops the run there, for good (status "pruned"). It must give the same answer when asked
#: again for a step (a resumed run asks again for the rungs it passed before its checkpoint).
Judge = Callable[[int], bool]


def train(
    spec: ExperimentSpec,
    paths: RunPaths,
    stop_after: int | None = None,
    judge: Judge | None = None,
    judge_steps: Sequence[int] = (),
) -> TrainResult:
    """Train one run (resuming if it has a checkpoint); see the module docstring.

    Each rank holds its slot of the run's training lock throughout, so a second training of the
    same run (a second submission, a hand-started one) is turned away before it touches a file. A
    run that already finished is left as it is. Its inputs (the training folder, the models named
    as folders) are checked first: one refused leaves the run folder as it was.
    """
    env.set_offline_defaults()
    rank = env.dist_env().rank
    finished = finished_result(paths)
    if finished is None:
        check_inputs(spec)
    with locks.held(paths.train_lock, f"training of run {paths.root.name} (rank {rank})", slot=rank):
        finished = finished_result(paths)
        if finished is not None:
            log.info("run %s finished training before (%s); left as it is", paths.root.name, paths.train_result)
            return finished
        if rank == 0:
            record_start(paths)
        if STOP.is_set():  # stopped while starting up: nothing new to save, the last checkpoint stands
            step = (checkpoint.read_progress(latest)[0].step if (latest := checkpoint.latest(paths.checkpoints))
                    else 0)  # fmt: skip
            log.warning("stop requested (%s) before training started; stopping at step %d", preemption.received(),
                        step)  # fmt: skip
            return TrainResult(
                status="stopped", steps=step, total_steps=0, epochs=0.0, final_loss=None, mean_loss=None,
                wall_time_s=0.0, samples_per_s=0.0, peak_memory_mb=0.0, requeues=count_requeues(paths), world_size=0,
            )  # fmt: skip
        return _train(spec, paths, stop_after, judge, judge_steps)


def check_inputs(spec: ExperimentSpec) -> None:
    """Refuse, before anything is written, a training folder without its metadata and a base model
    (or VAE) named as a folder that does not exist."""
    from cover_hpc.stages.inputs import check_data_folder, check_models

    check_data_folder(spec.data.train_dir, "data.train_dir")
    check_models(spec, ("model.pretrained", "model.vae"))


def finished_result(paths: RunPaths) -> TrainResult | None:
    """The result of a run whose training finished (its result and LoRA are on disk), else None;
    :class:`cover_hpc.store.records.RecordError` when its ``train_result.json`` is not one."""
    if not (paths.train_result.is_file() and paths.lora_weights.is_file()):
        return None
    return read_record(paths.train_result, TrainResult)


def _train(
    spec: ExperimentSpec, paths: RunPaths, stop_after: int | None, judge: Judge | None, judge_steps: Sequence[int]
) -> TrainResult:
    paths.train.mkdir(parents=True, exist_ok=True)
    setup = build(spec, paths)
    ema = None
    if spec.train.ema:  # from the initial adapters, before a resume loads the checkpoint's average
        ema = LoraEMA(setup.accelerator.unwrap_model(setup.model), spec.train.ema_decay, spec.train.ema_warmup_steps)
    progress = resume(setup, ema)
    final, status, last_loss = run_loop(setup, progress, stop_after, judge, judge_steps, ema)
    weights = kohya = None
    if status in DONE and setup.dist.is_main:
        if ema is not None:  # before the run's own LoRA: a finished run has its EMA LoRA too
            export_ema(setup, ema)
        weights, kohya = export_weights(setup)
    steps_done = final.step
    result = TrainResult(
        status=status,
        steps=steps_done,
        total_steps=setup.total_steps,
        epochs=steps_done / max(setup.steps_per_epoch, 1),
        final_loss=last_loss,
        mean_loss=final.loss_sum / steps_done if steps_done else None,
        wall_time_s=final.elapsed_s,
        samples_per_s=steps_done
        * spec.train.batch_size
        * spec.train.grad_accum
        * setup.dist.world_size
        / max(final.elapsed_s, 1e-9),
        peak_memory_mb=_peak_memory_mb(setup.accelerator.device),
        requeues=count_requeues(paths),
        world_size=setup.dist.world_size,
        lora_weights=str(weights) if weights else None,
        kohya_weights=str(kohya) if kohya else None,
    )
    if status in DONE and setup.dist.is_main:
        write_record(paths.train_result, result)
    setup.accelerator.wait_for_everyone()
    setup.accelerator.end_training()
    return result


def train_run(run_dir: Path, stop_after: int | None = None) -> TrainResult:
    """Train the run whose folder holds its resolved ``config.json``."""
    from cover_hpc.stages.inputs import check_run_folder
    from cover_hpc.store.runs import load_run_spec

    paths = RunPaths(Path(run_dir).absolute())
    check_run_folder(paths)
    return train(load_run_spec(paths), paths, stop_after)
