"""Training data: imagefolder reading, captions, bad-sample reports, resizing, buckets, data order.

Data order is a pure function of (seed, epoch, rank, world size): :class:`EpochBatchSampler`
permutes with a generator seeded from the seed and the epoch, so a resumed run replays exactly
the batches the uninterrupted run would have seen, by skipping the ones already consumed.
Nothing here draws from a global RNG.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import torch
from PIL import Image

from cover_hpc.spec.schema import SIZE_MULTIPLE, DataConfig
from cover_hpc.store.captions import Book, book_caption

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
    """A sample left out, and why.

    ``file`` names it as reports show it: its metadata line and image file
    (``metadata.jsonl:3: a.jpg``), the line alone when it names no file (``metadata.jsonl:5``),
    or the image file alone when found later by the latent cache, which knows only the file
    (:func:`report_bad` then adds the line). Two plain strings, so it travels as a tuple.
    """

    file: str
    reason: str


@dataclass(frozen=True)
class MetadataRow:
    line: int  # 1-based line of the metadata file where the row starts
    values: dict[str, Any]


@dataclass(frozen=True)
class Metadata:
    """The rows of an imagefolder's metadata file, and its lines that hold no row (and why)."""

    path: Path
    rows: list[MetadataRow]
    bad_lines: list[BadSample]

    def where(self, line: int) -> str:
        return f"{self.path.name}:{line}"


_UTF8_BOM = b"\xef\xbb\xbf"
_UNDECODED = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of bytes that are not UTF-8


def _utf8_bytes(path: Path) -> bytes:
    """A text file's bytes without a UTF-8 byte-order mark (Windows editors write one)."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path} is UTF-16 (or UTF-32) text; save it as UTF-8")
    return data.removeprefix(_UTF8_BOM)


def _not_utf8(error: UnicodeDecodeError) -> str:
    return f"bytes that are not UTF-8 (0x{error.object[error.start]:02x} at byte {error.start + 1} of the line)"


def _jsonl_metadata(path: Path) -> Metadata:
    metadata = Metadata(path, [], [])
    # split the bytes, not the text: str.splitlines would also cut at U+2028 inside a JSON string
    for number, raw in enumerate(_utf8_bytes(path).splitlines(), start=1):
        where = metadata.where(number)
        try:
            line = raw.decode("utf-8")
            row = json.loads(line) if line.strip() else None
        except UnicodeDecodeError as error:
            metadata.bad_lines.append(BadSample(where, _not_utf8(error)))
        except json.JSONDecodeError as error:
            metadata.bad_lines.append(BadSample(where, f"not valid JSON ({error.msg})"))
        else:
            if isinstance(row, dict):
                metadata.rows.append(MetadataRow(number, row))
            elif row is not None:
                metadata.bad_lines.append(BadSample(where, f"expected a JSON object, got {type(row).__name__}"))
    return metadata


def _csv_metadata(path: Path) -> Metadata:
    metadata = Metadata(path, [], [])
    # a CSV record may span lines (quoted newlines), so decode the whole file, keeping bad bytes
    # as escapes, and skip the records that hold any
    reader = csv.reader(io.StringIO(_utf8_bytes(path).decode("utf-8", "surrogateescape"), newline=""))
    try:
        header = next(reader, [])
        if _UNDECODED.search("".join(header)):
            raise DataError(f"{path}:1: the header has bytes that are not UTF-8; save the file as UTF-8")
        previous = reader.line_num
        for values in reader:
            number, previous = previous + 1, reader.line_num
            bad_byte = _UNDECODED.search("".join(values))
            if bad_byte:
                byte = ord(bad_byte.group()) - 0xDC00
                metadata.bad_lines.append(BadSample(metadata.where(number), f"bytes that are not UTF-8 (0x{byte:02x})"))
            elif values:
                metadata.rows.append(MetadataRow(number, dict(zip(header, values, strict=False))))
    except csv.Error as error:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({error})") from None
    return metadata


def load_metadata(folder: Path) -> Metadata:
    """``metadata.jsonl`` (or ``metadata.csv``) of an imagefolder, read line by line.

    A UTF-8 byte-order mark is accepted. A line that is not valid JSON, not a JSON object or not
    UTF-8 is listed in ``bad_lines`` (for the ``data.on_bad_sample`` policy), not raised.
    """
    jsonl, table = folder / "metadata.jsonl", folder / "metadata.csv"
    if jsonl.is_file():
        return _jsonl_metadata(jsonl)
    if table.is_file():
        return _csv_metadata(table)
    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder}; set data.train_dir / data.test_dir to an imagefolder")
    raise DataError(f"{folder} has neither metadata.jsonl nor metadata.csv (Hugging Face imagefolder layout)")


def read_metadata(folder: Path) -> list[dict[str, Any]]:
    """Rows of ``metadata.jsonl`` (or ``metadata.csv``); a line that holds no row is refused, by file and line."""
    metadata = load_metadata(folder)
    if metadata.bad_lines:
        first = metadata.bad_lines[0]
        raise DataError(f"{metadata.path.parent / first.file}: {first.reason}; fix or remove that line")
    return [row.values for row in metadata.rows]


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
    """Usable samples of an imagefolder, and every bad one with its metadata line and reason.

    Bad: a metadata line that holds no row, a row with no file name or caption, an unreadable
    image, and a second row for a file already listed (only the first row of a file counts, so
    an image is never trained twice). ``decode=False`` reads only image headers (the latent cache
    decodes what it has not cached).
    """
    metadata = load_metadata(folder)
    buckets = bucket_sizes(config.size) if config.buckets else [config.size]
    samples: list[Sample] = []
    bad = list(metadata.bad_lines)
    first_line: dict[str, int] = {}
    for row in metadata.rows:
        where, name = metadata.where(row.line), row.values.get(config.image_column)
        if not isinstance(name, str) or not name:
            bad.append(BadSample(where, f"no '{config.image_column}' value (data.image_column)"))
            continue
        where, key = f"{where}: {name}", os.path.normpath(name)
        if key in first_line:
            bad.append(BadSample(where, f"listed again: line {first_line[key]} already has it; that first row is used"))
            continue
        first_line[key] = row.line
        sample = _sample(folder / name, row_caption(row.values, config), config, buckets, decode)
        if isinstance(sample, Sample):
            samples.append(sample)
        else:
            bad.append(BadSample(where, sample))
    return samples, bad


def _sample(
    path: Path, caption: str, config: DataConfig, buckets: Sequence[tuple[int, int]], decode: bool
) -> Sample | str:
    """The sample of one metadata row, or why it cannot be used."""
    if not caption:
        return f"missing or empty caption ('{config.caption_column}' column, data.caption_column)"
    try:
        with Image.open(path) as image:
            width, height = image.size
            if decode:
                to_rgb(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return f"unreadable image ({error})"
    original = (height, width)
    target = nearest_bucket(original, buckets) if config.buckets else config.size
    return Sample(path, caption, original, target)


def _metadata_places(folder: Path, image_column: str) -> dict[str, str]:
    """``metadata.jsonl:N: name`` of each listed file, by its name and by its base name when unique."""
    try:
        metadata = load_metadata(folder)
    except (DataError, OSError):
        return {}
    places: dict[str, str] = {}
    names = [(row, row.values.get(image_column)) for row in metadata.rows]
    listed = [(row, name) for row, name in names if isinstance(name, str) and name]
    base_counts = Counter(Path(name).name for _, name in listed)
    for row, name in reversed(listed):  # the first row of a file is the one used
        places[name] = f"{metadata.where(row.line)}: {name}"
        if base_counts[Path(name).name] == 1:
            places[Path(name).name] = places[name]
    return places


def report_bad(folder: Path, bad: Sequence[BadSample], policy: str, image_column: str = "file_name") -> None:
    """Log every bad sample by metadata line and file; raise when the policy is 'fail'.

    A bad sample named by its image file alone (the latent cache knows only files) is given its
    metadata line here, looked up by ``image_column``.
    """
    if not bad:
        return
    places = _metadata_places(folder, image_column)
    listing = "\n".join(f"  {places.get(item.file, item.file)}: {item.reason}" for item in bad)
    if policy == "fail":
        raise DataError(
            f"{len(bad)} bad sample(s) in {folder}:\n{listing}\n"
            "fix or remove them, or set data.on_bad_sample: skip to train without them"
        )
    log.warning("skipping %d bad sample(s) in %s:\n%s", len(bad), folder, listing)


# PIL's convert() clips samples above 255, so a 16-bit PNG would train as a white page: these
# modes are scaled instead, from the full scale their files use. 16-bit PNG, PGM and TIFF open
# as I;16* (older Pillow, and Pillow's 16-bit PGM, give I); 32-bit integer TIFFs (I) have no
# standard range and are taken as 16-bit too; float images (F) as 0..1, as float TIFFs hold.
_FULL_SCALE = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}
_PAPER = (255, 255, 255, 255)


def _scaled_to_gray(image: Image.Image) -> Image.Image:
    """An I;16*, I or F image as 8-bit L (LA when a sample value is marked transparent)."""
    samples = numpy.nan_to_num(numpy.asarray(image, dtype=numpy.float64))  # a NaN float sample is black
    scaled = numpy.clip(numpy.rint(samples * (255 / _FULL_SCALE[image.mode])), 0, 255)
    gray = Image.fromarray(scaled.astype(numpy.uint8))
    key = image.info.get("transparency")
    if isinstance(key, int):  # a 16-bit PNG's tRNS value, in 16-bit units
        gray.putalpha(Image.fromarray(numpy.where(samples == key, 0, 255).astype(numpy.uint8)))
    return gray


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of an image in any mode PIL opens (1, L, LA, P, PA, RGB, RGBA, CMYK, YCbCr, LAB, HSV, I;16*, I, F).

    High-bit-depth gray is scaled to 8 bits (see ``_FULL_SCALE``); 16-bit RGB(A) PNGs need
    nothing, as PIL decodes them to their high byte, the scaled value. Transparency (an alpha
    band, a transparent palette entry or colour key) is composited over white: a cover's
    transparent margin is paper, and dropping the alpha would show whatever colour the
    transparent pixels happen to hold (often black).
    """
    if image.mode in _FULL_SCALE:
        image = _scaled_to_gray(image)
    if image.has_transparency_data:
        return Image.alpha_composite(Image.new("RGBA", image.size, _PAPER), image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def load_pixels(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """An image resized (no crop) to ``size`` = (height, width), as a float CHW tensor in [-1, 1]."""
    with Image.open(path) as image:
        rgb = to_rgb(image).resize((size[1], size[0]), Image.Resampling.BICUBIC)
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
