"""The records the stages write as JSON and read back, typed and versioned, in one place.

- :class:`TrainResult`: ``<run>/train/train_result.json``, written once training finished;
- :class:`ValidationPoint`: ``<run>/validate/<key>/points/<point>/metrics.json``, one per scored
  point (the base model's also in ``<exp>/baseline/<key>/``);
- :class:`Selection`: ``selection.json`` of a validation, of the run and of ``best/``;
- :class:`ManifestRow`: a line of an inference manifest, ``<run>/infer/<key>/manifest[-k].jsonl``;
- :class:`StatusRow`: a row of ``cover-hpc status --json`` (not a file).

Each record carries ``schema_version``: its layout's number, written first. A file without it is
of version 1, the layout of the releases before records had one (the field names never changed),
so their files read as they are. A record of a newer version than this cover-hpc knows, a file
that is not JSON, not an object, or lacks a field (or holds one of the wrong type) is refused with
one line, :class:`RecordError`, that names the file (and the line of a JSONL file) and the field.
Fields this version does not know are left out when read.

A new layout raises the default of the class's ``schema_version`` and turns an older file's JSON
into the new layout in its :meth:`Record.upgrade`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from cover_hpc.store import atomic


class RecordError(ValueError):
    """A record file cover-hpc cannot read: not JSON, of a newer version, or without a field it needs."""


class Record:
    """A typed JSON record (a dataclass with ``schema_version``; see the module docstring)."""

    #: What the record is, in words (error messages).
    WHAT: ClassVar[str] = "record"
    #: Optional fields left out of the JSON while they are None (as the stages always wrote them).
    OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ()

    schema_version: int

    @classmethod
    def current_version(cls) -> int:
        """The version this cover-hpc writes: the default of the class's ``schema_version`` field."""
        default = {f.name: f for f in dataclasses.fields(typing.cast(Any, cls))}["schema_version"].default
        assert isinstance(default, int)
        return default

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """The JSON of an older ``version`` in the current layout (version 1 is the first: nothing to do)."""
        return data


R = TypeVar("R", bound=Record)


# --------------------------------------------------------------------------------------------
# The records


@dataclass(frozen=True, kw_only=True)
class TrainResult(Record):
    """What a training start ended with; written as ``train_result.json`` when finished."""

    WHAT = "train result"

    schema_version: int = 1
    status: str  # "finished", "pruned" (stopped for good by a search) or "stopped" (checkpointed: run again)
    steps: int
    total_steps: int
    epochs: float
    final_loss: float | None
    mean_loss: float | None
    wall_time_s: float
    samples_per_s: float
    peak_memory_mb: float
    requeues: int
    world_size: int
    lora_weights: str | None = None
    kohya_weights: str | None = None


@dataclass(frozen=True, kw_only=True)
class ValidationPoint(Record):
    """One scored point of a run's step axis (the base model, a snapshot or the final LoRA):
    its metrics and the detail behind them (``metrics.json`` of the point)."""

    WHAT = "validation point"
    OMIT_IF_NONE = ("cmmd", "ocr", "finished")

    schema_version: int = 1
    point: str  # "base" or "step-N"
    step: int
    kind: str  # "base", "snapshot" or "final"
    weights: str | None  # the LoRA file (None: the base model)
    images: str  # the folder of its covers
    metrics: dict[str, float | None]
    heldout: dict[str, Any] | None = None  # the held-out loss per timestep (validate.loss_images)
    clip: dict[str, Any]  # CLIP scores: mean, short, per genre, per image
    cmmd: dict[str, Any] | None = None  # how CMMD was computed (validate.cmmd with held-out covers)
    ocr: dict[str, Any] | None = None  # the titles read back (validate.ocr)
    finished: dict[str, Any] | None = None  # the finished covers typeset over the images (infer.typeset)
    timings: dict[str, float]


@dataclass(frozen=True)
class SelectionBest:
    """The chosen point of a selection."""

    step: int
    kind: str
    value: float | None  # its value of the metric it was chosen by
    weights: str | None  # its LoRA file


@dataclass(frozen=True)
class SelectionPoint:
    """A point as a selection keeps it: where it is on the step axis and its metrics."""

    point: str
    step: int
    kind: str
    metrics: dict[str, float | None]


@dataclass(frozen=True, kw_only=True)
class Selection(Record):
    """Every point's metrics and the choice among them (``selection.json``), by ``select_by``."""

    WHAT = "selection"

    schema_version: int = 1
    run_id: str
    validation: str  # the validation folder's name (its key)
    select_by: str
    direction: str  # "max" or "min"
    num_prompts: int | None = None
    best: SelectionBest
    points: list[SelectionPoint]


@dataclass(frozen=True, kw_only=True)
class ManifestRow(Record):
    """One book's cover in an inference manifest (a line of ``manifest.jsonl``). ``image`` is None
    when the title could not be typeset over the art (``error`` says why)."""

    WHAT = "manifest line"
    OMIT_IF_NONE = ("checkpoint_step", "art", "error", "layout", "contrast", "ocr")

    schema_version: int = 1
    book_id: str
    prompt: str
    seed: int
    seconds: float
    checkpoint_step: int | None = None  # the step of the LoRA it was made with
    image: str | None = None  # the cover, relative to the inference folder
    art: str | None = None  # infer.typeset: the generated art, relative to the inference folder
    error: str | None = None  # infer.typeset: why no finished cover
    layout: dict[str, Any] | None = None  # infer.typeset: where the text was set
    contrast: float | None = None  # infer.typeset: the text's lowest contrast
    ocr: dict[str, Any] | None = None  # infer.typeset_verify: the text read back


@dataclass(frozen=True)
class TrainState:
    state: str
    job: str | None


@dataclass(frozen=True)
class ArrayState:
    state: str
    jobs: list[str]


@dataclass(frozen=True)
class StatusStages:
    train: TrainState
    validate: ArrayState
    infer: ArrayState


@dataclass(frozen=True)
class StatusBest:
    step: int
    kind: str
    metric: str
    value: float | None


@dataclass(frozen=True)
class StatusHours:
    """A run's GPU-hours: its training jobs, its validation and inference jobs (known from the
    scheduler only), their total, and where they come from (sacct's jobs, or wall time x world size)."""

    train: float | None
    other: float | None
    total: float | None
    source: str


@dataclass(frozen=True, kw_only=True)
class StatusRow(Record):
    """One run in ``cover-hpc status``: swept values, each stage's state and jobs, progress, loss,
    CLIP score, the chosen point, requeues and the paths of what it made."""

    WHAT = "status row"

    schema_version: int = 1
    run_id: str
    swept: dict[str, Any]
    stages: StatusStages
    step: int | None
    total_steps: int | None
    last_loss: float | None
    clip_score: float | None
    best: StatusBest | None
    requeues: int
    lora: str | None
    validation: str | None
    manifest: str | None
    report: str | None
    gpu_hours: StatusHours | None = None  # absent from rows of releases before 0.2.x's status had them


# --------------------------------------------------------------------------------------------
# JSON


def to_json(record: Record) -> dict[str, Any]:
    """The JSON object of a record: ``schema_version`` first, then its fields in order."""
    data = _encode(record)
    assert isinstance(data, dict)
    return {"schema_version": data.pop("schema_version"), **data}


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        omit = getattr(type(value), "OMIT_IF_NONE", ())
        return {f.name: _encode(v) for f in dataclasses.fields(value)
                if not ((v := getattr(value, f.name)) is None and f.name in omit)}  # fmt: skip
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


class _Mismatch(Exception):
    """A value of the wrong type or a missing field, at ``where`` inside the record."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(where, problem)
        self.where, self.problem = where, problem


def from_json(cls: type[R], data: Any, source: str) -> R:
    """The record of class ``cls`` in ``data`` (parsed JSON) read from ``source`` (a file, a file:line);
    :class:`RecordError` naming ``source`` when it is not one."""
    what = f"{source}: not a {cls.WHAT} cover-hpc can read"
    if not isinstance(data, dict):
        raise RecordError(f"{what}: expected a JSON object, got {_kind(data)}")
    current = cls.current_version()
    version = data.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RecordError(f"{what}: schema_version is {_show(version)}, not a version number")
    if version > current:
        raise RecordError(
            f"{source}: a {cls.WHAT} of schema_version {version}, newer than this cover-hpc reads (up to "
            f"{current}); read it with the cover-hpc that wrote it, or a newer one"
        )
    if version < current:
        data = cls.upgrade(dict(data), version)
    try:
        values = _fields(cls, data, "")
    except _Mismatch as error:
        raise RecordError(f"{what}: {error.where} {error.problem}") from None
    values["schema_version"] = current
    return cls(**values)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        if item.name == "schema_version" and not prefix:
            continue
        where = f"{prefix}{item.name}"
        if item.name not in data:
            required = item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
            if required:
                raise _Mismatch(where, "is missing")
            continue
        values[item.name] = _value(data[item.name], hints[item.name], where)
    return values


def _value(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the type ``hint`` (nested dataclasses built)."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        options = typing.get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise _Mismatch(where, f"is null, expected {_name(hint)}")
        for option in options:
            if option is type(None):
                continue
            try:
                return _value(value, option, where)
            except _Mismatch:
                continue
        raise _Mismatch(where, f"is {_show(value)}, expected {_name(hint)}")
    if origin is list:
        if not isinstance(value, list):
            raise _Mismatch(where, f"is {_show(value)}, expected a list")
        (item,) = typing.get_args(hint) or (Any,)
        return [_value(v, item, f"{where}[{n}]") for n, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch(where, f"is {_show(value)}, expected an object")
        _, item = typing.get_args(hint) or (str, Any)
        return {k: _value(v, item, f"{where}.{k}" if k.isidentifier() else f"{where}[{json.dumps(k)}]")
                for k, v in value.items()}  # fmt: skip
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise _Mismatch(where, f"is {_show(value)}, expected an object")
        return hint(**_fields(hint, value, f"{where}."))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Mismatch(where, f"is {_show(value)}, expected a number")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Mismatch(where, f"is {_show(value)}, expected an integer")
        return value
    if hint in (str, bool):
        if not isinstance(value, hint):
            raise _Mismatch(where, f"is {_show(value)}, expected {_name(hint)}")
        return value
    if hint is type(None):
        if value is not None:
            raise _Mismatch(where, f"is {_show(value)}, expected null")
        return None
    raise TypeError(f"records: no JSON check for {hint!r} ({where})")  # a record class this module cannot read


def _name(hint: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", type(None): "null"}
    if hint in names:
        return names[hint]
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_name(a) for a in typing.get_args(hint))
    if origin is list:
        return "a list"
    return "an object"


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true or false", type(None): "null"}.get(
        type(value), "a number"
    )


def _show(value: Any) -> str:
    """A value in an error message: short, on one line."""
    if isinstance(value, dict | list):
        return _kind(value)
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------------------------
# Files


def write_record(path: Path, record: Record) -> None:
    """Write ``record`` to ``path`` as JSON, whole or not at all."""
    atomic.write_json(path, to_json(record))


def _text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise RecordError(
            f"{path}: not a UTF-8 text file (byte {error.start + 1}); not a record cover-hpc wrote"
        ) from None


def read_record(path: Path, cls: type[R]) -> R:
    """The record of class ``cls`` in the JSON file ``path``. OSError when it cannot be read (a
    missing file: FileNotFoundError); :class:`RecordError` naming it when it is not such a record."""
    text = _text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        where = f"{error.msg} at line {error.lineno} column {error.colno}"
        raise RecordError(f"{path}: not JSON ({where}); not a {cls.WHAT} cover-hpc wrote") from None
    return from_json(cls, data, str(path))


def record_line(record: Record) -> str:
    """A record as one JSON line of a JSONL file (ending in a line break)."""
    return json.dumps(to_json(record)) + "\n"


def append_record(path: Path, record: Record) -> None:
    """Append ``record`` as one line to the JSONL file ``path``, flushed: a line is whole once this
    returns. A last line cut short by a kill is ended first, so the new line stays a line of its own."""
    with path.open("a+b") as handle:
        end = handle.seek(0, os.SEEK_END)
        if end:
            handle.seek(end - 1)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
        handle.write(record_line(record).encode("utf-8"))
        handle.flush()


def write_records(path: Path, records: Iterable[Record]) -> None:
    """Write ``records``, one JSON line each, to ``path``, whole or not at all."""
    atomic.write_text(path, "".join(record_line(r) for r in records))


def read_record_lines(path: Path, cls: type[R]) -> list[R]:
    """The records of the JSONL file ``path``, in order. A line that is not JSON (or not UTF-8) is
    one a kill cut short while it was appended: it is left out. A JSON line that is not such a
    record is a :class:`RecordError` naming the file and line."""
    records = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw.decode("utf-8"))
        except ValueError:  # not JSON, or a character cut in two
            continue
        records.append(from_json(cls, data, f"{path}:{number}"))
    return records
