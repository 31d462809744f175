"""Files that appear whole or not at all: a temporary file in the same folder, then a rename."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_beside(path: Path, suffix: str = "") -> tuple[int, str]:
    """An open temporary file next to ``path`` with ordinary permissions (mkstemp's are 0600), its name unique
    (two writers of one path at once each have their own) and ending in ``.tmp`` then ``suffix``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + suffix)
    os.chmod(temporary, 0o666 & ~_umask())
    return handle, temporary


def write_bytes(path: Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` one after the other into ``path``, whole or not at all (fsynced, then renamed)."""
    handle, temporary = temporary_beside(path)
    try:
        with os.fdopen(handle, "wb") as stream:
            for chunk in chunks:
                stream.write(chunk)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, [text.encode("utf-8")])


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: so that a rename in it survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_image(image: Any, path: Path) -> None:
    """Save a PIL image so that ``path`` exists only once complete (a killed job leaves none). The temporary
    file ends in ``path``'s suffix, so PIL picks the format from it as from ``path``; each writer has its own, so
    two saves of one path at once both succeed, and the last rename wins whole."""
    handle, temporary = temporary_beside(path, path.suffix)
    os.close(handle)
    try:
        image.save(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
