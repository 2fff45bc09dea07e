"""OLMoE: RMSNorm over the whole q and k projections (before the head split), optional q/k/v
clipping, no sliding window (transformers builds a plain causal mask)."""

from __future__ import annotations

from typing import Any

from hagmoe.model.hf_import.family import Family
from hagmoe.model.hf_import.source_config import SourceConfig

DEFAULTS: dict[str, Any] = {
    "vocab_size": 50304,
    "hidden_size": 2048,
    "intermediate_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": None,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "pad_token_id": 1,
    "eos_token_id": 50279,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "clip_qkv": None,
    "num_experts_per_tok": 8,
    "num_experts": 64,
    "norm_topk_prob": False,
    "rope_theta": 10000.0,
}


def _specific(src: SourceConfig) -> dict[str, Any]:
    d, heads = src.require("hidden_size"), src.require("num_attention_heads")
    head_dim = src.get("head_dim")
    if head_dim is not None and head_dim * heads != d:
        src.unsupported("head_dim", head_dim, f"OLMoE's q norm spans hidden_size ({d})")
    return {
        "attn_bias": bool(src.get("attention_bias")),
        "qk_norm_type": "projection",
        "clip_qkv": src.get("clip_qkv"),
    }


OLMOE = Family(
    model_type="olmoe",
    defaults=DEFAULTS,
    ffn_key="intermediate_size",
    moe_blocks=("mlp",),
    expert_projections=("gate_proj", "up_proj", "down_proj"),
    specific=_specific,
)
