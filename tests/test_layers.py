"""The package's import rule (docs/ARCHITECTURE.md), function-level imports included:

    cli > orchestrate, job > stages > typeset, demo > model, metrics > store > runtime > spec, assets

A module imports only from its own layer or below, there is no import circle, and only orchestrate/
imports submitit. This test fails on the first import that breaks the rule, naming file and line."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cover_hpc"
LAYERS = {
    "spec": 0, "assets": 0, "runtime": 1, "store": 2, "model": 3, "metrics": 3, "typeset": 4, "demo": 4,
    "track": 2, "stages": 5, "orchestrate": 6, "job": 6, "cli": 7,
}  # fmt: skip
ROOT_MODULES = {"cover_hpc", "cover_hpc._torchvision_compat"}  # the package's start-up, imported by everything


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[tuple[str, int]]:
    """(imported module, line) of every import anywhere in the file, ``from X import m`` as X.m where
    X.m is a module."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").is_file() or (
                    PACKAGE.parent / candidate.replace(".", "/") / "__init__.py").is_file()  # fmt: skip
                yield (candidate if is_module else node.module), node.lineno


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


MODULES = {_module(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer() -> None:
    missing = [m for m in MODULES if m not in ROOT_MODULES and _layer(m) is None]
    assert not missing, f"modules outside every layer (add them to LAYERS and docs/ARCHITECTURE.md): {missing}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m not in ROOT_MODULES))
def test_imports_run_one_way(module: str) -> None:
    own = _layer(module)
    assert own is not None
    for imported, line in _imports(MODULES[module]):
        if imported.split(".")[0] == "submitit":
            assert module.startswith("cover_hpc.orchestrate."), (
                f"{MODULES[module]}:{line}: only orchestrate/ imports submitit"
            )
        if not imported.startswith("cover_hpc.") or imported in ROOT_MODULES:
            continue
        layer = _layer(imported)
        assert layer is not None and layer <= own, (
            f"{MODULES[module]}:{line}: {module} (layer {own}) imports {imported} (layer {layer}), a layer above it"
        )


def test_no_import_circle() -> None:
    graph = {m: {i for i, _ in _imports(p) if i in MODULES and i not in ROOT_MODULES} for m, p in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import circle: " + " -> ".join(circle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
