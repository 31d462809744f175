"""The spec: defaults < YAML < overrides, and one clear message per kind of mistake."""

from __future__ import annotations

import dataclasses
import time
import types
import typing
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from cover_hpc.spec.load import load_spec
from cover_hpc.spec.schema import ExperimentSpec, SpecError, to_dict

from .conftest import REPO


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def problems_of(path: Path | None = None, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(SpecError) as caught:
        load_spec(path, overrides)
    return str(caught.value)


#: Keys where the original recipe's config (configs/book_covers_sdxl.yaml) differs from the defaults on
#: purpose: its name and data folders, and its snapshot validation (a pipeline choice, not the recipe).
# infer.cover_size: the SDXL config finishes covers at an ebook's 1600x2560; the default keeps the art's size
RECIPE_CONFIG_ONLY = {"name", "data.train_dir", "data.test_dir", "validate.every_steps", "validate.tasks",
                      "infer.cover_size"}  # fmt: skip


def flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        is_section = isinstance(value, dict) and not prefix and key != "sweep"
        out.update(flat(value, f"{key}.") if is_section else {f"{prefix}{key}": value})
    return out


def test_defaults_are_the_original_recipe() -> None:
    """Every setting of the defaults is the original recipe's (its config, less RECIPE_CONFIG_ONLY)."""
    spec = load_spec()
    assert spec == ExperimentSpec()
    defaults, recipe = flat(to_dict(spec)), flat(to_dict(load_spec(REPO / "configs" / "book_covers_sdxl.yaml")))
    assert defaults.keys() == recipe.keys()
    differ = {key for key in defaults if defaults[key] != recipe[key]}
    assert differ == RECIPE_CONFIG_ONLY, {key: (defaults[key], recipe[key]) for key in differ ^ RECIPE_CONFIG_ONLY}
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


SHIPPED = sorted(path.name for path in (REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name: str) -> None:
    assert {"book_covers_sdxl.yaml", "sweep_lr_rank.yaml", "demo.yaml"} <= set(SHIPPED)
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


# --------------------------------------------------------------------------------------------
# What the loader refuses: control characters, non-finite numbers, duplicate keys, oversized,
# too deep or alias-bomb documents, files that are not UTF-8 text


#: String keys that are free text, where a line break is allowed.
FREE_TEXT = {"infer.negative_prompt"}


def string_keys(cls: Any = ExperimentSpec, prefix: str = "") -> list[str]:
    """Every key of the schema that holds one string (``str`` or ``str | None``)."""
    keys = []
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += string_keys(tp, f"{prefix}{name}.")
        elif tp is str or (typing.get_origin(tp) in (types.UnionType, typing.Union) and str in typing.get_args(tp)):
            keys.append(f"{prefix}{name}")
    return keys


#: Every string key that reaches the sbatch script (job name, #SBATCH lines, setup) or a path: every
#: string key of the schema but free text.
SCRIPT_KEYS = [key for key in string_keys() if key not in FREE_TEXT]


def test_script_keys_are_read_from_the_schema() -> None:
    """The walk finds the string keys (plain and optional, in every section), free text included."""
    known = {"name", "output_dir", "model.pretrained", "model.vae", "data.train_dir", "validate.clip_model",
             "infer.books_file", "infer.typeset_font", "slurm.partition", "slurm.constraint"}  # fmt: skip
    assert known <= set(SCRIPT_KEYS), set(SCRIPT_KEYS)
    assert set(string_keys()) == set(SCRIPT_KEYS) | FREE_TEXT


def yaml_setting(dotted: str, yaml_value: str) -> tuple[str, int]:
    """A spec setting ``dotted`` to ``yaml_value``, and the line of its key."""
    parts = dotted.split(".")
    lines = [f"{'  ' * depth}{part}:" for depth, part in enumerate(parts[:-1])]
    lines.append(f"{'  ' * (len(parts) - 1)}{parts[-1]}: {yaml_value}")
    return "\n".join(lines) + "\n", len(parts)


@pytest.mark.parametrize("key", SCRIPT_KEYS)
def test_newline_in_a_script_or_path_value_is_refused_in_yaml(tmp_path: Path, key: str) -> None:
    text, line = yaml_setting(key, '"x\\nsrun rm -rf ~"')
    message = problems_of(write(tmp_path, text))
    assert f"line {line}: {key}: got 'x\\nsrun rm -rf ~'; remove the control character '\\n' (U+000A)" in message


@pytest.mark.parametrize("key", SCRIPT_KEYS)
@pytest.mark.parametrize("raw", ['"x\\nsrun rm -rf ~"', "x\nsrun rm -rf ~", "x\n#SBATCH --wrap=rm"])
def test_newline_in_a_script_or_path_value_is_refused_on_the_command_line(key: str, raw: str) -> None:
    # the second and third forms are a literal newline (e.g. $'...' in bash); YAML would fold it
    # into a space or read the rest as a comment, so the raw text is checked before YAML reads it
    message = problems_of(overrides=(f"{key}={raw}",))
    assert f"{key} (set on the command line): got " in message
    assert "remove the control character '\\n' (U+000A)" in message


#: Every control character (C0, DEL, C1) and the line and paragraph separators, from Unicode's own categories.
CONTROLS = [code for code in range(0x3000) if unicodedata.category(chr(code)) in ("Cc", "Zl", "Zp")]


def test_every_control_character_and_line_separator_is_refused(tmp_path: Path) -> None:
    assert len(CONTROLS) == 32 + 1 + 32 + 2 and {0x0, 0x1B, 0x85, 0x2028, 0x2029} <= set(CONTROLS)
    missed = []
    for code in CONTROLS:
        escape = f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"  # YAML's own escapes
        shown = repr(chr(code))[1:-1]
        message = problems_of(write(tmp_path, f'slurm:\n  partition: "gpu{escape}x"\n'))
        expected = f"line 2: slurm.partition: got 'gpu{shown}x'; remove the control character '{shown}' (U+{code:04X})"
        if expected not in message:
            missed.append((f"U+{code:04X}", message))
    assert not missed, missed


def test_setup_line_with_a_newline_is_refused_with_the_list_fix(tmp_path: Path) -> None:
    path = write(tmp_path, 'slurm:\n  setup:\n    - module load cuda\n    - "echo hi\\nrm -rf ~"\n')
    message = problems_of(path)
    assert "line 4: slurm.setup[1]: got 'echo hi\\nrm -rf ~'; remove the control character '\\n'" in message
    assert "give each line as its own list item" in message
    message = problems_of(overrides=('slurm.setup=["module load cuda", "echo hi\\nrm -rf ~"]',))
    assert "slurm.setup[1] (set on the command line): got 'echo hi\\nrm -rf ~'" in message
    assert "give each line as its own list item" in message


def test_swept_string_with_a_newline_is_refused(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, 'sweep:\n  grid:\n    model.pretrained: [base, "evil\\nrm -rf ~"]\n'))
    assert "line 3: sweep.grid.model.pretrained[1]: got 'evil\\nrm -rf ~'; remove the control character" in message
    message = problems_of(overrides=('sweep.zip.data.train_dir=[a, "b\\rc"]',))
    assert "sweep.zip.data.train_dir[1] (set on the command line): got 'b\\rc'; remove the control character" in message


def test_negative_prompt_is_free_text_with_line_breaks_only(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, 'infer:\n  negative_prompt: "blurry,\\n\\tlow quality"\n'))
    assert spec.infer.negative_prompt == "blurry,\n\tlow quality"
    spec = load_spec(overrides=('sweep.grid.infer.negative_prompt=["a\\nb", c]',))
    assert spec.sweep.grid["infer.negative_prompt"] == ("a\nb", "c")
    message = problems_of(write(tmp_path, 'infer:\n  negative_prompt: "blurry\\0"\n'))
    assert "line 2: infer.negative_prompt: got 'blurry\\x00'; remove the control character '\\x00'" in message


def test_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, 'name: "qa\\n"\n'))
    assert "line 1: name: got 'qa\\n'; must be letters, digits, '.', '_' or '-'." in message
    message = problems_of(overrides=('name="qa\\n"',))
    assert "name (set on the command line): got 'qa\\n'; must be letters, digits" in message


@pytest.mark.parametrize(
    ("setting", "shown"),
    [
        ("optim:\n  lr_unet: .inf\n", "line 2: optim.lr_unet: got inf; expected a finite number."),
        ("optim:\n  lr_unet: -.inf\n", "line 2: optim.lr_unet: got -inf; expected a finite number."),
        ("optim:\n  lr_unet: .nan\n", "line 2: optim.lr_unet: got nan; expected a finite number."),
        ("optim:\n  max_grad_norm: .Inf\n", "line 2: optim.max_grad_norm: got inf; expected a finite number."),
        ("validate:\n  guidance: .inf\n", "line 2: validate.guidance: got inf; expected a finite number."),
        ("lora:\n  alpha: 1e999\n", "line 2: lora.alpha: got '1e999'; expected a finite number."),
        ("train:\n  min_snr_gamma: .inf\n", "line 2: train.min_snr_gamma: got inf; expected a finite number"),
        ("optim:\n  betas: [0.9, .inf]\n", "line 2: optim.betas: got [0.9, inf]; expected a finite number."),
        (
            "sweep:\n  grid:\n    optim.lr_unet: [1.0e-4, .inf]\n",
            "line 3: sweep.grid.optim.lr_unet[1]: got inf; expected a finite number.",
        ),
    ],
)
def test_non_finite_numbers_are_refused_in_yaml(tmp_path: Path, setting: str, shown: str) -> None:
    assert shown in problems_of(write(tmp_path, setting))


@pytest.mark.parametrize("raw", ["inf", "-inf", "nan", "1e999", ".inf", "-1e999"])
def test_non_finite_numbers_are_refused_on_the_command_line(raw: str) -> None:
    message = problems_of(overrides=(f"optim.lr_unet={raw}",))
    assert "optim.lr_unet (set on the command line): got" in message
    assert "expected a finite number." in message


def laughs(levels: int = 9, width: int = 9) -> str:
    """The billion-laughs document: each level an anchored list of ``width`` aliases of the one before."""
    rows = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    rows += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(rows) + f"\nlora:\n  unet_targets: *l{levels - 1}\n"


def mapping_bomb(levels: int = 9, width: int = 9, merge: bool = False) -> str:
    """Nested anchored mappings; with ``merge`` each level merges the one before ``width`` times."""
    keys = [chr(ord("a") + i) for i in range(width)]
    rows = [f"m0: &m0 {{{', '.join(f'{k}: 1' for k in keys)}}}"]
    for i in range(1, levels):
        if merge:
            rows.append(f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * width)}]}}")
        else:
            rows.append(f"m{i}: &m{i} {{{', '.join(f'{k}: *m{i - 1}' for k in keys)}}}")
    return "\n".join(rows) + f"\ntrain:\n  <<: *m{levels - 1}\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", [laughs(), mapping_bomb(), mapping_bomb(merge=True)], ids=["list", "map", "merge"])
def test_alias_bombs_are_refused_quickly(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    started = time.process_time()
    message = problems_of(path)
    assert time.process_time() - started < 1.0
    assert "more than 10,000 values once its aliases are expanded" in message
    assert "(1 problem)" in message


def test_alias_bomb_in_an_override_is_refused() -> None:
    value = "[" + ", ".join(["&a [" + ", ".join(["x"] * 9) + "]"] + ["*a"] * 8) + "]"
    assert load_spec(overrides=(f"sweep.grid.lora.unet_targets={value}",)).sweep.grid  # 81 values: fine
    value = "[&a [x, x, x, x, x, x, x, x, x, x], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a], "
    value += "&c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b], [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]]"
    message = problems_of(overrides=(f"sweep.grid.lora.unet_targets={value}",))
    assert "sweep.grid.lora.unet_targets (set on the command line): more than 10,000 values" in message


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, "lora:\n  unet_targets: &a [to_q, *a]\n"))
    assert "line 2: an alias refers to the list or mapping that holds it" in message


def test_small_anchors_aliases_and_merge_keys_still_work(tmp_path: Path) -> None:
    text = (
        "validate: &sampling\n  steps: 30\n  guidance: 6.0\n"
        "infer:\n  <<: *sampling\n  steps: 40\n"
        "optim:\n  lr_unet: &lr 2.0e-4\n  lr_text_encoder: *lr\n"
    )
    spec = load_spec(write(tmp_path, text))
    assert (spec.validate.steps, spec.infer.steps, spec.infer.guidance) == (30, 40, 6.0)
    assert spec.optim.lr_text_encoder == spec.optim.lr_unet == 2e-4
    # a merged key that is wrong is reported at the line it came from
    message = problems_of(write(tmp_path, text.replace("guidance: 6.0", "guidance: -1")))
    assert "line 3: validate.guidance: got -1.0" in message and "line 3: infer.guidance: got -1.0" in message


@pytest.mark.parametrize("opening", ["[", "{a: "], ids=["lists", "mappings"])
def test_deep_nesting_is_refused_in_a_file_and_an_override(tmp_path: Path, opening: str) -> None:
    closing = "]" if opening == "[" else "}"
    deep = opening * 3000 + closing * 3000
    message = problems_of(write(tmp_path, f"lora:\n  unet_targets: {deep}\n"))
    assert "line 2: nesting deeper than 32 levels" in message
    message = problems_of(overrides=(f"lora.unet_targets={deep}",))
    assert "lora.unet_targets (set on the command line): nesting deeper than 32 levels" in message


def test_oversized_spec_is_refused(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, "# " + "x" * (1 << 20) + "\nname: big\n"))
    assert "larger than 1 MiB" in message


def test_key_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, "train:\n  batch_size: 2\n  epochs: 3\n  batch_size: 4\n"))
    assert "line 4: train.batch_size: given twice, on lines 2 and 4; keep one." in message
    text = "train:\n  batch_size: 2\noptim:\n  lr_unet: 1.0e-4\ntrain:\n  epochs: 3\n"
    message = problems_of(write(tmp_path, text))
    assert "line 5: train: given twice, on lines 1 and 5; keep one" in message
    message = problems_of(write(tmp_path, "name: a\nname: b\nname: c\n"))
    assert "line 3: name: given 3 times, on lines 1, 2 and 3; keep one." in message
    message = problems_of(overrides=("sweep.grid={lora.rank: [4], lora.rank: [8]}",))
    assert "sweep.grid.lora.rank (set on the command line): given twice; keep one." in message


def test_non_utf8_spec_names_the_line_column_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"optim:\n  lr_unet: 1.0e-4\nname: caf\xe9\n")
    message = problems_of(path)
    assert f"invalid experiment spec {path}" in message
    assert "line 3: byte 0xe9 at column 10 is not UTF-8; save the file as UTF-8." in message


def test_utf8_bom_is_accepted_and_lines_still_count(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfoptim:\n  lr_unet: 2.0e-4\n")
    assert load_spec(path).optim.lr_unet == 2e-4
    path.write_bytes(b"\xef\xbb\xbfoptim:\n  lr_unet: -1\n")
    assert "line 2: optim.lr_unet: got -1.0" in problems_of(path)


def test_control_character_in_the_file_itself_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "nul.yaml"
    path.write_bytes(b"name: a\noutput_dir: b\x00c\n")
    assert "line 2: character '\\x00' (U+0000) is not allowed in a YAML file; remove it." in problems_of(path)


def test_spec_path_that_is_a_folder(tmp_path: Path) -> None:
    assert f"{tmp_path} is a folder, not a spec file" in problems_of(tmp_path)


def test_unreadable_spec_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "name: a\n")
    real_open = Path.open

    def deny(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", deny)
    assert f"cannot read {path}: permission denied" in problems_of(path)


def test_huge_integer_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, f"train:\n  epochs: {'9' * 5000}\n"))
    assert "line 2: cannot read this value: Exceeds the limit (4300 digits)" in message
    message = problems_of(overrides=(f"train.epochs={'9' * 5000}",))
    assert "train.epochs (set on the command line): cannot read this value: Exceeds the limit" in message
    assert "sys.set_int_max_str_digits" not in message


def test_the_warning_must_leave_time_for_work_as_slurm_may_send_it_early() -> None:
    with pytest.raises(
        SpecError, match=r"slurm.signal_lead_s \(set on the command line\): got 30; .*at least 60 s.*up to 60 s early"
    ):
        load_spec(None, ["slurm.time_min=1", "slurm.signal_lead_s=30"])
    load_spec(None, ["slurm.time_min=2", "slurm.signal_lead_s=30"])


def test_steps_training_never_reaches_and_unknown_fonts_are_refused_at_plan(tmp_path: Path) -> None:
    """Found on the login node, not after training: a chosen step beyond train.max_steps never
    exists, and a typeset font that is neither a role nor a readable file fails every cover. Snapshot
    steps beyond the end are left out of the run (a sweep over max_steps may name them)."""
    path = write(tmp_path, "train:\n  max_steps: 40\nvalidate:\n  at_steps: [10, 99]\n"
                           "infer:\n  checkpoint: 120\n  typeset: true\n  typeset_font: comic\n")  # fmt: skip
    text = problems_of(path)
    assert "validate.at_steps" not in text
    assert "line 6: infer.checkpoint: got 120; training ends at train.max_steps (40)" in text
    assert "line 8: infer.typeset_font: font 'comic': not a role (serif, sans, display)" in text
    not_a_font = tmp_path / "font.ttf"
    not_a_font.write_text("not a font")
    overrides = (f"infer.typeset_font={not_a_font}", "infer.checkpoint=best", "validate.at_steps=[10]")
    assert "not a font file that can be read" in problems_of(path, overrides)
    fine = load_spec(path, ("infer.typeset_font=sans", "infer.checkpoint=40", "validate.at_steps=[10, 40]"))
    assert (fine.infer.typeset_font, fine.infer.checkpoint, fine.validate.at_steps) == ("sans", "40", (10, 40))
    unused = load_spec(path, ("infer.typeset=false", "infer.checkpoint=final", "validate.at_steps=[10]"))
    assert unused.infer.typeset_font == "comic"  # read only when covers are typeset


def test_the_finished_covers_size_is_checked_with_its_key_and_line(tmp_path: Path) -> None:
    ok = load_spec(write(tmp_path, "name: t\ninfer:\n  cover_size: [2560, 1600]\n"))
    assert ok.infer.cover_size == (2560, 1600) and ok.infer.typeset  # finished covers are on by default
    for value, expect in (("[10, 20]", "each 16 to 12000"), ("[1, 2, 3]", "a list of 2 values"),
                          ("big", "a list of 2 values"), ("[2560.5, 1600]", "a list of 2 values")):  # fmt: skip
        message = problems_of(write(tmp_path, f"name: t\ninfer:\n  cover_size: {value}\n"))
        assert "line 3: infer.cover_size" in message and expect in message, message
    off = problems_of(write(tmp_path, "name: t\ninfer:\n  typeset: false\n  cover_size: [2560, 1600]\n"))
    assert "infer.cover_size" in off and "turn infer.typeset on or remove infer.cover_size" in off
