# mypy: disable-error-code="no-untyped-def"
"""The attention router's decisions in one kernel: group argmax, the group's expert softmax,
the normalised entropy and K, the top-K experts and their scores (AttentionRouter._decide).

Legend: T tokens, G groups, M experts per group, N = G*M, W = G + N, K = k_max;
BLOCK_T tokens per program.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _route_decide_kernel(
    z_ptr,  # [T, W] f32: z_g, then every group's expert logits
    entropy_ptr,  # [T] coarse entropy
    pos_ptr,  # [T]
    group_ptr,  # [T] int64
    experts_ptr,  # [T, K] int64
    scores_ptr,  # [T, K]
    k_ptr,  # [T] int64
    hn_ptr,  # [T]
    mu_ptr,  # [] mu_H
    tokens,
    alpha,
    k_fixed,
    GROUPS: tl.constexpr,
    PER_GROUP: tl.constexpr,
    K_MIN: tl.constexpr,
    K_MAX: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    g = tl.arange(0, BLOCK_G)
    e = tl.arange(0, BLOCK_E)
    t_ok = t < tokens
    row = z_ptr + t.to(tl.int64)[:, None] * (GROUPS + GROUPS * PER_GROUP)
    z_g = tl.load(row + g[None, :], mask=t_ok[:, None] & (g[None, :] < GROUPS), other=-float("inf"))
    group = tl.argmax(z_g, 1, tie_break_left=True)  # [BLOCK_T]
    e_ok = t_ok[:, None] & (e[None, :] < PER_GROUP)
    z_e = tl.load(row + GROUPS + group[:, None] * PER_GROUP + e[None, :], mask=e_ok, other=0.0)
    z_e = tl.where(e_ok, z_e, -float("inf"))
    top = tl.max(z_e, 1)
    p = tl.exp(z_e - tl.where(t_ok, top, 0.0)[:, None])
    p = p / tl.where(t_ok, tl.sum(p, 1), 1.0)[:, None]  # [BLOCK_T, BLOCK_E]
    entropy = tl.load(entropy_ptr + t, mask=t_ok, other=0.0)
    pos = tl.load(pos_ptr + t, mask=t_ok, other=0)
    denom = tl.maximum(tl.log((pos + 1).to(tl.float32)), 1e-30)
    hn = tl.where(pos >= 1, entropy / denom, 0.0)
    gate = tl.sigmoid(alpha * (hn - tl.load(mu_ptr).to(tl.float32)))
    k = K_MIN + tl.floor((K_MAX - K_MIN) * gate).to(tl.int64)
    k = tl.minimum(tl.maximum(k, K_MIN), K_MAX)
    k = tl.where(k_fixed > 0, k_fixed, k)
    tl.store(group_ptr + t, group.to(tl.int64), mask=t_ok)
    tl.store(k_ptr + t, k, mask=t_ok)
    tl.store(hn_ptr + t, hn, mask=t_ok)
    p = tl.where(e_ok, p, -1.0)
    for slot in tl.static_range(K_MAX):
        best = tl.argmax(p, 1, tie_break_left=True)  # [BLOCK_T]
        score = tl.max(p, 1)
        use = (slot < k) & (score >= 0)
        expert = tl.where(use, group.to(tl.int64) * PER_GROUP + best, -1)
        tl.store(experts_ptr + t * K_MAX + slot, expert, mask=t_ok)
        tl.store(scores_ptr + t * K_MAX + slot, tl.where(use, score, 0.0), mask=t_ok)
        p = tl.where(e[None, :] == best[:, None], -1.0, p)


def route_decide(
    z: Tensor,
    entropy: Tensor,
    positions: Tensor,
    num_groups: int,
    experts_per_group: int,
    k_min: int,
    k_max: int,
    entropy_alpha: float,
    entropy_mean: Tensor,
    k_override: int | None,
    block_t: int = 16,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """AttentionRouter's decisions from z [T, G+N] (z_g, then every group's expert logits), the
    coarse entropy [T], positions [T] and mu_H (entropy_mean, a 0-d tensor on z's device: read
    on the device, no host sync): group [T] (argmax of z_g, ties -> lowest), the group's
    p = softmax(z_e), Hn [T] = entropy / log(pos + 1) (0 at pos 0), K [T] from MODEL.md's
    formula (or k_override), experts [T, k_max] (top-K of p, ties -> lower index, as global ids
    g*M + m; -1 past K) and scores [T, k_max] (p there; 0 past K), in
    LayerRouting's order: group, experts, scores, K, Hn."""
    t = z.shape[0]
    assert z.shape[1] == num_groups * (1 + experts_per_group)
    dev = z.device
    group, k = (torch.empty(t, dtype=torch.long, device=dev) for _ in range(2))
    experts = torch.empty(t, k_max, dtype=torch.long, device=dev)
    scores = torch.empty(t, k_max, dtype=z.dtype, device=dev)
    norm_entropy = torch.empty(t, dtype=z.dtype, device=dev)
    _route_decide_kernel[(triton.cdiv(t, block_t),)](
        z.contiguous(), entropy.contiguous(), positions.contiguous(),
        group, experts, scores, k, norm_entropy, entropy_mean,
        t, float(entropy_alpha), k_override or 0,
        GROUPS=num_groups, PER_GROUP=experts_per_group, K_MIN=k_min, K_MAX=k_max,
        BLOCK_T=block_t, BLOCK_G=triton.next_power_of_2(num_groups),
        BLOCK_E=triton.next_power_of_2(experts_per_group),
    )  # fmt: skip
    return group, experts, scores, k, norm_entropy
