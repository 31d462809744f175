"""On-disk caches of VAE latents and frozen text embeddings, shared by runs and array tasks.

Entries are safetensors files written atomically (a temporary file in the same folder, then
``os.replace``), so tasks that fill the same cache at once never leave a half-written entry; at
worst two of them compute the same entry. Keys:

- latents: ``<root>/latents/<vae hash>/<H>x<W>/<image key>.safetensors`` where the image key
  hashes the file's absolute path, size and modification time, so an edited image is re-encoded
  and a different VAE or size never reads stale latents. The entry holds the latent
  distribution's mean and std: training samples from it with its own seeded generator.
- text: ``<root>/text/<encoders hash>/<caption hash>.safetensors``.
- an image that cannot be decoded gets a ``.bad.json`` marker beside where its entry would be,
  so every rank of a run (and later runs) learn the same verdict.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cover_hpc.store import atomic
from cover_hpc.store.atomic import temporary_beside


def module_hash(module: torch.nn.Module, extra: str = "") -> str:
    """Hash of a module's config and every parameter and buffer (its identity for the cache)."""
    digest = hashlib.sha256(extra.encode())
    config = getattr(module, "config", None)
    if config is not None:  # diffusers' FrozenDict or a transformers PretrainedConfig
        settings = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def file_key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:24]


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def write_atomic(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    handle, temporary = temporary_beside(path)
    os.close(handle)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


class DiskCache:
    """A folder of tensor entries, one safetensors file per key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> dict[str, torch.Tensor]:
        return load_file(self.path(key))

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        write_atomic(self.path(key), tensors)

    def bad_reason(self, key: str) -> str | None:
        marker = self.folder / f"{key}.bad.json"
        return json.loads(marker.read_text())["reason"] if marker.is_file() else None

    def mark_bad(self, key: str, reason: str) -> None:
        atomic.write_json(self.folder / f"{key}.bad.json", {"reason": reason})

    def missing(self, keys: Iterable[str]) -> list[str]:
        return [key for key in keys if not self.has(key) and self.bad_reason(key) is None]


#: Version of how images are decoded into pixels (cover_hpc.store.data.to_rgb). Raised whenever decoding
#: changes, so that latents cached by an older decoder are not reused (v2: 16-bit and float images
#: scaled instead of clipped, transparency over white).
DECODER_VERSION = 2


def latent_cache(root: Path, vae_hash: str, size: tuple[int, int]) -> DiskCache:
    return DiskCache(root / "latents" / f"{vae_hash}-d{DECODER_VERSION}" / f"{size[0]}x{size[1]}")


def text_cache(root: Path, encoders_hash: str) -> DiskCache:
    return DiskCache(root / "text" / encoders_hash)
