"""The two exported graphs as modules over a HagMoEModel's parameters: prefill and decode step.

Legend: B sequences, T prompt tokens (right-padded), P past positions, V vocab, d hidden size,
Hkv key/value heads, hd head dim, G+N routing values per position (attention router).

Cache tensors travel flat, layer by layer: key, value and (attention router) routing, as
manifest.graph_specs names them. A sequence's cache is right-padded: rows 0..len-1 are its
positions.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from hagmoe.model.layer import DecoderLayer
from hagmoe.model.model import HagMoEModel
from hagmoe.onnx.dense_layer import DenseLayer
from hagmoe.onnx.ops import apply_norm

CACHE_PARTS = ("key", "value", "routing")


def cache_parts(model: HagMoEModel) -> tuple[str, ...]:
    """Cache tensors per layer: key and value, plus routing for the attention router."""
    return CACHE_PARTS if model.config.router == "attention" else CACHE_PARTS[:2]


class _Graph(nn.Module):
    def __init__(self, model: HagMoEModel) -> None:
        super().__init__()
        self.model = model
        self.layers = nn.ModuleList(
            DenseLayer(cast(DecoderLayer, layer), model.config) for layer in model.layers
        )
        self.num_parts = len(cache_parts(model))

    def _embed(self, input_ids: Tensor, positions: Tensor) -> Tensor:
        x = self.model.embed(input_ids)  # [B, Q, d]
        if self.model.pos_embed is not None:
            x = x + self.model.pos_embed(positions)
        return x

    def _logits(self, x: Tensor) -> Tensor:
        """HagMoEModel.compute_logits with the export-friendly norm: x [B, Q, d] -> [B, Q, V]."""
        head = self.model.lm_head
        weight = self.model.embed.weight if head is None else head.weight
        return apply_norm(self.model.final_norm, x) @ weight.T


class PrefillGraph(_Graph):
    """(input_ids [B, T], lengths [B]) -> (logits [B, T, V], present cache [B, T, ...] ...).

    Positions are 0..T-1; row b's real tokens are the first lengths[b]. Logits and cache rows at
    padded positions (t >= lengths[b]) are zero."""

    def forward(self, input_ids: Tensor, lengths: Tensor) -> tuple[Tensor, ...]:
        b, t = input_ids.shape
        positions = torch.arange(t, device=input_ids.device)[None, :].expand(b, t)  # [B, T]
        x = self._embed(input_ids, positions)
        present: list[Tensor] = []
        for layer in self.layers:
            x, cache = layer(x, positions)
            present += cache
        valid = positions < lengths[:, None]  # [B, T]
        logits = self._logits(x) * valid[..., None].to(x.dtype)  # [B, T, V]
        return (logits, *(_zero_padding(c, valid) for c in present))


class DecodeGraph(_Graph):
    """(input_ids [B, 1], past_lengths [B], past cache [B, P, ...] ...) ->
    (logits [B, 1, V], present cache [B, P+1, ...] ...).

    Row b's new token sits at position past_lengths[b] and its cache entry is written at that
    index of the grown cache; rows after it are padding that later steps mask out."""

    def forward(self, input_ids: Tensor, past_lengths: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        positions = past_lengths[:, None]  # [B, 1]
        x = self._embed(input_ids, positions)
        present: list[Tensor] = []
        n = self.num_parts
        for i, layer in enumerate(self.layers):
            x, cache = layer(x, positions, list(past[i * n : (i + 1) * n]), past_lengths)
            present += cache
        return (self._logits(x), *present)


def _zero_padding(cache: Tensor, valid: Tensor) -> Tensor:
    """cache [B, T, ...] with rows where valid [B, T] is False set to zero."""
    mask = valid.reshape(*valid.shape, *([1] * (cache.dim() - 2)))
    return torch.where(mask, cache, torch.zeros_like(cache))
