"""The models a spec names, found offline: in a local folder or in the local Hugging Face cache.

Compute nodes often have no network, so a hub id that is not in the cache fails every job after
it has waited in the queue. ``submit`` and ``plan`` therefore check, offline, that each model
resolves the way ``from_pretrained`` resolves it with ``HF_HUB_OFFLINE=1`` (huggingface_hub's
own cache lookup: ``refs/<revision>`` -> ``snapshots/<commit>/<file>``), and ``cover-hpc fetch``
downloads what is missing on a machine with network access (the login node).

What a model needs, by kind (the files the loaders in ``lora``, ``sampling`` and ``clip_score``
open):

- ``pipeline`` (``model.pretrained``): ``model_index.json``, then per component its config and,
  for a model, its weights in ``model.variant`` (training loads each part with that variant, so
  every part needs it).
- ``vae`` (``model.vae``): ``config.json`` and weights (no variant: it is loaded without one).
- ``clip`` (``validate.clip_model``, transformers): ``config.json``, tokenizer, weights.
- ``open_clip`` (``hf-hub:ORG/NAME`` or ``local-dir:FOLDER``): ``open_clip_config.json`` and
  weights, plus the tokenizer repo its config names (``text_cfg.hf_tokenizer_name``), if any.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cover_hpc.spec.schema import ExperimentSpec, Problem

Kind = Literal["pipeline", "vae", "clip", "open_clip", "tokenizer"]

#: The command that fills the cache; problems of models it can fetch name it.
FETCH_COMMAND = "cover-hpc fetch SPEC"

#: The file whose presence says a folder or snapshot holds a model of this kind.
ANCHOR: dict[Kind, str] = {
    "pipeline": "model_index.json",
    "vae": "config.json",
    "clip": "config.json",
    "open_clip": "open_clip_config.json",
    "tokenizer": "tokenizer_config.json",
}
OPEN_CLIP_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
)
#: Small files a tokenizer, processor or scheduler reads (never weights).
SMALL_FILE = re.compile(r"[^/]+\.(json|txt|model)$")
_PREFIX = r"(diffusion_pytorch_model|model|pytorch_model)"
_SHARD = r"-\d{5}-of-\d{5}"


@dataclass(frozen=True)
class ModelRef:
    """One model a spec names: the spec key, the name as given, and how it is loaded."""

    key: str
    name: str
    kind: Kind
    revision: str | None = None
    variant: str | None = None

    @property
    def repo_id(self) -> str | None:
        """The hub id, or None for a local folder (a folder that exists wins, as in from_pretrained)."""
        name = self.name
        if self.kind == "open_clip":
            if name.startswith("local-dir:"):
                return None
            name = name.removeprefix("hf-hub:")
        if name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") != 1:
            return None
        return name

    @property
    def folder(self) -> Path:
        """Where a local model lives."""
        return Path(self.name.removeprefix("local-dir:")).expanduser()

    def describe(self) -> str:
        extra = [f"revision {self.revision}"] if self.revision else []
        extra += [f"variant {self.variant}"] if self.variant else []
        return f"{self.name!r}" + (f" ({', '.join(extra)})" if extra else "")


@dataclass(frozen=True)
class Found:
    """Where a model resolved (the folder its loader reads) and what, if anything, is missing."""

    ref: ModelRef
    path: Path | None
    missing: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.path is not None and not self.missing


class FetchError(RuntimeError):
    """A download that cannot happen (no network, unknown repo, gated, offline mode)."""


# --------------------------------------------------------------------------------------------
# Which models a spec names


def spec_models(spec: ExperimentSpec) -> list[ModelRef]:
    model, validate = spec.model, spec.validate
    refs = [ModelRef("model.pretrained", model.pretrained, "pipeline", model.revision, model.variant)]
    if model.vae:
        refs.append(ModelRef("model.vae", model.vae, "vae"))
    clip_kind: Kind = "open_clip" if validate.clip_backend == "open_clip" else "clip"
    refs.append(ModelRef("validate.clip_model", validate.clip_model, clip_kind))
    return refs


def models_of(specs: Iterable[ExperimentSpec]) -> list[ModelRef]:
    """Every model the specs (the runs of a sweep) name, each once, in order."""
    return list(dict.fromkeys(ref for spec in specs for ref in spec_models(spec)))


# --------------------------------------------------------------------------------------------
# What a folder must hold


def weight_files(names: Iterable[str], variant: str | None) -> list[str]:
    """The weight files a loader picks among ``names`` (one folder): those of ``variant`` (or none
    without one), safetensors before pickles; never flax, onnx, openvino or single-file checkpoints."""
    if variant:
        tag = re.escape(variant)
        weights = re.compile(rf"{_PREFIX}(\.{tag}({_SHARD})?|{_SHARD}\.{tag})\.(safetensors|bin)")
        index = re.compile(rf"{_PREFIX}\.(safetensors|bin)\.(index\.{tag}|{tag}\.index)\.json")
    else:
        weights = re.compile(rf"{_PREFIX}({_SHARD})?\.(safetensors|bin)")
        index = re.compile(rf"{_PREFIX}\.(safetensors|bin)\.index\.json")
    chosen = [n for n in names if weights.fullmatch(n) or index.fullmatch(n)]
    safe = [n for n in chosen if ".safetensors" in n]
    return sorted(safe or chosen)


def _weights_missing(folder: Path, variant: str | None, prefix: str = "") -> list[str]:
    """What is missing of one folder's weights; ``prefix`` names the folder in the answer."""
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    chosen = weight_files(names, variant)
    if not chosen:
        return [f"{prefix}weights" + (f" in variant {variant!r}" if variant else "")]
    missing: list[str] = []
    for index in (n for n in chosen if n.endswith(".json")):  # sharded: every shard the index lists
        weight_map = (_read_json(folder / index) or {}).get("weight_map")
        if not isinstance(weight_map, dict):
            missing.append(f"{prefix}{index} (unreadable)")
            continue
        missing += [f"{prefix}{shard}" for shard in sorted(set(weight_map.values())) if not (folder / shard).is_file()]
    return missing


def _components(model_index: dict[str, Any]) -> dict[str, str]:
    """A pipeline's components (folder -> class name), leaving out the optional empty ones."""
    return {name: value[1] for name, value in model_index.items()
            if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[0]}  # fmt: skip


def _component_file(class_name: str) -> str | None:
    """The config file of a component that holds no weights; None for a model."""
    if class_name.endswith("Scheduler"):
        return "scheduler_config.json"
    if "Tokenizer" in class_name:
        return "tokenizer_config.json"
    if class_name.endswith(("FeatureExtractor", "ImageProcessor", "Processor")):
        return "preprocessor_config.json"
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from disk; None when it is unreadable (a torn download, not JSON)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _pipeline_missing(root: Path, variant: str | None) -> list[str]:
    model_index = _read_json(root / "model_index.json")
    if model_index is None:
        return ["model_index.json (unreadable)"]
    missing: list[str] = []
    for name, class_name in _components(model_index).items():
        config = _component_file(class_name)
        if config is not None:
            missing += [] if (root / name / config).is_file() else [f"{name}/{config}"]
            continue
        missing += [] if (root / name / "config.json").is_file() else [f"{name}/config.json"]
        missing += _weights_missing(root / name, variant, f"{name}/")
    return missing


def missing_files(root: Path, ref: ModelRef) -> list[str]:
    """What ``ref``'s loader would not find in ``root`` (a folder or a cache snapshot)."""
    if not (root / ANCHOR[ref.kind]).is_file():
        return [ANCHOR[ref.kind]]
    if ref.kind == "pipeline":
        return _pipeline_missing(root, ref.variant)
    if ref.kind in ("vae", "clip"):
        tokenizer = ["tokenizer_config.json"] if ref.kind == "clip" else []
        return [f for f in tokenizer if not (root / f).is_file()] + _weights_missing(root, None)
    if ref.kind == "open_clip":
        return [] if _open_clip_weights(root, local=ref.repo_id is None) else [" or ".join(OPEN_CLIP_WEIGHTS)]
    return []


def _open_clip_weights(root: Path, local: bool) -> list[Path]:
    """open_clip's checkpoints: from the hub by name; from a ``local-dir:`` folder any checkpoint."""
    if local:
        return [path for path in root.iterdir() if path.suffix in (".safetensors", ".bin", ".pth")]
    return [root / name for name in OPEN_CLIP_WEIGHTS if (root / name).is_file()]


def tokenizer_ref(found: Found) -> ModelRef | None:
    """The hub tokenizer an open_clip model's config names (``text_cfg.hf_tokenizer_name``), if any."""
    if found.ref.kind != "open_clip" or found.path is None or found.missing:
        return None
    config = _read_json(found.path / "open_clip_config.json") or {}
    name = config.get("model_cfg", config).get("text_cfg", {}).get("hf_tokenizer_name")
    return ModelRef(found.ref.key, name, "tokenizer") if isinstance(name, str) and name else None


# --------------------------------------------------------------------------------------------
# Resolving offline


def hub_cache() -> Path:
    """The cache from_pretrained reads: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def locate(ref: ModelRef, cache_dir: Path | None = None) -> Found:
    """Resolve ``ref`` without the network, as ``from_pretrained`` does with ``HF_HUB_OFFLINE=1``."""
    repo_id = ref.repo_id
    if repo_id is None:
        folder = ref.folder
        if not folder.is_dir():
            return Found(ref, None, (f"folder {str(folder)!r} does not exist (relative to {os.getcwd()})",))
        return Found(ref, folder, tuple(missing_files(folder, ref)))
    from huggingface_hub import try_to_load_from_cache

    cache = cache_dir or hub_cache()
    anchor = try_to_load_from_cache(repo_id, ANCHOR[ref.kind], cache_dir=cache, revision=ref.revision)
    if not isinstance(anchor, str):  # None: not cached; _CACHED_NO_EXIST: the repo has no such file
        return Found(ref, None, (ANCHOR[ref.kind],))
    snapshot = Path(anchor).parent
    return Found(ref, snapshot, tuple(missing_files(snapshot, ref)))


def locate_all(refs: Sequence[ModelRef], cache_dir: Path | None = None) -> list[Found]:
    """Each model, and the tokenizer repos open_clip models name."""
    found = [locate(ref, cache_dir) for ref in refs]
    extra = [t for t in (tokenizer_ref(f) for f in found) if t is not None and t.repo_id]
    return found + [locate(ref, cache_dir) for ref in dict.fromkeys(extra)]


def problem(found: Found, cache_dir: Path | None = None) -> Problem:
    """Why a model cannot be loaded offline, and the fix."""
    ref = found.ref
    missing = ", ".join(found.missing)
    if ref.repo_id is None:
        if found.path is None:
            return Problem(ref.key, missing)
        if ref.kind == "pipeline" and found.missing == ("model_index.json",):
            return Problem(ref.key, f"{ref.name!r} is not a diffusers pipeline folder (no model_index.json)")
        return Problem(ref.key, f"folder {ref.name!r} is not a complete {ref.kind} model: missing {missing}")
    cache = cache_dir or hub_cache()
    if found.path is None:
        what = f"{ref.describe()} is neither a folder here nor in the local Hugging Face cache ({cache})"
    else:
        what = f"{ref.describe()} is only partly in the local Hugging Face cache ({found.path}): no {missing}"
    fix = f"fetch it first, on a machine with network access: {FETCH_COMMAND} (with the same overrides)"
    return Problem(ref.key, f"{what}; compute nodes cannot download it, so {fix}")


def problem_after_fetch(found: Found) -> Problem:
    """Why a model still cannot be loaded once fetch has run: a hub repo without those files."""
    ref = found.ref
    if ref.repo_id is None:
        return problem(found)
    missing = ", ".join(found.missing)
    return Problem(ref.key, f"{ref.describe()}: the hub repo has no {missing} (check the revision, the variant "
                            "and the repo's files)")  # fmt: skip


def model_problems(specs: Iterable[ExperimentSpec], cache_dir: Path | None = None) -> list[Problem]:
    """One problem per model of these specs that a job could not load offline."""
    return [problem(found, cache_dir) for found in locate_all(models_of(specs), cache_dir) if not found.ok]


def is_fetchable(item: Problem) -> bool:
    """Whether ``cover-hpc fetch`` fixes this problem."""
    return FETCH_COMMAND in item.message


# --------------------------------------------------------------------------------------------
# Fetching (network)


def select_files(ref: ModelRef, repo_files: Sequence[str], model_index: dict[str, Any] | None = None) -> list[str]:
    """The files of a hub repo that ``ref``'s loader reads: configs, tokenizers and one set of weights."""
    root = [f for f in repo_files if "/" not in f]
    if ref.kind == "open_clip":
        weights = [name for name in OPEN_CLIP_WEIGHTS if name in root][:1]
        return ["open_clip_config.json", *weights]
    if ref.kind == "pipeline":
        chosen = ["model_index.json"]
        for name in _components(model_index or {}):
            names = [f.split("/", 1)[1] for f in repo_files if f.startswith(f"{name}/") and f.count("/") == 1]
            picked = [n for n in names if SMALL_FILE.fullmatch(n)] + weight_files(names, ref.variant)
            chosen += [f"{name}/{n}" for n in dict.fromkeys(picked)]
        return chosen
    small = ["config.json"] if ref.kind == "vae" else [f for f in root if SMALL_FILE.fullmatch(f)]
    weights = [] if ref.kind == "tokenizer" else weight_files(root, None)
    return list(dict.fromkeys([*small, *weights]))


def _download(ref: ModelRef, repo_id: str, cache_dir: Path | None) -> None:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    info = HfApi().model_info(repo_id, revision=ref.revision)  # fails fast when the hub is unreachable
    repo_files = [sibling.rfilename for sibling in info.siblings or []]
    model_index = None
    if ref.kind == "pipeline":
        if "model_index.json" not in repo_files:
            raise FetchError(f"{ref.key}: {repo_id} has no model_index.json: it is not a diffusers pipeline")
        index_file = hf_hub_download(repo_id, "model_index.json", revision=ref.revision, cache_dir=cache_dir)
        model_index = json.loads(Path(index_file).read_text())
    files = select_files(ref, repo_files, model_index)
    snapshot_download(repo_id, revision=ref.revision, cache_dir=cache_dir, allow_patterns=files)


def fetch_all(refs: Sequence[ModelRef], cache_dir: Path | None = None) -> Iterator[tuple[ModelRef, Found | FetchError]]:
    """Fetch each model (and the tokenizer repos open_clip models name), going on after a failure."""
    queue = list(refs)
    while queue:
        ref = queue.pop(0)
        try:
            found = fetch(ref, cache_dir)
        except FetchError as error:
            yield ref, error
            continue
        yield ref, found
        tokenizer = tokenizer_ref(found)
        if tokenizer is not None and tokenizer.repo_id and tokenizer not in refs:
            queue.append(tokenizer)


def fetch(ref: ModelRef, cache_dir: Path | None = None) -> Found:
    """Download what ``ref`` needs into the cache unless it is there already; then resolve it offline."""
    found = locate(ref, cache_dir)
    repo_id = ref.repo_id
    if found.ok or repo_id is None:
        return found
    from huggingface_hub import constants
    from huggingface_hub.errors import HTTPError

    if constants.is_offline_mode():
        raise FetchError("HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: downloads are disabled. Run "
                         "`HF_HUB_OFFLINE=0 cover-hpc fetch ...` on a machine with network access")  # fmt: skip
    try:
        _download(ref, repo_id, cache_dir)
    except (HTTPError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FetchError(
            f"{ref.key}: cannot download {ref.describe()} from {constants.ENDPOINT}: {type(error).__name__}: "
            f"{reason}. Run fetch on a machine that reaches the Hugging Face Hub (HF_ENDPOINT for a mirror, "
            "HF_TOKEN for a gated model)"
        ) from None
    return locate(ref, cache_dir)
