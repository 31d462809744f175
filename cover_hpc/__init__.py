"""cover-hpc: SDXL LoRA fine-tuning for book covers, from a YAML spec to SLURM arrays."""

import os as _os

if _os.environ.get("COVER_HPC_JOB") == "1":  # first thing in a job step: stop signals only set a flag
    from cover_hpc.runtime import preemption as _preemption

    _preemption.install()

from cover_hpc import _torchvision_compat

__version__ = "0.2.0"

# Must run before anything imports transformers, diffusers, peft or open_clip.
_torchvision_compat.install()
