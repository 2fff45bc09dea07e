"""Typed errors of the ONNX export and runtime path."""

from __future__ import annotations

from hagmoe.errors import HagMoEError

INSTALL_HINT = "pip install hagmoe[onnx]"


class OnnxDependencyError(HagMoEError, ImportError):
    """onnx or onnxruntime is not installed; the message names the package and the extra."""

    def __init__(self, package: str) -> None:
        super().__init__(
            f"the ONNX path needs the {package!r} package, which is not installed; "
            f"install it with `{INSTALL_HINT}`"
        )
        self.package = package


class ManifestError(HagMoEError):
    """An ONNX folder's manifest.json is missing, unreadable or of an unknown format."""


class ManifestMismatchError(ManifestError):
    """A graph's inputs or outputs differ from what the manifest names; the message lists them."""

    def __init__(
        self,
        graph: str,
        missing_inputs: list[str],
        extra_inputs: list[str],
        missing_outputs: list[str],
        extra_outputs: list[str],
    ) -> None:
        parts = [
            f"{label}: {', '.join(names)}"
            for label, names in (
                ("inputs in the manifest but not the graph", missing_inputs),
                ("inputs in the graph but not the manifest", extra_inputs),
                ("outputs in the manifest but not the graph", missing_outputs),
                ("outputs in the graph but not the manifest", extra_outputs),
            )
            if names
        ]
        super().__init__(f"graph {graph!r} does not match its manifest; " + "; ".join(parts))
        self.graph = graph
        self.missing_inputs = missing_inputs
        self.extra_inputs = extra_inputs
        self.missing_outputs = missing_outputs
        self.extra_outputs = extra_outputs


class OnnxExportError(HagMoEError):
    """The model cannot be exported (a setting the graphs do not cover, or the exporter failed)."""
