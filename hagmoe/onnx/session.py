"""ONNX Runtime sessions over an exported folder, checked against its manifest.

Legend: B sequences, T prompt positions, P past positions, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hagmoe.onnx.deps import require
from hagmoe.onnx.errors import ManifestMismatchError
from hagmoe.onnx.manifest import GraphSpec, Manifest

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def default_providers(available: list[str]) -> list[str]:
    """CUDA first when this onnxruntime build has it, always CPU as the fallback."""
    return [CUDA, CPU] if CUDA in available else [CPU]


def check_graph(name: str, spec: GraphSpec, session: Any) -> None:
    """Raise ManifestMismatchError unless the session's input and output names are the spec's."""
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    missing_in = [n for n in spec.input_names if n not in inputs]
    extra_in = [n for n in inputs if n not in spec.input_names]
    missing_out = [n for n in spec.output_names if n not in outputs]
    extra_out = [n for n in outputs if n not in spec.output_names]
    if missing_in or extra_in or missing_out or extra_out:
        raise ManifestMismatchError(name, missing_in, extra_in, missing_out, extra_out)


@dataclass(slots=True)
class OnnxSessions:
    """The prefill and decode sessions of one exported folder."""

    manifest: Manifest
    prefill_session: Any  # onnxruntime.InferenceSession
    decode_session: Any
    providers: list[str]

    @classmethod
    def load(
        cls, folder: str | Path, providers: list[str] | None = None, threads: int | None = None
    ) -> OnnxSessions:
        """Open both graphs (default providers: `default_providers`); `threads` sets ORT's
        intra-op threads, which never spin-wait (they would starve the torch sampler between
        steps). Raises ManifestError / ManifestMismatchError / OnnxDependencyError."""
        ort = require("onnxruntime")
        folder = Path(folder)
        manifest = Manifest.load(folder)
        chosen = providers or default_providers(ort.get_available_providers())
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        sessions = []
        for name, spec in (("prefill", manifest.prefill), ("decode", manifest.decode)):
            session = ort.InferenceSession(
                str(folder / spec.file), sess_options=options, providers=chosen
            )
            check_graph(name, spec, session)
            sessions.append(session)
        return cls(manifest, sessions[0], sessions[1], sessions[0].get_providers())

    def prefill(
        self, input_ids: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """input_ids [B, T] (right-padded), lengths [B] -> logits [B, T, V], present cache."""
        out = self.prefill_session.run(None, {"input_ids": input_ids, "lengths": lengths})
        return out[0], out[1:]

    def decode(
        self, input_ids: np.ndarray, past_lengths: np.ndarray, past: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """input_ids [B, 1], past_lengths [B], past cache [B, P, ...] -> logits [B, 1, V] and
        the cache grown to [B, P+1, ...] with each row's new entry at index past_lengths[b]."""
        feeds = {"input_ids": input_ids, "past_lengths": past_lengths}
        feeds.update(zip(self.manifest.cache_names, past, strict=True))
        out = self.decode_session.run(None, feeds)
        return out[0], out[1:]
