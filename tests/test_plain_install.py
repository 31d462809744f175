"""A plain (non-editable) install works from any folder: the wheel carries the package data (SLURM
profiles, CLIP merges), and ``submit --dry-run --profile`` prints the scripts from another folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_plain_install_dry_runs_a_submission_from_another_folder(tmp_path: Path) -> None:
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    source = tmp_path / "source"  # a copy: building in the checkout would leave a build/ folder there
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "demo", "experiments", "logs", "__pycache__", ".*_cache"))  # fmt: skip
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)], check=True,
                   cwd=tmp_path)  # fmt: skip
    (wheel,) = wheels.glob("cover_hpc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "cover_hpc/orchestrate/profiles/example-gpu-cluster.yaml" in names
    assert "cover_hpc/assets/clip_bpe_merges_4k.txt" in names
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(target)}  # the wheel's copy, before the checkout's editable one
    where = subprocess.run([sys.executable, "-c", "import cover_hpc; print(cover_hpc.__file__)"], env=env,
                           cwd=elsewhere, capture_output=True, text=True, check=True)  # fmt: skip
    assert where.stdout.strip().startswith(str(target))
    run = subprocess.run([sys.executable, "-m", "cover_hpc.cli", "submit", str(ROOT / "configs" / "demo.yaml"),
                          "--profile", "example-gpu-cluster", "--dry-run"], env=env, cwd=elsewhere,
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "#SBATCH --account=my-lab" in run.stdout and "#SBATCH --array=0-1%2" in run.stdout
