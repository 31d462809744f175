"""Provenance of a run: the cached data fingerprint, the code revision, provenance.json and the model card."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from cover_hpc.store import provenance
from cover_hpc.store.provenance import Fingerprint, Provenance, code_revision, fingerprint, fingerprint_cache

from .conftest import REPO


def _data(folder: Path, count: int = 5) -> Path:
    folder.mkdir(parents=True)
    rows = []
    for index in range(count):
        (folder / f"{index}.png").write_bytes(bytes([index]) * (100 + index))
        rows.append(json.dumps({"file_name": f"{index}.png", "text": f"cover {index}"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    (folder / ".hidden").write_text("not data")
    return folder


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file whose bytes the fingerprint reads."""
    seen: list[Path] = []
    real = provenance.file_sha256

    def counting(path: Path) -> str:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(provenance, "file_sha256", counting)
    return seen


def test_the_fingerprint_is_cached_and_follows_a_changed_image(tmp_path: Path, reads: list[Path]) -> None:
    folder = _data(tmp_path / "train_set")
    cache = fingerprint_cache(tmp_path / "cache", folder)
    first = fingerprint(folder, cache)
    assert len(reads) == 6 and cache.is_file()  # 5 images and the metadata; hidden files left out
    assert (first.files, first.bytes) == (6, sum(p.stat().st_size for p in reads))
    reads.clear()
    assert fingerprint(folder, cache) == first
    assert reads == []  # the second start reads no image
    image = folder / "3.png"
    image.write_bytes(b"\x07" * 103)  # same size, other bytes
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 1_000_000_000))
    changed = fingerprint(folder, cache)
    assert reads == [image] and changed.sha256 != first.sha256
    assert fingerprint(folder) == changed  # the cache only saves reads: the same digest without it
    reads.clear()
    (folder / "4.png").unlink()
    assert fingerprint(folder, cache).sha256 not in (first.sha256, changed.sha256) and reads == []


def test_an_unwritable_cache_only_costs_reads(tmp_path: Path, reads: list[Path]) -> None:
    folder = _data(tmp_path / "train_set", 2)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert fingerprint(folder, blocker / "provenance" / "x.json") == fingerprint(folder)


def test_code_revision_never_fails(tmp_path: Path) -> None:
    assert code_revision(tmp_path) == "unknown"  # not a checkout
    (tmp_path / ".git").write_text("gitdir: /nowhere\n")  # a broken one
    assert code_revision(tmp_path) == "unknown"
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0 and (REPO / ".git").exists():
        assert code_revision(REPO).removesuffix("-dirty") == head.stdout.strip()


def test_the_model_card_shows_the_provenance(tmp_path: Path) -> None:
    from cover_hpc.spec.schema import ExperimentSpec, to_dict
    from cover_hpc.stages.select import model_card
    from cover_hpc.store.paths import RunPaths
    from cover_hpc.store.records import Selection, SelectionBest, SelectionPoint, write_record

    spec = ExperimentSpec()
    paths = RunPaths(tmp_path / "run")
    point = SelectionPoint(point="step-4", step=4, kind="final", metrics={"clip_score": 0.3})
    selection = Selection(
        run_id="run", validation="test_set-x", select_by="clip_score", direction="max",
        best=SelectionBest(step=4, kind="final", value=0.3, weights=None), points=[point],
    )  # fmt: skip
    assert "## Provenance" in model_card(spec, paths, selection, [])
    assert "Not recorded" in model_card(spec, paths, selection, [])
    record = Provenance(
        created="2026-01-01T00:00:00+00:00", cover_hpc_version="0.2.0", code_revision="abc123-dirty",
        packages={"torch": "2.13.0", "deepspeed": None}, data=Fingerprint("/data/train_set", "d" * 64, 12000, 10**9),
        base_model=provenance.BaseModel(pretrained="org/sdxl", revision="rev1", variant="fp16", files=None,
                                        vae="org/vae", vae_files=Fingerprint("/vae", "e" * 64, 2, 10)),
        spec=to_dict(spec), nodes=[provenance.Node(rank, host, "NVIDIA H100")
                                   for rank, host in enumerate(("gpu01", "gpu01", "gpu02"))],
        slurm_job="123_4", slurm_restarts=1,
    )  # fmt: skip
    paths.train.mkdir(parents=True)
    write_record(paths.provenance, record)
    card = model_card(spec, paths, selection, [])
    section = card.split("## Provenance")[1].split("## Validation")[0]
    for text in ("cover-hpc 0.2.0", "abc123-dirty", "torch 2.13.0", "deepspeed not installed", "d" * 64,
                 "12000 files", "`org/sdxl` at revision `rev1`", "e" * 64, "gpu01: 2 x NVIDIA H100",
                 "gpu02: 1 x NVIDIA H100", "SLURM job 123_4"):  # fmt: skip
        assert text in section, (text, section)


@pytest.mark.tiny
@pytest.mark.slow
def test_training_writes_provenance_with_every_field(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path) -> None:
    from cover_hpc.store.records import read_record

    from .test_train import run_dir, train, write_spec

    run = run_dir(write_spec(tmp_path, tiny_model_dir, demo_data_dir, train={"max_steps": 1}))
    train(run)
    path = run / "train" / "provenance.json"
    written = json.loads(path.read_text())
    assert set(written) == {f.name for f in dataclasses.fields(Provenance)}
    record = read_record(path, Provenance)
    import cover_hpc

    assert record.cover_hpc_version == cover_hpc.__version__ and record.code_revision
    assert record.packages["torch"] == metadata.version("torch") and set(record.packages) == set(provenance.PACKAGES)
    assert record.data.sha256 == fingerprint(demo_data_dir / "train_set").sha256
    assert record.base_model.pretrained == str(tiny_model_dir) and record.base_model.files is not None
    assert record.base_model.files.sha256 == fingerprint(tiny_model_dir).sha256
    from cover_hpc.spec.schema import to_dict
    from cover_hpc.store.paths import RunPaths
    from cover_hpc.store.runs import load_run_spec

    assert record.spec == to_dict(load_run_spec(RunPaths(run)))
    assert [dataclasses.astuple(n) for n in record.nodes] == [(0, socket.gethostname(), "cpu")]
    assert record.slurm_job is None
    assert list((tmp_path / "cache" / "provenance").glob("*.json"))  # the hashes, cached for the next start
