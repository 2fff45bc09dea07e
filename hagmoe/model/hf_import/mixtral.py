"""Mixtral: softmax over all experts, top-k, always renormalised; no biases; optional window."""

from __future__ import annotations

from typing import Any

from hagmoe.model.hf_import.family import Family
from hagmoe.model.hf_import.source_config import SourceConfig

DEFAULTS: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": None,
    "hidden_act": "silu",
    "max_position_embeddings": 4096 * 32,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
    "sliding_window": None,
    "num_experts_per_tok": 2,
    "num_local_experts": 8,
    "rope_theta": 1e6,
}


def _specific(src: SourceConfig) -> dict[str, Any]:
    return {
        "normalize_topk": True,
        "attn_bias": False,
        "sliding_window": src.get("sliding_window"),
    }


MIXTRAL = Family(
    model_type="mixtral",
    defaults=DEFAULTS,
    ffn_key="intermediate_size",
    moe_blocks=("block_sparse_moe", "mlp"),
    expert_projections=("w1", "w3", "w2"),
    specific=_specific,
)
