"""A transformers config.json of a supported family -> the native ModelConfig: the linear-router
special case (router = "linear", num_groups = 1, experts_per_group = N, feedback_dim = 0, rope,
RMSNorm) plus the family's own keys. Anything the native model cannot reproduce is refused."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hagmoe.errors import ConfigError
from hagmoe.model.config import MODEL_TYPE, ModelConfig
from hagmoe.model.hf_import.registry import family_for
from hagmoe.model.hf_import.rope_params import rope_settings
from hagmoe.model.hf_import.source_config import SourceConfig


def native_config(data: Mapping[str, Any]) -> ModelConfig:
    """The native config of a transformers config.json; ConfigError names what cannot be kept."""
    family = family_for(data.get("model_type"))
    src = SourceConfig(family.model_type, data, family.defaults)
    _reject_common(src)
    native = {**_common_keys(src, family.ffn_key), **family.specific(src)}
    try:
        return ModelConfig.from_dict(native)
    except ConfigError as exc:
        raise ConfigError(
            f"{family.model_type} config.json converts to an invalid one: {exc}"
        ) from exc


def _common_keys(src: SourceConfig, ffn_key: str) -> dict[str, Any]:
    d, heads = src.require("hidden_size"), src.require("num_attention_heads")
    theta, scaling = rope_settings(src)
    experts = src.first("num_local_experts", "num_experts")
    return {
        "model_type": MODEL_TYPE,
        "vocab_size": src.require("vocab_size"),
        "hidden_size": d,
        "num_layers": src.require("num_hidden_layers"),
        "num_heads": heads,
        "num_kv_heads": src.get("num_key_value_heads") or heads,
        "head_dim": src.get("head_dim") or d // heads,
        "ffn_size": src.require(ffn_key),
        "num_groups": 1,
        "experts_per_group": experts,
        "router": "linear",
        "top_k": src.require("num_experts_per_tok"),
        "normalize_topk": bool(src.get("norm_topk_prob")),
        "feedback_dim": 0,
        "position": "rope",
        "rope_theta": theta,
        "rope_scaling": scaling,
        "max_position": src.require("max_position_embeddings"),
        "norm": "rmsnorm",
        "norm_eps": float(src.require("rms_norm_eps")),
        "tie_embeddings": bool(src.get("tie_word_embeddings")),
        "bos_token_id": src.get("bos_token_id"),
        "eos_token_id": first_token_id(src.get("eos_token_id")),
        "pad_token_id": src.get("pad_token_id"),
    }


def _reject_common(src: SourceConfig) -> None:
    act = src.get("hidden_act")
    if act != "silu":
        src.unsupported("hidden_act", act, "experts are SwiGLU (silu) only")
    experts = src.first("num_local_experts", "num_experts")
    if not isinstance(experts, int) or experts < 1:
        src.unsupported("num_experts", experts, "a dense model (no experts)")
    quantization = src.data.get("quantization_config")
    if quantization:
        src.unsupported("quantization_config", quantization, "quantized weights")


def first_token_id(value: Any) -> Any:
    """transformers allows a list of eos ids; the native config holds one (the first)."""
    if isinstance(value, list):
        return value[0] if value else None
    return value
