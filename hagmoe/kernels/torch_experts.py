"""The experts' torch path: what the CPU MoE kernel is chosen against (tuning) and what runs where
it does not (autograd, other devices and dtypes, sizes past the kernel's crossover).

Legend: T tokens, K max experts per token, P routed (token, expert) pairs, N experts,
F expert FFN size, d hidden size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def grouped_swiglu(
    x: Tensor, experts: Tensor, scores: Tensor, w1: Tensor, w2: Tensor, w3: Tensor
) -> Tensor:
    """sum_k scores[t, k] * E_{experts[t, k]}(x[t]) for x [T, d], experts / scores [T, K] (-1:
    none), E(x) = w3 (silu(w1 x) * (w2 x)) with w1, w2 [N, F, d], w3 [N, d, F]: the pairs sorted
    by expert, one matmul chain per active expert."""
    valid = experts >= 0  # [T, K]
    token = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(experts)[valid]  # [P]
    expert = experts[valid]  # [P]
    order = torch.argsort(expert, stable=True)
    token, expert, weight = token[order], expert[order], scores[valid][order]
    counts = torch.bincount(expert, minlength=w1.shape[0]).tolist()  # [N]
    rows = x[token].split(counts)  # per expert [count, d], sorted pairs
    y = torch.cat(
        [_ffn(r, w1[e], w2[e], w3[e]) for e, r in enumerate(rows) if r.shape[0]]
    )  # [P, d]
    return torch.zeros_like(x).index_add_(0, token, y * weight[:, None])


def _ffn(x: Tensor, w1: Tensor, w2: Tensor, w3: Tensor) -> Tensor:
    return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w2), w3)
