"""The cover-hpc command as a user runs it: the installed console script, in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def cover_hpc(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("cover-hpc") or str(Path(sys.executable).parent / "cover-hpc")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_help_everywhere() -> None:
    for args in ([], ["plan"], ["keys"], ["make-tiny-model"], ["make-demo-data"], ["demo"]):
        result = cover_hpc(*args, "--help")
        assert result.returncode == 0, result.stderr
        assert "usage: cover-hpc" in result.stdout


def test_plan_lists_the_sweep() -> None:
    result = cover_hpc("plan", "configs/sweep_lr_rank.yaml")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["run_id", "optim.lr_unet", "lora.rank", "lora.alpha"]
    assert len([line for line in lines if line.startswith("lr_unet")]) == 6
    assert "6 runs of experiment 'sweep-lr-rank'" in result.stdout


def test_plan_json() -> None:
    result = cover_hpc("plan", "configs/demo.yaml", "--json")
    runs = json.loads(result.stdout)
    assert [sorted(run) for run in runs] == [["lora.rank", "run_id"]] * 2
    assert [run["lora.rank"] for run in runs] == [4, 8]


def test_bad_spec_is_one_paragraph_without_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("optim:\n  lr_unet: -1\ntrain:\n  batch_sise: 2\n")
    result = cover_hpc("plan", str(spec))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"invalid experiment spec {spec} (2 problems)" in result.stderr
    assert "line 2: optim.lr_unet: got -1.0; must be greater than 0." in result.stderr
    assert "line 4: train.batch_sise: unknown key. did you mean 'batch_size'?" in result.stderr
    assert result.stdout == ""


def test_keys_documents_every_field() -> None:
    result = cover_hpc("keys", "optim")
    assert "optim.lr_unet = 0.0001\n    Learning rate of the UNet adapters." in result.stdout


def test_keys_of_an_unknown_section_fails_naming_the_sections() -> None:
    result = cover_hpc("keys", "optimm")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "no section or key 'optimm'; did you mean 'optim'?" in result.stderr
    sections = "sections: model, data, lora, optim, train, distributed, validate, infer, slurm, sweep"
    assert f"{sections}; top-level keys: name, output_dir" in result.stderr
    assert "did you mean 'train.seed'?" in cover_hpc("keys", "train.sed").stderr


def test_keys_of_one_dotted_key() -> None:
    result = cover_hpc("keys", "optim.lr_unet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "optim.lr_unet = 0.0001\n    Learning rate of the UNet adapters.\n"


def test_hostile_specs_are_refused_without_traceback(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("lora:\n  unet_targets: " + "[" * 3000 + "]" * 3000 + "\n")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"name: caf\xe9\n")
    for spec, expected in [(deep, "line 2: nesting deeper than"), (latin1, "line 1: byte 0xe9"), (tmp_path, "folder")]:
        result = cover_hpc("plan", str(spec), 'slurm.partition="gpu\\n#SBATCH --wrap=id"')
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and expected in result.stderr
    result = cover_hpc("plan", "configs/demo.yaml", "slurm.partition=gpu\nsrun id")
    assert result.returncode == 2
    assert "slurm.partition (set on the command line): got 'gpu\\nsrun id'; remove the control" in result.stderr
