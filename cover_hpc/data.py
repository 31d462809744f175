"""Training data: imagefolder reading, captions, bad-sample reports, resizing, buckets, data order.

Data order is a pure function of (seed, epoch, rank, world size): :class:`EpochBatchSampler`
permutes with a generator seeded from the seed and the epoch, so a resumed run replays exactly
the batches the uninterrupted run would have seen, by skipping the ones already consumed.
Nothing here draws from a global RNG.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cover_hpc.config import SIZE_MULTIPLE, DataConfig
from cover_hpc.prompts import Book, book_caption

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Training data that cannot be used; the message names the files and the fix."""


@dataclass(frozen=True)
class Sample:
    """One usable training example."""

    path: Path
    caption: str
    original_size: tuple[int, int]  # (height, width) of the file on disk
    target_size: tuple[int, int]  # (height, width) it is resized to

    @property
    def time_ids(self) -> tuple[int, int, int, int, int, int]:
        """SDXL micro-conditioning: original size, crop top-left (never cropped), target size."""
        return (*self.original_size, 0, 0, *self.target_size)


@dataclass(frozen=True)
class BadSample:
    file: str
    reason: str


def read_metadata(folder: Path) -> list[dict[str, Any]]:
    """Rows of ``metadata.jsonl`` (or ``metadata.csv``) in an imagefolder."""
    jsonl, table = folder / "metadata.jsonl", folder / "metadata.csv"
    if jsonl.is_file():
        rows = []
        for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{jsonl}:{number}: not valid JSON ({error.msg}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise DataError(f"{jsonl}:{number}: expected a JSON object per line")
            rows.append(row)
        return rows
    if table.is_file():
        with table.open(encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder}; set data.train_dir / data.test_dir to an imagefolder")
    raise DataError(f"{folder} has neither metadata.jsonl nor metadata.csv (Hugging Face imagefolder layout)")


def row_caption(row: dict[str, Any], config: DataConfig) -> str:
    """The caption of a metadata row: the caption column, or the template over the book fields."""
    if config.caption_template:
        book = Book.from_json({"id": row.get("book_id") or row.get(config.image_column) or "?", **row})
        return book_caption(book)
    value = row.get(config.caption_column)
    return value.strip() if isinstance(value, str) else ""


def bucket_sizes(size: tuple[int, int]) -> list[tuple[int, int]]:
    """Sizes of about the same area as ``size`` at aspect ratios from 1:2 to 2:1, multiples of 64."""
    height, width = size
    area = height * width
    sizes = set()
    for h in range(SIZE_MULTIPLE, 2 * max(height, width) + 1, SIZE_MULTIPLE):
        w = max(SIZE_MULTIPLE, round(area / h / SIZE_MULTIPLE) * SIZE_MULTIPLE)
        if 0.5 <= h / w <= 2.0:
            sizes.add((h, w))
    return sorted(sizes)


def nearest_bucket(original: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    aspect = math.log(original[0] / original[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), b))


def scan(folder: Path, config: DataConfig, decode: bool) -> tuple[list[Sample], list[BadSample]]:
    """Usable samples of an imagefolder, and every bad one with its reason.

    ``decode=False`` reads only image headers (the latent cache decodes what it has not cached).
    """
    buckets = bucket_sizes(config.size) if config.buckets else [config.size]
    samples, bad = [], []
    for row in read_metadata(folder):
        name = row.get(config.image_column)
        if not isinstance(name, str) or not name:
            bad.append(BadSample(str(row)[:80], f"no '{config.image_column}' column (data.image_column)"))
            continue
        caption = row_caption(row, config)
        if not caption:
            bad.append(BadSample(name, f"missing or empty caption ('{config.caption_column}' column)"))
            continue
        path = folder / name
        try:
            with Image.open(path) as image:
                width, height = image.size
                if decode:
                    image.load()
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            bad.append(BadSample(name, f"unreadable image ({error})"))
            continue
        original = (height, width)
        target = nearest_bucket(original, buckets) if config.buckets else config.size
        samples.append(Sample(path, caption, original, target))
    return samples, bad


def report_bad(folder: Path, bad: Sequence[BadSample], policy: str) -> None:
    """Log every bad sample by name; raise when the policy is 'fail'."""
    if not bad:
        return
    listing = "\n".join(f"  {item.file}: {item.reason}" for item in bad)
    if policy == "fail":
        raise DataError(
            f"{len(bad)} bad sample(s) in {folder}:\n{listing}\n"
            "fix or remove them, or set data.on_bad_sample: skip to train without them"
        )
    log.warning("skipping %d bad sample(s) in %s:\n%s", len(bad), folder, listing)


def load_pixels(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """An image resized (no crop) to ``size`` = (height, width), as a float CHW tensor in [-1, 1]."""
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BICUBIC)
    data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(size[0], size[1], 3)
    return data.permute(2, 0, 1).float().div(127.5).sub(1.0)


class EpochBatchSampler:
    """Batches of one rank: a pure function of (seed, epoch, rank, world size).

    Each epoch: permute all samples, group them into batches within their size bucket (the
    incomplete tail of a bucket is dropped), shuffle the batch order, give rank ``r`` every
    ``world``-th batch, and cut each rank's list to a multiple of ``grad_accum`` so every rank
    runs the same number of whole optimizer steps.
    """

    def __init__(
        self,
        buckets: Sequence[tuple[int, int]],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        grad_accum: int = 1,
    ) -> None:
        self.buckets = list(buckets)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.grad_accum = grad_accum
        self.epoch = 0
        self.skip = 0
        groups: dict[tuple[int, int], int] = {}
        for bucket in self.buckets:
            groups[bucket] = groups.get(bucket, 0) + 1
        total = sum(count // batch_size for count in groups.values())
        per_rank = total // world_size
        self.batches_per_rank = per_rank - per_rank % grad_accum
        if self.batches_per_rank == 0:
            raise DataError(
                f"{len(self.buckets)} usable samples give no full step at batch {batch_size} x "
                f"{world_size} process(es) x {grad_accum} accumulation; add data or lower train.batch_size"
            )

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch and how many of this rank's batches were already consumed."""
        self.epoch = epoch
        self.skip = skip

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.buckets), generator=generator).tolist()
        by_bucket: dict[tuple[int, int], list[int]] = {}
        batches = []
        for index in order:
            members = by_bucket.setdefault(self.buckets[index], [])
            members.append(index)
            if len(members) == self.batch_size:
                batches.append(members[:])
                members.clear()
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        mine = shuffled[self.rank :: self.world_size]
        return mine[: self.batches_per_rank]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches(self.epoch)[self.skip :]

    def __len__(self) -> int:
        return self.batches_per_rank - self.skip
