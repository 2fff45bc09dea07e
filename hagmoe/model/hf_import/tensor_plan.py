"""Which checkpoint tensors make each native tensor (MODEL.md names), for both expert layouts
transformers writes: per-expert 2-D projections (`experts.{e}.w1` or `experts.{e}.gate_proj`, as
`save_pretrained` writes them) and the fused 3-D `experts.gate_up_proj` [N, 2F, d] (gate rows
first) with `experts.down_proj` [N, d, F] (transformers 5's in-memory layout).

Legend: N experts, F expert FFN size, d hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass

from hagmoe.model.config import ModelConfig
from hagmoe.model.hf_import.family import Family

COPY, STACK, GATE_HALF, UP_HALF = "copy", "stack", "gate_half", "up_half"
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(slots=True, frozen=True)
class Source:
    """How one native tensor is made: `how` applied to the checkpoint tensors `names`."""

    names: tuple[str, ...]
    how: str = COPY  # COPY one; STACK [N, ...]; GATE_HALF / UP_HALF rows [:F] / [F:] of [N, 2F, d]


Plan = dict[str, Source]


def tensor_plan(config: ModelConfig, family: Family, present: set[str]) -> Plan:
    """Native name -> Source for every tensor of `config`'s model; `present` (the checkpoint's
    names) picks each layer's sparse-block name and expert layout."""
    plan = {
        "embed.weight": Source(("model.embed_tokens.weight",)),
        "final_norm.weight": Source(("model.norm.weight",)),
    }
    if not config.tie_embeddings:
        plan["lm_head.weight"] = Source(("lm_head.weight",))
    for layer in range(config.num_layers):
        src, dst = f"model.layers.{layer}.", f"layers.{layer}."
        plan.update(_attention(config, src, dst))
        moe = _moe_block(family, src, present)
        plan[dst + "router.gate.weight"] = Source((moe + "gate.weight",))
        plan.update(_experts(config, family, moe, dst, present))
        if config.shared_expert_size > 0:
            plan.update(_shared_expert(config, moe, dst))
    return plan


def _attention(config: ModelConfig, src: str, dst: str) -> Plan:
    plan = {
        dst + "attn_norm.weight": Source((src + "input_layernorm.weight",)),
        dst + "moe_norm.weight": Source((src + "post_attention_layernorm.weight",)),
    }
    for proj in _ATTENTION:
        plan[f"{dst}attn.{proj}.weight"] = Source((f"{src}self_attn.{proj}.weight",))
        if config.attn_out_bias if proj == "o_proj" else config.attn_bias:
            plan[f"{dst}attn.{proj}.bias"] = Source((f"{src}self_attn.{proj}.bias",))
    if config.qk_norm_type is not None:
        for norm in ("q_norm", "k_norm"):
            plan[f"{dst}attn.{norm}.weight"] = Source((f"{src}self_attn.{norm}.weight",))
    return plan


def _moe_block(family: Family, src: str, present: set[str]) -> str:
    """The layer's sparse-block prefix: the first name whose router weight is present."""
    for block in family.moe_blocks:
        if f"{src}{block}.gate.weight" in present:
            return f"{src}{block}."
    return f"{src}{family.moe_blocks[0]}."


def _experts(config: ModelConfig, family: Family, moe: str, dst: str, present: set[str]) -> Plan:
    if moe + "experts.gate_up_proj" in present:
        fused = (moe + "experts.gate_up_proj",)
        return {
            dst + "experts.w1": Source(fused, GATE_HALF),
            dst + "experts.w2": Source(fused, UP_HALF),
            dst + "experts.w3": Source((moe + "experts.down_proj",)),
        }
    n = config.num_experts
    return {
        f"{dst}experts.{native}": Source(
            tuple(f"{moe}experts.{e}.{name}.weight" for e in range(n)), STACK
        )
        for native, name in zip(("w1", "w2", "w3"), family.expert_projections, strict=True)
    }


def _shared_expert(config: ModelConfig, moe: str, dst: str) -> Plan:
    plan = {
        f"{dst}shared_expert.{native}": Source((f"{moe}shared_expert.{name}.weight",))
        for native, name in (("w1", "gate_proj"), ("w2", "up_proj"), ("w3", "down_proj"))
    }
    if config.shared_expert_gate:
        plan[dst + "shared_expert.gate.weight"] = Source((moe + "shared_expert_gate.weight",))
    return plan
