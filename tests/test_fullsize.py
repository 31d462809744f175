"""Full-size SDXL (random weights) through the production path on this machine: benchmarks/fullsize_cpu.py
with small settings. Excluded from the default run (``-m fullsize`` selects it): it writes a ~7 GB model
once (to $COVER_HPC_FULLSIZE_DIR, default /tmp/cover-hpc-fullsize, kept for the next run), needs about
15 GiB of free memory and takes tens of minutes on two cores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = [pytest.mark.fullsize, pytest.mark.timeout(7200)]

LAST_LINE = re.compile(r"^peak (\d+\.\d+) GiB, estimate (\d+\.\d+|n/a) GiB, (\d+\.\d+) s/step$")


@pytest.mark.parametrize("backend", ["deepspeed", "ddp"])
def test_fullsize_sdxl_trains_resumes_samples_and_matches_the_estimate(tmp_path: Path, backend: str) -> None:
    workdir = Path(os.environ.get("COVER_HPC_FULLSIZE_DIR", "/tmp/cover-hpc-fullsize"))
    args = [sys.executable, str(REPO / "benchmarks" / "fullsize_cpu.py"), "--workdir", str(workdir),
            "--size", "128x128", "--steps", "3", "--stop-after", "1", "--sample-steps", "1",
            "--backend", backend, "--max-gib", "16", "--json", str(tmp_path / "fullsize.json")]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=7000)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    last = result.stdout.strip().splitlines()[-1]
    match = LAST_LINE.match(last)
    assert match, f"last line {last!r} is not 'peak <GiB> GiB, estimate <GiB> GiB, <s> s/step'"
    peak, estimate, seconds = match.groups()
    assert float(seconds) > 0
    assert estimate != "n/a", result.stdout[-2000:]
    ratio = float(peak) / float(estimate)
    assert 0.75 <= ratio <= 1.25, f"peak {peak} GiB and estimate {estimate} GiB differ by more than 25%"
