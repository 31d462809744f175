"""The typed, versioned records (cover_hpc.store.records): written and read back whole, files of the
release before schema_version read as version 1, and a file that is not a record is one line that
names it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cover_hpc.store.paths import RunPaths
from cover_hpc.store.records import (
    ArrayState,
    ManifestRow,
    Record,
    RecordError,
    Selection,
    SelectionBest,
    SelectionPoint,
    StatusBest,
    StatusRow,
    StatusStages,
    TrainResult,
    TrainState,
    ValidationPoint,
    append_record,
    read_record,
    read_record_lines,
    to_json,
    write_record,
    write_records,
)

TRAIN = TrainResult(
    status="finished", steps=12, total_steps=12, epochs=2.4, final_loss=0.125, mean_loss=0.2, wall_time_s=31.5,
    samples_per_s=1.5, peak_memory_mb=812.0, requeues=1, world_size=2, lora_weights="/r/train/w.safetensors",
    kohya_weights=None,
)  # fmt: skip
POINT = ValidationPoint(
    point="step-00000004", step=4, kind="snapshot", weights="/r/train/snapshots/step-00000004/w.safetensors",
    images="/r/validate/k/points/step-00000004/images",
    metrics={"clip_score": 21.5, "clip_score_short": None, "cmmd": 1.25, "heldout_loss": 0.125},
    heldout={"heldout_loss": 0.125, "per_timestep": {"500": 0.125}, "images": 2, "timesteps": [500]},
    clip={"clip_score": 21.5, "per_genre": {"fantasy": 21.5}, "per_image": [{"index": 0, "score": 21.5}]},
    cmmd={"generated": 2, "real": 3, "sigma": 10, "scale": 1000},
    timings={"generation_s": 1.5, "total_s": 2.0},
)  # fmt: skip
SELECTION = Selection(
    run_id="run-1", validation="test_set-0123abcd", select_by="cmmd", direction="min", num_prompts=3,
    best=SelectionBest(4, "snapshot", 1.25, "/r/train/snapshots/step-00000004/w.safetensors"),
    points=[SelectionPoint("base", 0, "base", {"cmmd": 2.0}), SelectionPoint("step-00000004", 4, "snapshot",
            {"cmmd": 1.25, "ocr_exact": None})],
)  # fmt: skip
ROW = ManifestRow(book_id="b1", prompt="Book Cover - ...", seed=7, seconds=0.5, checkpoint_step=4,
                  image="images/b1-0123456789.png")  # fmt: skip
TYPESET_ROW = ManifestRow(book_id="t3", prompt="p", seed=8, seconds=0.25, checkpoint_step=4, art="art/t3.png",
                          error="no glyph for U+13000")  # fmt: skip
STATUS = StatusRow(
    run_id="run-1", swept={"lora.rank": 4},
    stages=StatusStages(TrainState("done", "101"), ArrayState("running", ["102_0", "102_1"]),
                        ArrayState("not submitted", [])),
    step=12, total_steps=12, last_loss=0.125, clip_score=None, best=StatusBest(4, "snapshot", "cmmd", 1.25),
    requeues=0, lora="/r/train/w.safetensors", validation=None, manifest=None, report=None,
)  # fmt: skip


@pytest.mark.parametrize("record", [TRAIN, POINT, SELECTION, ROW, TYPESET_ROW, STATUS], ids=type)
def test_each_record_round_trips_with_its_version_first(tmp_path: Path, record: Record) -> None:
    path = tmp_path / "record.json"
    write_record(path, record)
    data = json.loads(path.read_text())
    assert next(iter(data)) == "schema_version" and data["schema_version"] == 1
    assert read_record(path, type(record)) == record
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, renamed


def test_json_keeps_the_field_names_of_the_files_before_records() -> None:
    assert to_json(SELECTION)["best"] == {"step": 4, "kind": "snapshot", "value": 1.25,
                                          "weights": "/r/train/snapshots/step-00000004/w.safetensors"}  # fmt: skip
    assert to_json(SELECTION)["points"][1] == {"point": "step-00000004", "step": 4, "kind": "snapshot",
                                               "metrics": {"cmmd": 1.25, "ocr_exact": None}}  # fmt: skip
    point = to_json(POINT)
    assert "ocr" not in point and "finished" not in point and point["cmmd"]["real"] == 3  # details only when made
    assert point["heldout"] is not None and point["weights"].endswith("w.safetensors")
    assert to_json(ROW) == {"schema_version": 1, "book_id": "b1", "prompt": "Book Cover - ...", "seed": 7,
                            "seconds": 0.5, "checkpoint_step": 4, "image": "images/b1-0123456789.png"}  # fmt: skip
    typeset = to_json(TYPESET_ROW)
    assert typeset["image"] is None and typeset["art"] == "art/t3.png" and "layout" not in typeset
    status = to_json(STATUS)
    assert status["stages"] == {"train": {"state": "done", "job": "101"},
                                "validate": {"state": "running", "jobs": ["102_0", "102_1"]},
                                "infer": {"state": "not submitted", "jobs": []}}  # fmt: skip
    assert status["best"] == {"step": 4, "kind": "snapshot", "metric": "cmmd", "value": 1.25}


# What the release before records (9d337f9) wrote: the same names, no schema_version.
OLD_TRAIN = {"status": "finished", "steps": 8, "total_steps": 8, "epochs": 1.6, "final_loss": 0.31,
             "mean_loss": 0.4, "wall_time_s": 20.1, "samples_per_s": 1.6, "peak_memory_mb": 900.5, "requeues": 0,
             "world_size": 1, "lora_weights": "/e/r/train/pytorch_lora_weights.safetensors",
             "kohya_weights": "/e/r/train/lora_kohya.safetensors"}  # fmt: skip
OLD_POINT = {"point": "base", "step": 0, "kind": "base", "weights": None, "images": "/e/baseline/abc",
             "metrics": {"clip_score": 20.0, "clip_score_short": 19.0, "cmmd": 3.0, "ocr_similarity": 0.25,
                         "ocr_exact": 0.0, "heldout_loss": None},
             "heldout": None, "clip": {"clip_score": 20.0, "per_genre": {}, "per_image": []},
             "ocr": {"per_image": [{"title": "T", "read": "t", "similarity": 1.0}]},
             "timings": {"generation_s": 3.0, "total_s": 4.0}}  # fmt: skip
OLD_SELECTION = {"run_id": "r", "validation": "test_set-0123abcd", "select_by": "clip_score", "direction": "max",
                 "num_prompts": 3, "best": {"step": 8, "kind": "final", "value": 21.0, "weights": "/e/r/w"},
                 "points": [{"point": "step-00000008", "step": 8, "kind": "final",
                             "metrics": {"clip_score": 21.0}}]}  # fmt: skip
OLD_ROWS = [{"book_id": "a", "prompt": "p", "seed": 1, "seconds": 0.5, "checkpoint_step": 8, "image": "images/a.png"},
            {"book_id": "t", "prompt": "p", "seed": 2, "seconds": 0.0, "art": "art/t.png", "image": "images/t.png",
             "layout": {"title": {"text": "T"}}, "contrast": 7.5, "ocr": {"title": {"similarity": 1.0}}}]  # fmt: skip


@pytest.mark.parametrize(
    ("cls", "data"), [(TrainResult, OLD_TRAIN), (ValidationPoint, OLD_POINT), (Selection, OLD_SELECTION)], ids=str
)
def test_a_file_of_the_release_before_records_reads_as_version_1(
    tmp_path: Path, cls: type[Record], data: dict[str, Any]
) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data, indent=2))
    record = read_record(path, cls)
    assert record.schema_version == 1
    assert to_json(record) == {"schema_version": 1, **data} | ({"heldout": None} if cls is ValidationPoint else {})


def test_old_manifest_lines_read_and_a_line_cut_by_a_kill_is_left_out(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest-0.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in OLD_ROWS) + '{"book_id": "cut", "pro')
    rows = read_record_lines(manifest, ManifestRow)
    assert [r.book_id for r in rows] == ["a", "t"] and rows[1].checkpoint_step is None and rows[1].contrast == 7.5
    assert [{k: v for k, v in to_json(r).items() if k != "schema_version"} for r in rows] == OLD_ROWS
    append_record(manifest, ROW)  # after the cut line: a line of its own
    assert [r.book_id for r in read_record_lines(manifest, ManifestRow)] == ["a", "t", "b1"]
    write_records(manifest, [ROW, TYPESET_ROW])
    assert read_record_lines(manifest, ManifestRow) == [ROW, TYPESET_ROW]


def one_line_error(error: pytest.ExceptionInfo[RecordError], path: Path) -> str:
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


def test_a_newer_version_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    for record in (TRAIN, POINT, SELECTION, STATUS):
        path = tmp_path / f"{type(record).__name__}.json"
        path.write_text(json.dumps(to_json(record) | {"schema_version": 2, "renamed": 1}))
        with pytest.raises(RecordError) as error:
            read_record(path, type(record))
        assert "schema_version 2, newer than this cover-hpc reads (up to 1)" in one_line_error(error, path)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps(OLD_ROWS[0]) + "\n" + json.dumps(to_json(ROW) | {"schema_version": 3}) + "\n")
    with pytest.raises(RecordError, match=r"manifest\.jsonl:2: a manifest line of schema_version 3") as error:
        read_record_lines(manifest, ManifestRow)
    one_line_error(error, manifest)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"run_id": "r", "best": {"step": 4', "not JSON (Expecting"),
        ("", "not JSON (Expecting value at line 1 column 1)"),
        ("[]", "expected a JSON object, got a list"),
        ("null", "expected a JSON object, got null"),
        (json.dumps({k: v for k, v in OLD_SELECTION.items() if k != "best"}), "best is missing"),
        (json.dumps(OLD_SELECTION | {"best": {"kind": "final"}}), "best.step is missing"),
        (json.dumps(OLD_SELECTION | {"best": None}), "best is null, expected an object"),
        (json.dumps(OLD_SELECTION | {"best": {**OLD_SELECTION["best"], "step": "8"}}),  # type: ignore[dict-item]
         'best.step is "8", expected an integer'),
        (json.dumps(OLD_SELECTION | {"points": [{"point": "p", "step": 1, "kind": "k", "metrics": {"a\nb": "x"}}]}),
         r'points[0].metrics["a\nb"] is "x", expected a number or null'),
        (json.dumps(OLD_SELECTION | {"schema_version": "2"}), 'schema_version is "2", not a version number'),
        (json.dumps(OLD_SELECTION | {"schema_version": 0}), "schema_version is 0, not a version number"),
    ],
)  # fmt: skip
def test_a_malformed_file_is_a_one_line_error_naming_the_file(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "selection.json"
    path.write_text(text)
    with pytest.raises(RecordError) as error:
        read_record(path, Selection)
    assert problem in one_line_error(error, path)


def test_a_file_that_is_not_utf8_is_a_record_error(tmp_path: Path) -> None:
    path = tmp_path / "train_result.json"
    path.write_bytes(b'{"status": "\xff"}')
    with pytest.raises(RecordError, match="not a UTF-8 text file") as error:
        read_record(path, TrainResult)
    one_line_error(error, path)
    with pytest.raises(FileNotFoundError):
        read_record(tmp_path / "missing.json", TrainResult)


def test_the_stages_read_through_the_records(tmp_path: Path) -> None:
    """What the stages read back (a finished training, the manifest lines, best/'s selection) is refused
    in one line naming the file, never a KeyError; the old layout is read as it is."""
    from cover_hpc.stages.infer import done_books
    from cover_hpc.stages.select import _same_best
    from cover_hpc.stages.train import finished_result

    paths = RunPaths(tmp_path / "run")
    paths.train.mkdir(parents=True)
    paths.lora_weights.write_bytes(b"weights")
    paths.train_result.write_text(json.dumps(OLD_TRAIN))
    result = finished_result(paths)
    assert result is not None and result.steps == 8 and result.kohya_weights == OLD_TRAIN["kohya_weights"]
    paths.train_result.write_text(json.dumps({"steps": 8}))
    with pytest.raises(RecordError, match=r"train_result\.json: not a train result cover-hpc can read: status is "
                                          "missing") as error:  # fmt: skip
        finished_result(paths)
    one_line_error(error, paths.train_result)

    images = tmp_path / "infer" / "images"
    images.mkdir(parents=True)
    (images / "a.png").write_bytes(b"png")
    manifest = tmp_path / "infer" / "manifest-0.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in OLD_ROWS))
    assert list(done_books(manifest, images)) == ["a"]  # t's image is not on disk
    manifest.write_text(json.dumps({"image": "images/a.png"}) + "\n")
    with pytest.raises(RecordError, match=r"manifest-0\.jsonl:1: not a manifest line cover-hpc can read: book_id"):
        done_books(manifest, images)

    best = tmp_path / "best"
    best.mkdir()
    (best / "selection.json").write_text('{"best": ')
    assert not _same_best(best, SELECTION)  # an unreadable old best/ is rebuilt


def test_a_new_layout_reads_the_older_one_through_its_upgrade(tmp_path: Path) -> None:
    """How a layout change goes: the class's schema_version default rises, and upgrade() turns an
    older file's JSON into the new layout (here: version 1 named the field "old_name")."""
    from dataclasses import dataclass

    @dataclass(frozen=True, kw_only=True)
    class Renamed(Record):
        WHAT = "renamed record"

        schema_version: int = 2
        name: str

        @classmethod
        def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
            return {"name": data.pop("old_name"), **data} if version == 1 else data

    path = tmp_path / "renamed.json"
    path.write_text(json.dumps({"old_name": "x"}))  # version 1: no schema_version
    assert read_record(path, Renamed) == Renamed(name="x")
    write_record(path, read_record(path, Renamed))
    assert json.loads(path.read_text()) == {"schema_version": 2, "name": "x"}
    path.write_text(json.dumps({"schema_version": 3, "name": "x"}))
    with pytest.raises(RecordError, match="a renamed record of schema_version 3, newer than this cover-hpc reads"):
        read_record(path, Renamed)
