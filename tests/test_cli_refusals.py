"""A stage command that refuses its input leaves the experiment tree as it was: the check comes
before the run folder, its config.json, any folder or lock (issue 20 item 9, through the CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_submit import cli, spec_file

pytestmark = pytest.mark.tiny


def _tree(root: Path) -> dict[str, bytes | None]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(("command", "overrides", "says"), [
    ("train", ["data.train_dir=/nonexistent/train"], "data folder not found"),
    ("infer", ["infer.books_file=/nonexistent/books.jsonl"], "books"),
    ("infer", [], "train"),  # the run has not been trained: no LoRA to sample with
    ("validate", [], "train"),
])  # fmt: skip
def test_a_refused_stage_command_writes_nothing(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path,
                                                command: str, overrides: list[str], says: str) -> None:  # fmt: skip
    path = spec_file(tmp_path, tiny_model_dir, demo_data_dir, validate={"clip_model": str(tiny_model_dir)})
    root = tmp_path / "experiments"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "keep.txt").write_text("work already done")
    before = _tree(root)
    result = cli(command, str(path), *overrides)
    assert result.returncode != 0, result.stdout
    assert says in (result.stdout + result.stderr).lower()
    assert _tree(root) == before, "a refused input left files or folders behind"
