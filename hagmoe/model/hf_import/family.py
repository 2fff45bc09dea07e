"""What distinguishes one transformers MoE family when it is read as HAG-MoE's linear-router case."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hagmoe.model.hf_import.source_config import SourceConfig


@dataclass(slots=True, frozen=True)
class Family:
    """One transformers `model_type`: its config defaults, the native keys only it sets, and how
    its MoE tensors are named."""

    model_type: str
    defaults: Mapping[str, Any]  # transformers config-class defaults of the keys read
    ffn_key: str  # config key of the routed experts' FFN size F
    moe_blocks: tuple[str, ...]  # names of a layer's sparse block, as written by any version
    expert_projections: tuple[str, str, str]  # per-expert tensor names of (gate, up, down)
    specific: Callable[[SourceConfig], dict[str, Any]]  # native keys set by this family alone


def reject_dense_layers(src: SourceConfig) -> None:
    """Qwen-style configs can mix dense and MoE layers; only all-MoE models are imported."""
    step = src.get("decoder_sparse_step")
    if step not in (None, 1):
        src.unsupported("decoder_sparse_step", step, "mixed dense/MoE layers (needs 1)")
    dense = src.get("mlp_only_layers")
    if dense:
        src.unsupported("mlp_only_layers", dense, "mixed dense/MoE layers (needs [])")
