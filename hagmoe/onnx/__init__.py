"""ONNX export of HAG-MoE models and generation on ONNX Runtime (the `onnx` extra).

`export_onnx(model_or_folder, out_dir)` writes prefill.onnx, decode.onnx and manifest.json;
`OnnxGenerator(out_dir).generate(prompts, params)` runs them. docs/onnx.md has the details.
onnx and onnxruntime are imported only when used; OnnxDependencyError names the extra.
"""

from __future__ import annotations

from hagmoe.onnx.errors import (
    ManifestError,
    ManifestMismatchError,
    OnnxDependencyError,
    OnnxExportError,
)
from hagmoe.onnx.exporter import export_onnx
from hagmoe.onnx.generator import OnnxCompletion, OnnxGenerator
from hagmoe.onnx.manifest import GraphSpec, Manifest, TensorSpec
from hagmoe.onnx.session import OnnxSessions, default_providers

__all__ = [
    "GraphSpec",
    "Manifest",
    "ManifestError",
    "ManifestMismatchError",
    "OnnxCompletion",
    "OnnxDependencyError",
    "OnnxExportError",
    "OnnxGenerator",
    "OnnxSessions",
    "TensorSpec",
    "default_providers",
    "export_onnx",
]
