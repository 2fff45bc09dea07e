"""Normalisation layers: LayerNorm (weight + bias) or RMSNorm (weight), chosen by `config.norm`."""

from __future__ import annotations

from torch import nn

from hagmoe.model.config import ModelConfig


def make_norm(config: ModelConfig, size: int | None = None) -> nn.Module:
    """A norm over `size` (default hidden_size) features, as `config.norm` says."""
    size = size or config.hidden_size
    if config.norm == "rmsnorm":
        return nn.RMSNorm(size, eps=config.norm_eps)
    return nn.LayerNorm(size, eps=config.norm_eps)
