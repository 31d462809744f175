"""The spec: defaults < YAML < overrides, and one clear message per kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from cover_hpc.config import ExperimentSpec, SpecError, load_spec

from .conftest import REPO


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def problems_of(path: Path | None = None, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(SpecError) as caught:
        load_spec(path, overrides)
    return str(caught.value)


def test_defaults_are_the_original_recipe() -> None:
    spec = load_spec()
    assert spec == ExperimentSpec()
    assert spec.data.size == (1152, 896)
    assert (spec.optim.lr_unet, spec.optim.lr_text_encoder, spec.optim.lr_text_encoder_2) == (1e-4, 5e-5, 1e-5)
    assert spec.lora.rank == 32 and spec.optim.warmup_steps == 950


def test_precedence_defaults_then_yaml_then_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "optim:\n  lr_unet: 3.0e-4\n  warmup_steps: 10\ntrain:\n  seed: 7\n")
    spec = load_spec(path, ["optim.lr_unet=5e-4"])
    assert spec.optim.lr_unet == 5e-4  # override beats YAML
    assert spec.optim.warmup_steps == 10  # YAML beats default
    assert spec.optim.lr_text_encoder == 5e-5  # default kept
    assert spec.train.seed == 7


def test_yaml_scientific_notation_without_dot_is_a_number(tmp_path: Path) -> None:
    # PyYAML reads 1e-4 as a string (YAML 1.1); a learning rate written that way must still work.
    spec = load_spec(write(tmp_path, "optim:\n  lr_unet: 1e-4\n"))
    assert spec.optim.lr_unet == pytest.approx(1e-4)


def test_size_as_text_or_list(tmp_path: Path) -> None:
    assert load_spec(overrides=["data.size=1024x768"]).data.size == (1024, 768)
    assert load_spec(write(tmp_path, "data:\n  size: [1152, 896]\n")).data.size == (1152, 896)


def test_unknown_key_names_the_closest_valid_key_and_line(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, "optim:\n  lr_unet: 1.0e-4\n  lr_unte: 2.0e-4\n"))
    assert "line 3: optim.lr_unte: unknown key" in message
    assert "did you mean 'lr_unet'" in message


def test_unknown_section(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, "optimizer:\n  lr: 1\n"))
    assert "line 1: optimizer: unknown key" in message and "'optim'" in message


def test_unknown_override_key() -> None:
    message = problems_of(overrides=("train.batchsize=3",))
    assert "train.batchsize (set on the command line)" in message
    assert "did you mean 'train.batch_size'" in message


def test_wrong_type(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, "train:\n  epochs: many\n  gradient_checkpointing: 3\n"))
    assert "line 2: train.epochs: got 'many'; expected an integer." in message
    assert "line 3: train.gradient_checkpointing: got 3; expected true or false." in message


def test_bad_choice_lists_allowed_values(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, "train:\n  mixed_precision: fp8\n"))
    assert "train.mixed_precision: got 'fp8'; expected one of 'no', 'fp16', 'bf16'." in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.lr_unet=0", "optim.lr_unet (set on the command line): got 0.0; must be greater than 0."),
        ("optim.lr_text_encoder_2=-1e-5", "optim.lr_text_encoder_2 (set on the command line): got -1e-05"),
        ("train.batch_size=0", "train.batch_size (set on the command line): got 0; must be 1 or more."),
        ("validate.num_prompts=0", "validate.num_prompts (set on the command line): got 0; must be 1 or more."),
        ("infer.shards=-2", "infer.shards (set on the command line): got -2; must be 1 or more."),
        ("lora.rank=0", "lora.rank (set on the command line): got 0; must be 1 or more."),
        ("slurm.nodes=0", "slurm.nodes (set on the command line): got 0; must be 1 or more."),
        ("distributed.zero_stage=3", "must be 0, 1 or 2"),
        ("distributed.timeout_min=0", "distributed.timeout_min (set on the command line): got 0; must be 1 or more."),
    ],
)
def test_out_of_range_values(override: str, expected: str) -> None:
    assert expected in problems_of(overrides=(override,))


def test_size_not_divisible(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, "data:\n  size: [1000, 896]\n"))
    assert "line 2: data.size: height 1000 is not a positive multiple of 64" in message
    assert "use 1024" in message


def test_more_shards_than_books(tmp_path: Path) -> None:
    books = tmp_path / "books.jsonl"
    books.write_text('{"id": 1, "title": "a"}\n{"id": 2, "title": "b"}\n\n')
    message = problems_of(write(tmp_path, f"infer:\n  books_file: {books}\n  shards: 3\n"))
    assert "line 3: infer.shards: got 3, more shards than the 2 books" in message


def test_sweep_over_unknown_key(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, "sweep:\n  grid:\n    optim.lr_unte: [1.0e-4]\n"))
    assert "line 3: sweep.grid.optim.lr_unte: sweeps an unknown key 'optim.lr_unte'" in message
    assert "did you mean 'optim.lr_unet'" in message


def test_sweeping_cluster_resources_is_refused_with_the_reason(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, "sweep:\n  grid:\n    slurm.nodes: [1, 2]\n"))
    assert "line 3: sweep.grid.slurm.nodes: 'slurm.nodes' cannot be swept" in message
    assert "one SLURM array, which has one set of resources" in message


def test_sweep_yielding_no_runs(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, "sweep:\n  grid:\n    lora.rank: []\n"))
    assert "sweep.grid.lora.rank: is an empty list, so the sweep yields no runs" in message


def test_sweep_value_checked_like_a_plain_value(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, "sweep:\n  grid:\n    optim.lr_unet: [1.0e-4, -1]\n"))
    assert "line 3: sweep.grid.optim.lr_unet: in the run with optim.lr_unet=-1.0" in message
    assert "must be greater than 0" in message
    message = problems_of(write(tmp_path, "sweep:\n  grid:\n    lora.rank: [4, four]\n"))
    assert "sweep.grid.lora.rank[1]: got 'four'; expected an integer." in message


def test_zipped_axes_must_match(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, "sweep:\n  zip:\n    lora.rank: [4, 8]\n    lora.alpha: [4]\n"))
    assert "zipped axes must have equal lengths" in message


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, "model:\n  pretrained: x\n data:\n  size: [1, 2]\n"))
    assert "line 3: malformed YAML" in message


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(write(tmp_path, "train:\n  epochs: many\n  batch_size: 0\nlora:\n  rnk: 4\n"))
    keys = [problem.key for problem in caught.value.problems]
    assert keys == ["train.epochs", "lora.rnk", "train.batch_size"]


def test_missing_spec_file(tmp_path: Path) -> None:
    assert "spec file not found" in problems_of(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["book_covers_sdxl.yaml", "sweep_lr_rank.yaml", "demo.yaml"])
def test_shipped_configs_load(name: str) -> None:
    load_spec(REPO / "configs" / name)


def test_original_recipe_config_matches_the_seed_facts() -> None:
    spec = load_spec(REPO / "configs" / "book_covers_sdxl.yaml")
    assert spec.model.pretrained == "stabilityai/stable-diffusion-xl-base-1.0"
    assert spec.data.size == (1152, 896)
    assert spec.lora.rank == 32 and spec.lora.alpha == 32
    assert spec.lora.unet_targets == ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out")
    assert (spec.optim.lr_unet, spec.optim.lr_text_encoder, spec.optim.lr_text_encoder_2) == (1e-4, 5e-5, 1e-5)
    assert spec.optim.schedule == "constant_with_warmup" and spec.optim.warmup_steps == 950
    assert spec.train.mixed_precision == "fp16" and spec.train.batch_size == 3 and spec.train.epochs == 25
    assert spec.slurm.gpus_per_node == 3 and spec.train.seed == 42
