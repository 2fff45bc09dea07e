"""Qwen2-MoE: q/k/v biases without an o bias, and a shared expert scaled by a sigmoid gate."""

from __future__ import annotations

from typing import Any

from hagmoe.model.hf_import.family import Family, reject_dense_layers
from hagmoe.model.hf_import.source_config import SourceConfig

DEFAULTS: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "sliding_window": 4096,
    "max_window_layers": 28,
    "decoder_sparse_step": 1,
    "moe_intermediate_size": 1408,
    "shared_expert_intermediate_size": 5632,
    "num_experts_per_tok": 4,
    "num_experts": 60,
    "norm_topk_prob": False,
    "mlp_only_layers": None,
    "qkv_bias": True,
    "layer_types": None,
    "rope_theta": 10000.0,
}


def _specific(src: SourceConfig) -> dict[str, Any]:
    reject_dense_layers(src)
    shared = src.require("shared_expert_intermediate_size")
    return {
        "attn_bias": bool(src.get("qkv_bias")),
        "attn_out_bias": False,
        "shared_expert_size": shared,
        "shared_expert_gate": True,
        "sliding_window": _window(src),
    }


def _window(src: SourceConfig) -> int | None:
    """transformers gives each layer a type; sliding layers see the last `sliding_window` keys."""
    use = bool(src.get("use_sliding_window"))
    layers, limit = src.require("num_hidden_layers"), src.get("max_window_layers")
    types = src.get("layer_types") or [
        "sliding_attention" if use and (i + 1) % 2 and i < limit else "full_attention"
        for i in range(layers)
    ]
    sliding = [t == "sliding_attention" for t in types]
    if not any(sliding):
        return None
    if not all(sliding):
        src.unsupported("layer_types", types, "mixed sliding-window and full-attention layers")
    window = src.get("sliding_window") if use else 0
    if not isinstance(window, int) or window < 1:
        src.unsupported("sliding_window", window, "sliding layers need a positive window")
    return window


QWEN2_MOE = Family(
    model_type="qwen2_moe",
    defaults=DEFAULTS,
    ffn_key="moe_intermediate_size",
    moe_blocks=("mlp",),
    expert_projections=("gate_proj", "up_proj", "down_proj"),
    specific=_specific,
)
