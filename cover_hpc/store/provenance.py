"""Where a trained LoRA came from: ``<run>/train/provenance.json``, written once, by rank 0, when the
run's training first starts (a resumed start leaves it as it is), and repeated in the model card.

It records the cover-hpc version and code revision (``git`` of the checkout it runs from, when it is
one; else ``unknown``), the exact versions of the libraries that shape the weights, a fingerprint of
the training data and of the base model (its ``model.revision``, and the hash of its files when they
are a local folder or a hub snapshot), the resolved spec, the nodes and devices, and the SLURM job.

A fingerprint is the sha256 of every file of a folder (hidden ones left out): the sha256 over
``<relative path> <size> <sha256 of its bytes>`` lines, sorted by path. Each file's own hash is
cached by (absolute path, size, modification time) in one JSON file per folder under the cache root
(``data.cache_dir`` or the default beside the data), so a 12,000-cover set is read once, not at every
start of every run, and an image that changed is read again (alone).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from cover_hpc.runtime import env
from cover_hpc.store import atomic
from cover_hpc.store.records import Record

log = logging.getLogger(__name__)

#: Libraries whose exact version is recorded.
PACKAGES = ("torch", "diffusers", "transformers", "peft", "accelerate", "deepspeed")
UNKNOWN = "unknown"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Fingerprint:
    """The hash of a folder's files (None when not hashed: a hub model pinned by its revision)."""

    path: str
    sha256: str | None
    files: int
    bytes: int


@dataclass(frozen=True)
class BaseModel:
    """The base model as the spec names it, its revision and variant, and its files' fingerprint."""

    pretrained: str
    revision: str | None
    variant: str | None
    files: Fingerprint | None
    vae: str | None
    vae_files: Fingerprint | None


@dataclass(frozen=True)
class Node:
    """One process of the training: its rank, host and device ('cpu' or the CUDA device's name)."""

    rank: int
    host: str
    device: str


@dataclass(frozen=True, kw_only=True)
class Provenance(Record):
    """Everything a trained LoRA depends on, recorded when its training first started."""

    WHAT = "provenance record"

    schema_version: int = 1
    created: str  # ISO 8601, UTC
    cover_hpc_version: str
    code_revision: str  # commit (with "-dirty" for uncommitted changes) or "unknown"
    packages: dict[str, str | None]  # None: not installed
    data: Fingerprint
    base_model: BaseModel
    spec: dict[str, Any]
    nodes: list[Node]
    slurm_job: str | None  # "<array>_<task>" or the job id; None outside SLURM
    slurm_restarts: int


# --------------------------------------------------------------------------------------------
# Versions


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20, check=False)


def code_revision(root: Path | None = None) -> str:
    """The commit of the checkout cover-hpc runs from, ``-dirty`` when its tracked files changed;
    ``unknown`` when it is not a checkout (an installed package) or git cannot tell. Never raises."""
    import cover_hpc

    root = root or Path(cover_hpc.__file__).resolve().parent.parent
    try:
        if not (root / ".git").exists():  # an installed copy inside someone's repository is not a checkout
            return UNKNOWN
        head = _git(root, "rev-parse", "HEAD")
        if head.returncode != 0 or not head.stdout.strip():
            return UNKNOWN
        dirty = _git(root, "diff", "--quiet", "HEAD", "--").returncode == 1
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError, ValueError):
        return UNKNOWN


# --------------------------------------------------------------------------------------------
# Fingerprints


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (read in 1 MiB pieces)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while piece := handle.read(_CHUNK):
            digest.update(piece)
    return digest.hexdigest()


def folder_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (symbolic links followed, as a hub snapshot's are), hidden files and
    folders left out, sorted by relative path."""
    files = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        files.append(path)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def fingerprint_cache(cache_root: Path, folder: Path) -> Path:
    """The file caching the hashes of ``folder``'s files."""
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return cache_root / "provenance" / f"{key}.json"


def fingerprint(folder: Path, cache_file: Path | None = None) -> Fingerprint:
    """The fingerprint of ``folder`` (see the module docstring); files whose (path, size, mtime) the
    cache holds are not read. The cache is rewritten when anything was read; one that cannot be
    written is only logged."""
    cached: dict[str, Any] = {}
    if cache_file is not None and cache_file.is_file():
        try:
            cached = json.loads(cache_file.read_text()).get("files", {})
        except (OSError, ValueError, AttributeError):
            cached = {}
    known: dict[str, list[Any]] = {}
    lines, total, read = [], 0, 0
    for path in folder_files(folder):
        stat = path.stat()
        absolute = str(path.resolve())
        entry = cached.get(absolute)
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == [stat.st_size, stat.st_mtime_ns]:
            sha = str(entry[2])
        else:
            sha = file_sha256(path)
            read += 1
        known[absolute] = [stat.st_size, stat.st_mtime_ns, sha]
        lines.append(f"{path.relative_to(folder).as_posix()} {stat.st_size} {sha}\n")
        total += stat.st_size
    if cache_file is not None and (read or set(known) != set(cached)):
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_json(cache_file, {"folder": str(folder.resolve()), "files": known})
        except OSError as error:
            log.warning("could not cache the file hashes of %s in %s: %s", folder, cache_file, error)
    digest = hashlib.sha256("".join(lines).encode()).hexdigest()
    return Fingerprint(str(folder.resolve()), digest, len(lines), total)


def model_fingerprint(name: str, folder: Path | None, revision: str | None, cache_root: Path) -> Fingerprint | None:
    """A model's fingerprint: its files' hash when it resolved to a folder and no revision pins it
    (a pinned hub model is named by its revision alone), else None."""
    if revision is not None or folder is None or not folder.is_dir():
        return None
    log.info("fingerprinting the files of %s in %s (cached after the first time)", name, folder)
    return fingerprint(folder, fingerprint_cache(cache_root, folder))


# --------------------------------------------------------------------------------------------
# The record


def provenance(
    spec: Any,
    spec_dict: dict[str, Any],
    cache_root: Path,
    nodes: Sequence[Node],
    model_folder: Path | None,
    vae_folder: Path | None,
) -> Provenance:
    """The provenance of a training about to start with resolved ``spec`` (its :func:`to_dict` as
    ``spec_dict``); the models' folders as they resolved (None where they did not)."""
    import cover_hpc

    data_dir = Path(spec.data.train_dir)
    model = spec.model
    job = env.slurm_job()
    return Provenance(
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        cover_hpc_version=cover_hpc.__version__,
        code_revision=code_revision(),
        packages=package_versions(),
        data=fingerprint(data_dir, fingerprint_cache(cache_root, data_dir)),
        base_model=BaseModel(
            pretrained=model.pretrained,
            revision=model.revision,
            variant=model.variant,
            files=model_fingerprint("model.pretrained", model_folder, model.revision, cache_root),
            vae=model.vae,
            vae_files=model_fingerprint("model.vae", vae_folder, None, cache_root) if model.vae else None,
        ),
        spec=spec_dict,
        nodes=list(nodes),
        slurm_job=job.job_id if job else None,
        slurm_restarts=job.restarts if job else 0,
    )


def describe(record: Provenance) -> list[str]:
    """Markdown lines of a model card's provenance section."""
    base = record.base_model
    model = f"`{base.pretrained}`"
    if base.revision:
        model += f" at revision `{base.revision}`"
    if base.variant:
        model += f" (variant {base.variant})"
    if base.files and base.files.sha256:
        model += f", files sha256 `{base.files.sha256}` ({base.files.files} files)"
    if base.vae:
        vae = f"`{base.vae_files.sha256}`" if base.vae_files and base.vae_files.sha256 else "not hashed"
        model += f"; VAE `{base.vae}`, files sha256 {vae}"
    devices: dict[str, list[str]] = {}
    for node in record.nodes:
        devices.setdefault(node.host, []).append(node.device)
    hosts = "; ".join(f"{host}: {len(names)} x {', '.join(sorted(set(names)))}" for host, names in devices.items())
    packages = ", ".join(f"{name} {version or 'not installed'}" for name, version in record.packages.items())
    return [
        f"- cover-hpc {record.cover_hpc_version}, code revision `{record.code_revision}`",
        f"- {packages}",
        f"- training data `{record.data.path}`: {record.data.files} files, {record.data.bytes} bytes, "
        f"sha256 `{record.data.sha256}`",
        f"- base model {model}",
        f"- {len(record.nodes)} process(es) on {hosts or 'unknown hosts'}",
        f"- SLURM job {record.slurm_job}" if record.slurm_job else "- not run under SLURM",
        f"- started {record.created}; the resolved spec is in `provenance.json`",
    ]
