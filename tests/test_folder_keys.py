"""Validation and inference folders do not move when cover-hpc grows: keys added since 0.2.0 are left out
of their hashes at the default that keeps the earlier behaviour (as run ids, cover_hpc.spec.ids)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cover_hpc.spec.load import load_spec
from cover_hpc.store.runs import inference_key, validation_key

# Computed by cover-hpc 0.2.0 (commit 5e44aee) for the spec below: infer.typeset was off by default then.
KEYS_0_2_0 = ("books-abf8196a", "test_set-8f04acdb")


def test_an_upgrade_moves_no_validation_or_inference_folder(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("name: keys\ninfer:\n  books_file: demo/data/books.jsonl\n  typeset: false\n")
    spec = load_spec(path)
    assert spec.infer.cover_size is None
    assert (inference_key(spec), validation_key(spec)) == KEYS_0_2_0
    # a new key away from its default is a new folder; typeset on by default is another setting
    sized = dataclasses.replace(spec, infer=dataclasses.replace(spec.infer, typeset=True, cover_size=(2560, 1600)))
    assert inference_key(sized) != KEYS_0_2_0[0]
