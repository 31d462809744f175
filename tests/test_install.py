"""The virtual environment as a user gets it: a bare interpreter of it imports the model libraries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_a_bare_interpreter_of_the_venv_imports_diffusers_transformers_and_peft(tmp_path: Path) -> None:
    # What a user does first in a notebook to load a trained LoRA: nothing of cover_hpc imported
    # by hand, another working directory. The venv's .pth hook must make torchvision importable.
    code = "from diffusers import StableDiffusionXLPipeline; import transformers, peft, open_clip; print('ok')"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "COVER_HPC"))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
    assert not Path("/zz_cover_hpc_torchvision.pth").exists(), "the hook was written outside the venv"
