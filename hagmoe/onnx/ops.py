"""Export-friendly tensor helpers of the dense forward: norms, cache insertion, score matrices.

Legend: B sequences, Q query rows, P past positions, K max experts per token, N experts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def apply_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """The model's LayerNorm or RMSNorm over the last dim, in ops every opset >= 17 has."""
    if isinstance(norm, nn.LayerNorm):
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    if isinstance(norm, nn.RMSNorm):
        eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        return x * scale * norm.weight
    raise TypeError(f"no export rule for norm {type(norm).__name__}")


def insert_at(past: Tensor, new: Tensor, index: Tensor) -> Tensor:
    """past [B, P, ...] and new [B, 1, ...] -> [B, P+1, ...] with new at row index[b] of each
    sequence and past everywhere else (rows after index[b] are padding the caller masks)."""
    padded = torch.cat((past, torch.zeros_like(new)), dim=1)  # [B, P+1, ...]
    rows = torch.arange(padded.shape[1], device=past.device)
    hit = rows[None, :] == index[:, None]  # [B, P+1]
    hit = hit.reshape(*hit.shape, *([1] * (past.dim() - 2)))
    return torch.where(hit, new, padded)


def masked_top(p: Tensor, k_max: int, k: Tensor) -> tuple[Tensor, Tensor]:
    """Best k_max entries of p [B, Q, E] (ties -> lower index, as ONNX TopK), scores beyond each
    token's k [B, Q] set to 0. Returns indices [B, Q, K] and scores [B, Q, K]."""
    scores, idx = torch.topk(p, k_max, dim=-1)
    keep = torch.arange(k_max, device=p.device) < k[..., None]  # [B, Q, K]
    return idx, torch.where(keep, scores, torch.zeros_like(scores))


def dense_scores(experts: Tensor, scores: Tensor, num_experts: int) -> Tensor:
    """experts, scores [B, Q, K] -> the [B, Q, N] score matrix, zero outside the chosen experts."""
    ids = torch.arange(num_experts, device=experts.device)
    onehot = (experts[..., None] == ids).to(scores.dtype)  # [B, Q, K, N]
    return (onehot * scores[..., None]).sum(-2)


def causal_keys(positions: Tensor, num_keys: int, window: int | None = None) -> Tensor:
    """Key j is visible to a query at position p iff j <= p (and p - window < j with a sliding
    window): positions [B, Q] -> mask [B, 1, Q, L]."""
    j = torch.arange(num_keys, device=positions.device)[None, None, :]  # [1, 1, L]
    p = positions[:, :, None]  # [B, Q, 1]
    visible = j <= p
    if window is not None:
        visible = visible & (j > p - window)
    return visible.unsqueeze(1)
