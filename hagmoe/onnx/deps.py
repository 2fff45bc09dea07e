"""Imports of the optional ONNX packages, turned into OnnxDependencyError when absent."""

from __future__ import annotations

import importlib
from types import ModuleType

from hagmoe.onnx.errors import OnnxDependencyError


def require(package: str) -> ModuleType:
    """Import `package` ("onnx" or "onnxruntime"); OnnxDependencyError names the extra if absent."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise OnnxDependencyError(package) from exc
