"""Snapshots along training, the choice among them, and which LoRA a stage uses.

The integration tests train the tiny model in real processes (``jobs/train.py``), stop it on
request and kill it with SIGKILL at a moment chosen by the clock, and compare the snapshots of the
resumed run byte for byte with those of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cover_hpc.spec.schema import ValidateConfig
from cover_hpc.spec.vocab import CheckpointError
from cover_hpc.stages.select import Choice, SelectionError, select
from cover_hpc.store.paths import RunPaths
from cover_hpc.store.records import SelectionPoint
from cover_hpc.store.snapshots import lora_points, resolve_checkpoint, snapshot_steps

from .conftest import REPO
from .test_train import env_for, run_dir, train, write_spec

# --------------------------------------------------------------------------------------------
# Units


def test_snapshot_steps_are_inside_the_run_and_merge_both_keys() -> None:
    assert snapshot_steps(ValidateConfig(every_steps=4), 12) == [4, 8]  # 12 is the final LoRA
    assert snapshot_steps(ValidateConfig(every_steps=5, at_steps=(3, 5, 40)), 12) == [3, 5, 10]
    assert snapshot_steps(ValidateConfig(), 12) == []


def record(step: int, kind: str, **metrics: float | None) -> SelectionPoint:
    return SelectionPoint(f"step-{step:08d}", step, kind, metrics)


def test_selection_takes_the_metric_in_its_direction_and_never_the_base_model() -> None:
    records = [
        record(0, "base", clip_score=30.0, cmmd=0.1, heldout_loss=0.05),
        record(4, "snapshot", clip_score=12.0, cmmd=2.0, heldout_loss=0.30),
        record(8, "snapshot", clip_score=14.5, cmmd=1.5, heldout_loss=0.20),
        record(12, "final", clip_score=13.0, cmmd=1.0, heldout_loss=0.25),
    ]
    assert select(records, "clip_score") == Choice("clip_score", "max", 8, 14.5, "snapshot")
    assert select(records, "cmmd").step == 12  # lower is better
    assert select(records, "heldout_loss").step == 8
    tie = [record(4, "snapshot", clip_score=14.0), record(8, "final", clip_score=14.0)]
    assert select(tie, "clip_score").step == 4  # a tie goes to the earlier, less trained LoRA
    partial = [record(4, "snapshot", ocr_exact=None), record(8, "final", ocr_exact=0.5)]
    assert select(partial, "ocr_exact").step == 8
    with pytest.raises(SelectionError, match=r"no LoRA point has a ocr_similarity value; it needs validate\.ocr"):
        select(partial, "ocr_similarity")
    with pytest.raises(SelectionError, match="is not one of"):
        select(records, "fid")


def fake_run(root: Path, steps: list[int], final: int | None) -> RunPaths:
    paths = RunPaths(root)
    paths.train.mkdir(parents=True)
    for step in steps:
        paths.snapshot(step).mkdir(parents=True)
        (paths.snapshot(step) / "pytorch_lora_weights.safetensors").write_bytes(b"snapshot %d" % step)
    if final is not None:
        paths.lora_weights.write_bytes(b"final")
        paths.train_result.write_text(json.dumps({"steps": final}))
    return paths


def test_checkpoint_choice_resolves_to_a_file_or_says_what_exists(tmp_path: Path) -> None:
    unfinished = fake_run(tmp_path / "unfinished", [4], None)
    with pytest.raises(CheckpointError, match="has not finished training"):
        resolve_checkpoint(unfinished, "final", None)
    paths = fake_run(tmp_path / "run", [4, 8], 12)
    (paths.snapshots / ".tmp-step-00000010-99").mkdir()  # a staging folder of a killed writer: not a point
    assert [(p.step, p.final) for p in lora_points(paths)] == [(4, False), (8, False), (12, True)]
    assert resolve_checkpoint(paths, "final", None).weights == paths.lora_weights
    assert resolve_checkpoint(paths, "8", None).weights.read_bytes() == b"snapshot 8"
    assert resolve_checkpoint(paths, "12", None).final
    with pytest.raises(CheckpointError, match="no snapshot at step 6; its LoRA points are at steps 4, 8, 12"):
        resolve_checkpoint(paths, "6", None)
    selection = tmp_path / "selection.json"
    with pytest.raises(CheckpointError, match="no selection yet"):
        resolve_checkpoint(paths, "best", selection)
    selection.write_text(json.dumps({"best": {"step": 4}, "select_by": "cmmd"}))
    assert resolve_checkpoint(paths, "best", selection).step == 4
    assert resolve_checkpoint(paths, "best", selection, "cmmd").step == 4
    with pytest.raises(CheckpointError, match=r"chose by cmmd, but validate\.select_by is clip_score; validate again"):
        resolve_checkpoint(paths, "best", selection, "clip_score")  # changed since: not the old choice, silently
    for broken in ('{"best": {"step": 4', '{"best": null}', "[]"):
        selection.write_text(broken)
        with pytest.raises(CheckpointError, match=r"is not a selection cover-hpc wrote.*delete it and validate again"):
            resolve_checkpoint(paths, "best", selection)
    selection.write_text(json.dumps({"best": {"step": 4}}))
    only_final = fake_run(tmp_path / "plain", [], 12)
    assert resolve_checkpoint(only_final, "best", selection.with_name("none.json")).final  # one LoRA: the best
    with pytest.raises(ValueError, match="not best, final or a step number"):
        resolve_checkpoint(paths, "latest", None)


def test_the_ema_lora_is_its_own_point_at_the_last_step(tmp_path: Path) -> None:
    """train.ema: train/ema/ is a point of kind ema at the last step, beside the final LoRA; it is
    validated (its own name, kind and lock byte), can be selected, and infer.checkpoint=best finds it."""
    from cover_hpc.spec.schema import ExperimentSpec
    from cover_hpc.stages.validate import run_points

    paths = fake_run(tmp_path / "run", [4, 8], 12)
    paths.ema.mkdir()
    (paths.ema / "pytorch_lora_weights.safetensors").write_bytes(b"ema")
    points = lora_points(paths)
    assert [(p.name, p.kind) for p in points] == [
        ("step-00000004", "snapshot"), ("step-00000008", "snapshot"), ("step-00000012", "final"),
        ("ema-step-00000012", "ema"),
    ]  # fmt: skip
    jobs = run_points(ExperimentSpec(), paths)
    assert [(j.name, j.kind) for j in jobs if j.kind != "base"] == [(p.name, p.kind) for p in points]
    assert len({j.slot for j in jobs}) == len(jobs)  # each its own byte of the validation lock
    assert resolve_checkpoint(paths, "final", None).weights == paths.lora_weights
    assert resolve_checkpoint(paths, "12", None).final  # a step number names the run's own LoRA
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps({"best": {"step": 12, "kind": "ema"}}))
    assert resolve_checkpoint(paths, "best", selection).weights.read_bytes() == b"ema"
    selection.write_text(json.dumps({"best": {"step": 12, "kind": "final"}}))
    assert resolve_checkpoint(paths, "best", selection).final
    records = [record(8, "snapshot", clip_score=14.0), record(12, "final", clip_score=14.5),
               record(12, "ema", clip_score=15.0)]  # fmt: skip
    assert select(records, "clip_score") == Choice("clip_score", "max", 12, 15.0, "ema")
    records[-1] = record(12, "ema", clip_score=14.5)
    assert select(records, "clip_score").kind == "final"  # a tie at one step: the run's own LoRA


# --------------------------------------------------------------------------------------------
# Through training


def snapshot_bytes(run: Path) -> dict[str, bytes]:
    folder = RunPaths(run).snapshots
    return {p.parent.name: p.read_bytes() for p in sorted(folder.glob("step-*/pytorch_lora_weights.safetensors"))}


@pytest.mark.tiny
@pytest.mark.slow
def test_snapshots_are_bit_identical_after_a_stop_and_after_kill_9(
    tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path
) -> None:
    sections = {"validate": {"every_steps": 2}, "train": {"batch_size": 4, "max_steps": 10, "mixed_precision": "no",
                "checkpoint_every": 3, "checkpoints_kept": 2, "seed": 1}}  # fmt: skip
    straight = run_dir(write_spec(tmp_path / "straight", tiny_model_dir, demo_data_dir, **sections))
    train(straight)
    expected = snapshot_bytes(straight)
    assert sorted(expected) == [f"step-{s:08d}" for s in (2, 4, 6, 8)]  # step 10 is the final LoRA
    assert len({v for v in expected.values()}) == 4

    # stopped on request at step 5 (after snapshot 4, before checkpoint 6), then resumed
    stopped = run_dir(write_spec(tmp_path / "stopped", tiny_model_dir, demo_data_dir, **sections))
    train(stopped, stop_after=5)
    assert sorted(snapshot_bytes(stopped)) == [f"step-{s:08d}" for s in (2, 4)]
    train(stopped)
    assert snapshot_bytes(stopped) == expected

    # killed with SIGKILL as soon as snapshot 6 is on disk: the newest checkpoint is older (step 6
    # is written before its checkpoint), so the resumed run retraces steps and meets snapshot 6 again
    killed = run_dir(write_spec(tmp_path / "killed", tiny_model_dir, demo_data_dir, **sections))
    process = subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "train.py"), str(killed)], env=env_for(2), cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    target = RunPaths(killed).snapshot(6)
    deadline = time.monotonic() + 600
    while not target.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not RunPaths(killed).train_result.exists(), "the run finished before it could be killed"
    train(killed)
    assert snapshot_bytes(killed) == expected
    assert not list(RunPaths(killed).snapshots.glob(".tmp-*"))  # staging left by the kill is cleared


def test_canonical_safetensors_is_byte_stable_and_loads_back(tmp_path: Path) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from cover_hpc.model.lora import canonical_safetensors

    tensors = {"b.weight": torch.randn(3, 4), "a.weight": torch.randn(2, 2).to(torch.bfloat16),
               "c.index": torch.arange(5), "empty": torch.zeros(0, 3)}  # fmt: skip
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    save_file(tensors, str(first), metadata={"format": "pt", "lora_adapter_metadata": "{}"})
    save_file(dict(reversed(tensors.items())), str(second), metadata={"lora_adapter_metadata": "{}", "format": "pt"})
    for path in (first, second):
        canonical_safetensors(path)
    assert first.read_bytes() == second.read_bytes()
    back = load_file(str(first))
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in tensors.items())
    with safe_open(str(first), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt", "lora_adapter_metadata": "{}"}


def test_validation_scores_finished_covers_beside_the_raw_art(tmp_path: Path, demo_data_dir: Path) -> None:
    """With infer.typeset, each validation cover also gets the exact title typeset over it; the
    finished covers are read back by the same OCR as the raw art, and their contrast is measured."""
    from PIL import Image

    from cover_hpc.spec.schema import ExperimentSpec, InferConfig
    from cover_hpc.stages.validate import Item, Scorers
    from cover_hpc.store.paths import ValidationPaths

    spec = ExperimentSpec(infer=InferConfig(typeset=True))
    photos = sorted((demo_data_dir / "test_set").glob("*.jpg"))[:2]
    arts = [Image.open(p).convert("RGB").resize((576, 768)) for p in photos]
    items = [Item(0, "a", "p", None, ("literary",), 0, "The Quiet Harbour", "Ana Núñez"),
             Item(1, "b", "p", None, ("fantasy",), 1, "Glyph \U00013000 Missing")]  # fmt: skip
    scorers = Scorers(spec, ValidationPaths(tmp_path / "v"), [])
    finished = scorers.finished(items, arts, tmp_path / "point" / "finished")
    assert (finished["covers"], finished["not_set"]) == (1, 1)
    first, missing = finished["per_image"]
    assert (tmp_path / "point" / first["image"]).is_file() and first["contrast"] >= 4.5
    assert first["similarity"] >= 0.9 and finished["ocr_similarity"] == first["similarity"]
    assert "U+13000" in missing["error"] and "image" not in missing
    assert finished["contrast_min"] == first["contrast"]
    assert first["readers"] and set(first["readers"]) <= {"rapidocr", "tesseract"}
    # validate.ocr off: the finished covers are made and their contrast measured, but nothing is read
    import dataclasses

    no_ocr = dataclasses.replace(spec, validate=dataclasses.replace(spec.validate, ocr=False))
    quiet = Scorers(no_ocr, ValidationPaths(tmp_path / "w"), []).finished(items, arts, tmp_path / "quiet")
    assert (quiet["covers"], quiet["ocr_similarity"], quiet["ocr_exact"]) == (1, None, None)
    assert quiet["contrast_min"] == finished["contrast_min"] and "read" not in quiet["per_image"][0]
