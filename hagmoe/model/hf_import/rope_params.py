"""transformers' rope settings (5.x `rope_parameters`, or 4.x `rope_theta` + `rope_scaling`) as
the native `rope_theta` and `rope_scaling` keys. Supported rope types: default, linear, yarn."""

from __future__ import annotations

import math
from typing import Any

from hagmoe.model.hf_import.source_config import SourceConfig

ROPE_TYPES = ("default", "linear", "yarn")


def rope_settings(src: SourceConfig) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) exactly as transformers would compute the frequencies."""
    key = "rope_scaling" if src.get("rope_scaling") else "rope_parameters"
    params = src.get(key) or {}
    if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
        src.unsupported(key, params, "per-layer-type rope parameters")
    kind = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", src.get("rope_theta"))
    partial = params.get("partial_rotary_factor", src.get("partial_rotary_factor"))
    if partial not in (None, 1, 1.0):
        src.unsupported("partial_rotary_factor", partial, "rope on part of each head")
    if kind == "default":
        return float(theta), None
    if kind == "linear":
        return float(theta), {"type": "linear", "factor": float(params["factor"])}
    if kind == "yarn":
        return float(theta), _yarn(src, params)
    supported = ", ".join(ROPE_TYPES)
    return src.unsupported(key, params, f"rope type {kind!r} (supported: {supported})")


def _yarn(src: SourceConfig, params: dict[str, Any]) -> dict[str, Any]:
    original = src.data.get("original_max_position_embeddings") or params.get(
        "original_max_position_embeddings", src.require("max_position_embeddings")
    )
    factor = params.get("factor") or src.require("max_position_embeddings") / original
    attention = params.get("attention_factor")
    if attention is None:
        mscale, mscale_all = params.get("mscale"), params.get("mscale_all_dim")
        attention = (
            _mscale(factor, mscale) / _mscale(factor, mscale_all)
            if mscale and mscale_all
            else _mscale(factor)
        )
    return {
        "type": "yarn",
        "factor": float(factor),
        "original_max_position": int(original),
        "beta_fast": float(params.get("beta_fast") or 32),
        "beta_slow": float(params.get("beta_slow") or 1),
        "attention_factor": float(attention),
        "truncate": bool(params.get("truncate", True)),
    }


def _mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0
