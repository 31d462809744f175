"""Shared fixtures: everything offline, tiny assets built once per session through the real code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cover_hpc  # noqa: F401  (installs the torchvision hook before any model library import)


def pytest_configure(config: pytest.Config) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _hf_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the Hugging Face caches of the tests out of the user's home."""
    os.environ["HF_HOME"] = str(tmp_path_factory.mktemp("hf-home"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cover_hpc.demo.tiny_model import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"), seed=0)


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cover_hpc.demo.covers import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo-data"), num_books=24, extra_books=4).root


REPO = Path(__file__).resolve().parent.parent
