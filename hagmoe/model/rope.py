"""Rotary position embedding, rotate-half convention (as Llama / Mixtral / OLMoE)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hagmoe.model.rope_scaling import rope_frequencies

TABLE_STEP = 1024  # a table of cos / sin grows to whole multiples of this many positions
_TABLES: dict[tuple[object, ...], tuple[Tensor, Tensor]] = {}  # by rope_table's arguments


def rope_cos_sin(
    positions: Tensor,
    head_dim: int,
    theta: float,
    dtype: torch.dtype,
    scaling: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """cos, sin [T, hd] for positions [T]; angles computed in float32 (float64 for float64).

    `scaling` is the config's `rope_scaling` (null: plain rope)."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq, attention_factor = rope_frequencies(
        head_dim, theta, scaling, work, positions.device
    )  # [hd/2]
    angles = positions.to(work)[:, None] * inv_freq[None, :]  # [T, hd/2]
    emb = torch.cat((angles, angles), dim=-1)  # [T, hd]
    return (emb.cos() * attention_factor).to(dtype), (emb.sin() * attention_factor).to(dtype)


def rope_table(
    positions: Tensor,
    head_dim: int,
    theta: float,
    dtype: torch.dtype,
    scaling: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """rope_cos_sin of integer positions [T], looked up in a table of cos / sin [N, hd] of
    positions 0..N-1 kept per process (per head dim, theta, dtype, scaling, device), grown to a
    multiple of TABLE_STEP past the largest position asked (vLLM's cos_sin_cache): two index
    ops a step instead of the angles, cos and sin."""
    if positions.numel() == 0:
        return rope_cos_sin(positions, head_dim, theta, dtype, scaling)
    key = (head_dim, theta, repr(scaling), dtype, positions.device,
           torch.is_inference_mode_enabled())  # fmt: skip
    cos, sin = _TABLES.get(key, (None, None))
    needed = int(positions.max()) + 1
    if cos is None or sin is None or cos.shape[0] < needed:
        size = -(-needed // TABLE_STEP) * TABLE_STEP
        every = torch.arange(size, device=positions.device)
        cos, sin = _TABLES[key] = rope_cos_sin(every, head_dim, theta, dtype, scaling)
    return cos[positions], sin[positions]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [T, heads, hd] by cos, sin [T, hd]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]
