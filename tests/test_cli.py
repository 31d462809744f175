"""The cover-hpc command as a user runs it: the installed console script, in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .conftest import REPO


def cover_hpc(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("cover-hpc") or str(Path(sys.executable).parent / "cover-hpc")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def commands() -> list[str]:
    """Every subcommand of cover-hpc, as its parser defines them."""
    import argparse

    from cover_hpc.cli import build_parser

    (subcommands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(subcommands.choices)


def test_help_everywhere() -> None:
    names = commands()
    assert {"plan", "keys", "submit", "status", "train", "typeset", "demo"} <= set(names), names
    top = cover_hpc("--help")
    assert top.returncode == 0 and top.stdout.startswith("usage: cover-hpc"), top.stderr
    assert [name for name in names if f"    {name} " not in top.stdout and f"    {name}\n" not in top.stdout] == []
    exe = shutil.which("cover-hpc") or str(Path(sys.executable).parent / "cover-hpc")
    running = {name: subprocess.Popen([exe, name, "--help"], cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for name in names}  # fmt: skip
    for name, process in running.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, (name, err)
        assert out.startswith(f"usage: cover-hpc {name}"), (name, out[:300])
        assert "Traceback" not in err, (name, err)


def test_plan_lists_the_sweep() -> None:
    result = cover_hpc("plan", "configs/sweep_lr_rank.yaml")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["run_id", "optim.lr_unet", "lora.rank", "lora.alpha"]
    assert len([line for line in lines if line.startswith("lr_unet")]) == 6
    assert "6 runs of experiment 'sweep-lr-rank'" in result.stdout


def test_plan_json() -> None:
    result = cover_hpc("plan", "configs/demo.yaml", "--json")
    runs = json.loads(result.stdout)
    assert [sorted(run) for run in runs] == [["lora.rank", "run_id"]] * 2
    assert [run["lora.rank"] for run in runs] == [4, 8]


def test_bad_spec_is_one_paragraph_without_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("optim:\n  lr_unet: -1\ntrain:\n  batch_sise: 2\n")
    result = cover_hpc("plan", str(spec))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"invalid experiment spec {spec} (2 problems)" in result.stderr
    assert "line 2: optim.lr_unet: got -1.0; must be greater than 0." in result.stderr
    assert "line 4: train.batch_sise: unknown key. did you mean 'batch_size'?" in result.stderr
    assert result.stdout == ""
    # one paragraph: the heading, then one line per problem, no blank line
    heading, *problems = result.stderr.rstrip("\n").split("\n")
    assert heading.startswith("cover-hpc: invalid experiment spec") and heading.endswith("(2 problems):"), heading
    assert len(problems) == 2 and all(line.startswith("  - line ") for line in problems), problems


def keys_listing(text: str) -> dict[str, tuple[str, str]]:
    """``cover-hpc keys`` output as {dotted key: (default, help)}; each entry is "key = default" and
    its help on the next line, indented by four spaces."""
    lines = text.splitlines()
    assert len(lines) % 2 == 0, text[-2000:]
    entries: dict[str, tuple[str, str]] = {}
    for head, help_line in zip(lines[::2], lines[1::2], strict=True):
        key, sep, default = head.partition(" = ")
        assert sep and key and not key.startswith(" "), head
        assert help_line.startswith("    "), (key, help_line)
        assert key not in entries, f"{key} listed twice"
        entries[key] = (default, help_line[4:])
    return entries


def test_keys_documents_every_field() -> None:
    """Every leaf field of every section (the schema's own list, and the dataclasses walked here) is
    listed once, with its default (as JSON) and a help text; ``keys SECTION`` lists that section's."""
    import dataclasses

    from cover_hpc.spec.schema import ExperimentSpec, all_keys, to_dict

    def leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
        found: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value, path = getattr(obj, f.name), f"{prefix}{f.name}"
            found.update(leaves(value, f"{path}.") if dataclasses.is_dataclass(value) else {path: value})
        return found

    defaults = leaves(ExperimentSpec())
    assert set(defaults) == set(all_keys()) and len(defaults) > 80
    sections = {key.split(".")[0] for key in defaults if "." in key}
    assert {"model", "data", "lora", "optim", "train", "distributed", "validate", "infer", "slurm", "sweep"} <= sections
    result = cover_hpc("keys")
    assert result.returncode == 0, result.stderr
    listed = keys_listing(result.stdout)
    assert sorted(listed) == sorted(defaults), set(listed) ^ set(defaults)
    for key, (default, text) in listed.items():
        assert json.loads(default) == to_dict(defaults[key]), (key, default)
        assert text.strip() and text.strip() != key, f"{key} has no help text"
    assert listed["optim.lr_unet"] == ("0.0001", "Learning rate of the UNet adapters.")
    for section in sorted(sections):
        shown = cover_hpc("keys", section)
        assert shown.returncode == 0, shown.stderr
        assert keys_listing(shown.stdout) == {k: v for k, v in listed.items() if k.startswith(f"{section}.")}


def test_keys_of_an_unknown_section_fails_naming_the_sections() -> None:
    result = cover_hpc("keys", "optimm")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "no section or key 'optimm'; did you mean 'optim'?" in result.stderr
    sections = "sections: model, data, lora, optim, train, distributed, validate, infer, slurm, sweep, track"
    assert f"{sections}; top-level keys: name, output_dir" in result.stderr
    assert "did you mean 'train.seed'?" in cover_hpc("keys", "train.sed").stderr


def test_keys_of_one_dotted_key() -> None:
    result = cover_hpc("keys", "optim.lr_unet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "optim.lr_unet = 0.0001\n    Learning rate of the UNet adapters.\n"


def test_hostile_specs_are_refused_without_traceback(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("lora:\n  unet_targets: " + "[" * 3000 + "]" * 3000 + "\n")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"name: caf\xe9\n")
    for spec, expected in [(deep, "line 2: nesting deeper than"), (latin1, "line 1: byte 0xe9"), (tmp_path, "folder")]:
        result = cover_hpc("plan", str(spec), 'slurm.partition="gpu\\n#SBATCH --wrap=id"')
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and expected in result.stderr
    result = cover_hpc("plan", "configs/demo.yaml", "slurm.partition=gpu\nsrun id")
    assert result.returncode == 2
    assert "slurm.partition (set on the command line): got 'gpu\\nsrun id'; remove the control" in result.stderr


def test_output_piped_into_a_reader_that_stops_early() -> None:
    """`cover-hpc keys | head -0`: the reader has closed the pipe before anything is written; no traceback,
    SIGPIPE's status."""
    process = subprocess.Popen([sys.executable, "-m", "cover_hpc.cli", "keys"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout is not None
    process.stdout.close()  # as head does once it has its lines
    _, stderr = process.communicate(timeout=120)
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert process.returncode == 141


def test_a_broken_pipe_to_a_child_process_is_not_taken_for_a_closed_stdout() -> None:
    """Only a closed standard output ends a command quietly; a BrokenPipeError from any other pipe stays an error."""
    code = (
        "import sys\n"
        "from cover_hpc import cli\n"
        "def broken(args): raise BrokenPipeError(32, 'Broken pipe')\n"
        "cli.cmd_keys = broken\n"
        "sys.exit(cli.main(['keys']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "BrokenPipeError" in result.stderr, result
