"""cover-hpc: SDXL LoRA fine-tuning for book covers, from a YAML spec to SLURM arrays."""

from cover_hpc import _torchvision_compat

__version__ = "0.1.0"

# Must run before anything imports transformers, diffusers, peft or open_clip.
_torchvision_compat.install()
