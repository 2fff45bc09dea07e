"""Rotary position embedding, rotate-half convention (as Llama / Mixtral / OLMoE)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hagmoe.model.rope_scaling import rope_frequencies

_FREQUENCIES: dict[tuple[object, ...], tuple[Tensor, float]] = {}  # rope_frequencies, by args


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
    key = (head_dim, theta, repr(scaling), work, positions.device,
           torch.is_inference_mode_enabled())  # fmt: skip
    if key not in _FREQUENCIES:
        _FREQUENCIES[key] = rope_frequencies(head_dim, theta, scaling, work, positions.device)
    inv_freq, attention_factor = _FREQUENCIES[key]  # [hd/2]
    angles = positions.to(work)[:, None] * inv_freq[None, :]  # [T, hd/2]
    emb = torch.cat((angles, angles), dim=-1)  # [T, hd]
    return (emb.cos() * attention_factor).to(dtype), (emb.sin() * attention_factor).to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [T, heads, hd] by cos, sin [T, hd]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]
