"""Shared fixtures: everything offline, tiny assets built once per session through the real code."""

from __future__ import annotations

import os
from collections.abc import Iterator
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


@pytest.fixture(scope="session")
def _slurm_session() -> Iterator[dict[str, int]]:
    """Stops the local SLURM cluster after the last test that used it (whatever its shape)."""
    import subprocess

    shape: dict[str, int] = {}
    yield shape
    if shape:
        subprocess.run(["bash", str(REPO / "slurm" / "local" / "down.sh")], capture_output=True, timeout=300)


def _start_cluster(shape: dict[str, int], nodes: int) -> str:
    """Bring slurm/local up with ``nodes`` compute nodes (a no-op when it already runs that way).

    Skipped only outside CI when it cannot start (not root, no apt, no network namespaces); under
    CI (CI=true) or with COVER_HPC_REQUIRE_SLURM=1 a cluster that cannot start fails the tests instead.
    """
    import subprocess

    required = os.environ.get("CI") == "true" or os.environ.get("COVER_HPC_REQUIRE_SLURM") == "1"

    def unavailable(reason: str) -> None:
        if required:
            pytest.fail(f"the SLURM test cluster ({nodes} node(s)) is required here but {reason}")
        pytest.skip(f"no SLURM test cluster ({nodes} node(s)): {reason}")

    if os.geteuid() != 0:
        unavailable("slurm/local/up.sh needs root")
    env = {**os.environ, "COVER_HPC_SLURM_NODES": str(nodes)}
    result = subprocess.run(["bash", str(REPO / "slurm" / "local" / "up.sh")], capture_output=True, text=True,
                            timeout=900, env=env)  # fmt: skip
    shape["nodes"] = nodes
    if result.returncode != 0:
        unavailable(f"slurm/local/up.sh failed:\n{result.stderr[-3000:]}")
    env_file = Path(result.stdout.strip().splitlines()[-1])
    for line in env_file.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            os.environ[key] = value.strip("'\"")
    return os.environ["SLURM_CONF"]


@pytest.fixture
def slurm_cluster(_slurm_session: dict[str, int]) -> str:
    """The local SLURM cluster with one compute node (this machine), 8 CPUs."""
    return _start_cluster(_slurm_session, 1)


@pytest.fixture
def slurm_cluster_2nodes(_slurm_session: dict[str, int]) -> str:
    """The local SLURM cluster as two compute nodes (network namespaces node1, node2), 4 CPUs each."""
    return _start_cluster(_slurm_session, 2)
