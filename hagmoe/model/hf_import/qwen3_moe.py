"""Qwen3-MoE: per-head RMSNorm on q and k before rope, no biases by default, no shared expert."""

from __future__ import annotations

from typing import Any

from hagmoe.model.hf_import.family import Family, reject_dense_layers
from hagmoe.model.hf_import.source_config import SourceConfig

DEFAULTS: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "num_hidden_layers": 24,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "use_sliding_window": False,
    "sliding_window": 4096,
    "decoder_sparse_step": 1,
    "moe_intermediate_size": 768,
    "num_experts_per_tok": 8,
    "num_experts": 128,
    "norm_topk_prob": False,
    "mlp_only_layers": None,
    "rope_theta": 10000.0,
}


def _specific(src: SourceConfig) -> dict[str, Any]:
    reject_dense_layers(src)
    return {
        "attn_bias": bool(src.get("attention_bias")),
        "qk_norm_type": "head",
        "sliding_window": src.get("sliding_window") if src.get("use_sliding_window") else None,
    }


QWEN3_MOE = Family(
    model_type="qwen3_moe",
    defaults=DEFAULTS,
    ffn_key="moe_intermediate_size",
    moe_blocks=("mlp",),
    expert_projections=("gate_proj", "up_proj", "down_proj"),
    specific=_specific,
)
