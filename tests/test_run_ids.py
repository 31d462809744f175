"""Run ids stay put across upgrades: the golden table, and a new key at its default moves no id.

The table (tests/golden/run_ids.json) holds the ids of every shipped config and of one override in
each section. Changing it is deliberate: regenerate it with
``COVER_HPC_UPDATE_GOLDEN=1 pytest tests/test_run_ids.py`` and write the change, with its migration,
in CHANGELOG.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from cover_hpc.orchestrate.search import planned_trials
from cover_hpc.spec.ids import NON_RESULT_KEYS, config_hash, run_id, weight_diff
from cover_hpc.spec.load import load_spec
from cover_hpc.spec.schema import ExperimentSpec, spec_from_dict, to_dict
from cover_hpc.spec.sweep import expand

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "run_ids.json"
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
#: One override per section, on configs/demo.yaml: each is weight-bearing or not, and the table says
#: which by whether the id moved.
OVERRIDES = [
    "model.revision=main",
    "data.size=[256,192]",
    "data.caption_column=caption",
    "lora.dropout=0.1",
    "lora.alpha=8",
    "optim.lr_unet=5e-5",
    "optim.lr_text_encoder=1e-6",
    "train.max_steps=7",
    "train.seed=3",
    "distributed.timeout_min=20",
    "train.mixed_precision=bf16",
    "validate.num_prompts=3",
    "infer.steps=5",
    "slurm.time_min=30",
    "slurm.partition=other",
    "output_dir=elsewhere",
    "track.project=shared-covers",
]


def _ids(spec_path: Path, overrides: tuple[str, ...] = ()) -> list[str]:
    """The runs' ids; of a random search, its trials' (known in advance, from the seed)."""
    spec = load_spec(spec_path, overrides)
    trials = planned_trials(spec) if spec.sweep.search.sampler != "none" else None
    return [run.run_id for run in (trials if trials is not None else expand(spec))]


def current_table() -> dict[str, Any]:
    cwd = os.getcwd()
    os.chdir(ROOT)  # the shipped configs name their paths relative to the checkout
    try:
        configs = {path.name: _ids(path) for path in CONFIGS}
        demo = ROOT / "configs" / "demo.yaml"
        overrides = {override: _ids(demo, (override,)) for override in OVERRIDES}
    finally:
        os.chdir(cwd)
    return {"configs": configs, "demo.yaml with": overrides}


def test_run_ids_match_the_golden_table() -> None:
    table = current_table()
    if os.environ.get("COVER_HPC_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(table, indent=2) + "\n")
    golden = json.loads(GOLDEN.read_text())
    for section in ("configs", "demo.yaml with"):
        for name, ids in golden[section].items():
            assert table[section].get(name) == ids, (
                f"run ids of {name} moved: {ids} -> {table[section].get(name)}. If deliberate, regenerate "
                f"{GOLDEN.name} (see this file's docstring) and write the migration in CHANGELOG.md"
            )
    assert set(table["configs"]) == set(golden["configs"]), "a shipped config is missing from the golden table"


def test_the_table_covers_every_section_and_tells_weight_bearing_keys_apart() -> None:
    golden = json.loads(GOLDEN.read_text())
    base = golden["configs"]["demo.yaml"]
    sections = {override.split("=")[0].split(".")[0] for override in OVERRIDES}
    assert sections >= {f.name for f in dataclasses.fields(ExperimentSpec)} - {"name", "sweep"}
    for override, ids in golden["demo.yaml with"].items():
        key = override.split("=")[0]
        excluded = any(key == k or key.startswith(f"{k}.") for k in NON_RESULT_KEYS)
        assert (ids == base) == excluded, f"{override}: the id {'moved' if ids != base else 'stayed'}"


def _grown(spec: ExperimentSpec, section_name: str, name: str, default: Any) -> Any:
    """``spec`` as a later release would load it: section ``section_name`` has one more field, at
    ``default`` (the spec class's own default section is the grown one too)."""
    section = getattr(spec, section_name)
    grown_section = dataclasses.make_dataclass(
        type(section).__name__, [(name, type(default), dataclasses.field(default=default))],
        bases=(type(section),), frozen=True, kw_only=True,
    )  # fmt: skip
    spec_fields = [
        (f.name, f.type, dataclasses.field(
            default_factory=grown_section if f.name == section_name else f.default_factory))
        if f.default_factory is not dataclasses.MISSING
        else (f.name, f.type, dataclasses.field(default=f.default))
        for f in dataclasses.fields(ExperimentSpec)
    ]  # fmt: skip
    grown_spec = dataclasses.make_dataclass("ExperimentSpec", spec_fields, frozen=True, kw_only=True)
    values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    values[section_name] = grown_section(**{f.name: getattr(section, f.name) for f in dataclasses.fields(section)})
    return grown_spec(**values)


@pytest.mark.parametrize(("section_name", "name", "default", "other"), [
    ("lora", "dora", False, True),
    ("train", "ema", False, True),
    ("train", "ema_decay", 0.999, 0.99),
    ("train", "ema_warmup_steps", 0, 100),
    ("data", "caption_dropout", 0.0, 0.1),
])  # fmt: skip
def test_a_new_key_at_its_default_moves_no_id(section_name: str, name: str, default: Any, other: Any) -> None:
    spec = load_spec(ROOT / "configs" / "demo.yaml", ["lora.rank=8", "optim.lr_unet=3e-4"])
    grown = _grown(spec, section_name, name, default)
    assert to_dict(grown)[section_name][name] == default
    assert weight_diff(grown) == weight_diff(spec)
    assert run_id(grown, {"lora.rank": 8}) == run_id(spec, {"lora.rank": 8})
    changed_section = dataclasses.replace(getattr(grown, section_name), **{name: other})
    changed = dataclasses.replace(grown, **{section_name: changed_section})
    assert weight_diff(changed) == {**weight_diff(spec), f"{section_name}.{name}": other}
    assert config_hash(changed) != config_hash(spec), "a new key set away from its default must move the id"


def test_equal_values_hash_alike_and_non_result_keys_are_left_out() -> None:
    spec = load_spec(ROOT / "configs" / "demo.yaml")
    data = to_dict(spec)
    data["optim"]["lr_unet"] = float(f"{spec.optim.lr_unet:.6e}")  # same float, written another way
    data["slurm"]["partition"] = "elsewhere"
    data["train"]["checkpoint_every"] = spec.train.checkpoint_every + 1
    assert config_hash(spec_from_dict(data)) == config_hash(spec)
    assert "slurm.partition" not in weight_diff(spec_from_dict(data))
    data["optim"]["lr_unet"] = spec.optim.lr_unet * 2
    assert config_hash(spec_from_dict(data)) != config_hash(spec)


def test_a_spec_at_the_defaults_hashes_the_empty_difference() -> None:
    assert weight_diff(ExperimentSpec()) == {}
