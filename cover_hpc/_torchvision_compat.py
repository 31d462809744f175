"""Make a CUDA-built torchvision importable next to a CPU-only torch.

PyPI has no CPU build of torchvision, and open_clip (the open_clip CLIP backend) needs it. With a
CPU torch, torchvision's compiled ``_C`` extension cannot load, and ``torchvision/_meta_registrations``
then fails at import (``operator torchvision::nms does not exist``). transformers, diffusers and
peft import torchvision whenever it is installed, so that one failure breaks all of them.

This hook runs just before ``torchvision._meta_registrations`` executes. If the extension loaded
(any GPU machine), it does nothing. Otherwise it declares the two operator schemas that module
registers fake kernels for, so the import succeeds; the ops themselves stay unavailable
(``torchvision.ops.nms`` raises), which nothing in cover-hpc uses.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_TARGET = "torchvision._meta_registrations"
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: Any = None  # keeps the torch.library.Library (and so the schemas) alive


def _declare_missing_ops() -> None:
    global _library
    import torch
    import torchvision.extension

    if torchvision.extension._has_ops() or _library is not None:
        return
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)


class _Loader(importlib.abc.Loader):
    def __init__(self, real: importlib.abc.Loader) -> None:
        self._real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._real.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        _declare_missing_ops()
        self._real.exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Put the hook first on ``sys.meta_path`` (idempotent; cheap: imports nothing)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
