"""What a stage checks before it makes a folder or takes a lock, so that an input it refuses leaves
the experiment exactly as it was: the data folders, the models named as local folders, the run's
config. The books and prompts files and the trained LoRA are read by the stages themselves, before
their locks, since they use what they read.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cover_hpc.spec.schema import ExperimentSpec
from cover_hpc.store.paths import RunPaths


def check_data_folder(folder: str, key: str) -> None:
    """Refuse a data folder that does not exist or holds no ``metadata.jsonl`` / ``metadata.csv``
    (:class:`cover_hpc.store.data.DataError`, naming ``key``); its rows are read by the stage."""
    from cover_hpc.store.data import DataError

    if not folder:
        raise DataError(f"{key} is not set; set it to an imagefolder (images plus metadata.jsonl or metadata.csv)")
    path = Path(folder)
    if (path / "metadata.jsonl").is_file() or (path / "metadata.csv").is_file():
        return
    if not path.is_dir():
        raise DataError(f"data folder not found: {path}; set {key} to an imagefolder")
    raise DataError(f"{path} ({key}) has neither metadata.jsonl nor metadata.csv (Hugging Face imagefolder layout)")


def check_models(spec: ExperimentSpec, keys: Iterable[str]) -> None:
    """Refuse a model of ``keys`` (``model.pretrained``, ``model.vae``, ``validate.clip_model``) named
    as a local folder that does not exist (FileNotFoundError, as ``cover-hpc plan`` says it). A hub id,
    or a folder that lacks files, is left to its loader."""
    from cover_hpc.model.weights import locate, problem, spec_models

    wanted = set(keys)
    for ref in spec_models(spec):
        if ref.key in wanted and ref.repo_id is None and not ref.folder.is_dir():
            found = problem(locate(ref))
            raise FileNotFoundError(f"{found.key}: {found.message}")


def check_run_folder(paths: RunPaths) -> None:
    """Refuse a run folder without its ``config.json`` (a folder ``cover-hpc`` did not plan)."""
    if not paths.config.is_file():
        raise FileNotFoundError(
            f"{paths.config} not found: {paths.root} is not a run folder (cover-hpc writes config.json when it "
            "plans a run: cover-hpc plan/submit/train SPEC)"
        )
