"""manifest.json of an exported folder: the graphs' files, inputs and outputs (names, dtypes,
shapes with named dynamic axes), the opset, the exporter and the model config.

Shapes list an int for a fixed size and a name for a dynamic axis: batch (B), seq (T, prompt
positions), past_seq (P, cached positions) and present_seq (P + 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hagmoe.model.config import ModelConfig
from hagmoe.onnx.errors import ManifestError

MANIFEST_FILE = "manifest.json"
FORMAT = "hagmoe-onnx"
VERSION = 1
PREFILL_FILE = "prefill.onnx"
DECODE_FILE = "decode.onnx"

Dim = int | str


@dataclass(slots=True, frozen=True)
class TensorSpec:
    """One graph input or output."""

    name: str
    dtype: str  # "int64" or "float32"
    shape: tuple[Dim, ...]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "dynamic_axes": {str(i): d for i, d in self.dynamic_axes.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["dtype"]), tuple(data["shape"]))


@dataclass(slots=True, frozen=True)
class GraphSpec:
    """One graph file and its signature."""

    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: t.dynamic_axes for t in (*self.inputs, *self.outputs)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GraphSpec:
        return cls(
            str(data["file"]),
            tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
        )


@dataclass(slots=True, frozen=True)
class Manifest:
    """What an exported folder holds; `save` / `load` round-trip it through manifest.json."""

    config: ModelConfig
    opset: int
    exporter: str
    prefill: GraphSpec
    decode: GraphSpec
    dtype: str = "float32"

    @property
    def cache_names(self) -> list[str]:
        """Past-cache inputs of the decode graph, in order (after input_ids and past_lengths)."""
        return self.decode.input_names[2:]

    def save(self, folder: str | Path) -> None:
        data = {
            "format": FORMAT,
            "version": VERSION,
            "opset": self.opset,
            "exporter": self.exporter,
            "dtype": self.dtype,
            "graphs": {"prefill": self.prefill.to_dict(), "decode": self.decode.to_dict()},
            "config": self.config.to_dict(),
        }
        (Path(folder) / MANIFEST_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> Manifest:
        """Read folder/manifest.json; ManifestError names the file and what is wrong."""
        path = Path(folder) / MANIFEST_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ManifestError(f"cannot read ONNX manifest {path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ManifestError(f"{path} is not a {FORMAT!r} manifest")
        if data.get("version") != VERSION:
            raise ManifestError(f"{path}: version {data.get('version')!r}, expected {VERSION}")
        try:
            graphs = data["graphs"]
            return cls(
                config=ModelConfig.from_dict(data["config"]),
                opset=int(data["opset"]),
                exporter=str(data["exporter"]),
                prefill=GraphSpec.from_dict(graphs["prefill"]),
                decode=GraphSpec.from_dict(graphs["decode"]),
                dtype=str(data.get("dtype", "float32")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{path}: malformed manifest ({exc!r})") from exc


def graph_specs(config: ModelConfig, cache_parts: tuple[str, ...]) -> tuple[GraphSpec, GraphSpec]:
    """The prefill and decode signatures of a model with these per-layer cache parts."""
    v = config.vocab_size
    widths: dict[str, tuple[Dim, ...]] = {
        "key": (config.kv_heads, config.hd),
        "value": (config.kv_heads, config.hd),
        "routing": (config.num_routing_values,),
    }

    def cache(prefix: str, seq: str) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(f"{prefix}.{layer}.{part}", "float32", ("batch", seq, *widths[part]))
            for layer in range(config.num_layers)
            for part in cache_parts
        )

    prefill = GraphSpec(
        PREFILL_FILE,
        inputs=(
            TensorSpec("input_ids", "int64", ("batch", "seq")),
            TensorSpec("lengths", "int64", ("batch",)),
        ),
        outputs=(TensorSpec("logits", "float32", ("batch", "seq", v)), *cache("present", "seq")),
    )
    decode = GraphSpec(
        DECODE_FILE,
        inputs=(
            TensorSpec("input_ids", "int64", ("batch", 1)),
            TensorSpec("past_lengths", "int64", ("batch",)),
            *cache("past", "past_seq"),
        ),
        outputs=(
            TensorSpec("logits", "float32", ("batch", 1, v)),
            *cache("present", "present_seq"),
        ),
    )
    return prefill, decode
