# mypy: disable-error-code="no-untyped-def"
"""The fused MoE of one layer: routed (token, expert) pairs sorted by expert and padded to
tiles, a grouped GEMM for w1/w2 with SiLU and the product fused, and one for w3 that applies the
gate scores and the feedback factor on the way out. Dynamic K is masking (expert -1 slots get no
tile); every shape depends on T, K and E only, never on the routing (CUDA-graph safe).

Legend: T tokens, K max experts per token, P = T*K pair slots (pair p = token p // K, slot
p % K), E experts, F expert FFN size, d hidden size, BM/BN/BK tile sizes, S = padded pair
capacity (a multiple of BM), nblk = S / BM tiles of pairs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from hagmoe.kernels.triton.moe_configs import MoeTileConfig, tile_config


def moe_align_block_size(
    experts: Tensor, num_experts: int, block_m: int
) -> tuple[Tensor, Tensor, int]:
    """Pairs grouped by expert and padded to block_m, without a host sync (vLLM's name).

    experts [T, K] (-1: no expert) -> sorted_ids [S] (pair index p, or P on padding; each
    expert's pairs in token order, its run padded to a multiple of block_m), block_expert
    [nblk] (the expert of each tile, E for tiles past the last expert's) and P."""
    flat = experts.reshape(-1)
    pairs = flat.numel()
    capacity = triton.cdiv(pairs + num_experts * (block_m - 1), block_m) * block_m  # S
    e = torch.where(flat >= 0, flat, num_experts)  # [P]; E: masked slot
    counts = torch.zeros(num_experts + 1, dtype=torch.long, device=flat.device)
    counts.scatter_add_(0, e, torch.ones_like(e))
    padded = (counts[:num_experts] + block_m - 1) // block_m * block_m  # [E]
    ends = padded.cumsum(0)
    starts = torch.cat((ends - padded, ends.new_zeros(1)))  # [E+1]
    order = torch.argsort(e, stable=True)  # [P]
    e_sorted = e[order]
    rank = torch.arange(pairs, device=flat.device) - (counts.cumsum(0) - counts)[e_sorted]
    dest = torch.where(e_sorted < num_experts, starts[e_sorted] + rank, capacity)
    sorted_ids = torch.full((capacity + 1,), pairs, dtype=torch.long, device=flat.device)
    sorted_ids.scatter_(0, dest, order)
    tiles = torch.arange(0, capacity, block_m, device=flat.device)
    block_expert = torch.searchsorted(ends, tiles, right=True)  # [nblk]
    return sorted_ids[:capacity], block_expert, pairs


@triton.jit
def _gate_up_kernel(
    x_ptr,  # [T, d]
    w1_ptr,  # [E, F, d]
    w2_ptr,  # [E, F, d]
    h_ptr,  # [S, F] out: silu(x w1^T) * (x w2^T) per padded pair slot
    sorted_ids_ptr,  # [S]
    block_expert_ptr,  # [nblk]
    pairs,
    top_k,
    hidden,
    ffn,
    NUM_EXPERTS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    if expert >= NUM_EXPERTS:
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ids = tl.load(sorted_ids_ptr + rows)
    row_ok = ids < pairs
    token = tl.where(row_ok, ids // top_k, 0).to(tl.int64)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < ffn
    k = tl.arange(0, BLOCK_K)
    a_ptr = x_ptr + token[:, None] * hidden + k[None, :]  # [BM, BK]
    w_off = expert * ffn * hidden + n[None, :].to(tl.int64) * hidden + k[:, None]  # [BK, BN]
    gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        k_ok = k0 + k < hidden
        a = tl.load(a_ptr + k0, mask=row_ok[:, None] & k_ok[None, :], other=0)
        w_mask = k_ok[:, None] & n_ok[None, :]
        b1 = tl.load(w1_ptr + w_off + k0, mask=w_mask, other=0)
        b2 = tl.load(w2_ptr + w_off + k0, mask=w_mask, other=0)
        gate = tl.dot(a.to(b1.dtype), b1, gate, input_precision=PRECISION)
        up = tl.dot(a.to(b2.dtype), b2, up, input_precision=PRECISION)
    h = gate / (1.0 + tl.exp(-gate)) * up
    h_ptr = h_ptr + rows[:, None].to(tl.int64) * ffn + n[None, :]
    tl.store(h_ptr, h.to(h_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def _down_kernel(
    h_ptr,  # [S, F]
    w3_ptr,  # [E, d, F]
    scores_ptr,  # [P]
    factor_ptr,  # [T, d] feedback factor (HAS_FACTOR)
    y_ptr,  # [P, d] out: score * factor * (h w3^T) per pair
    sorted_ids_ptr,  # [S]
    block_expert_ptr,  # [nblk]
    pairs,
    top_k,
    hidden,
    ffn,
    NUM_EXPERTS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_FACTOR: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    if expert >= NUM_EXPERTS:
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ids = tl.load(sorted_ids_ptr + rows)
    row_ok = ids < pairs
    safe_ids = tl.where(row_ok, ids, 0).to(tl.int64)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < hidden
    k = tl.arange(0, BLOCK_K)
    a_ptr = h_ptr + rows[:, None].to(tl.int64) * ffn + k[None, :]  # [BM, BK]
    w_ptr = w3_ptr + expert * hidden * ffn + n[None, :].to(tl.int64) * ffn + k[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, ffn, BLOCK_K):
        k_ok = k0 + k < ffn
        a = tl.load(a_ptr + k0, mask=row_ok[:, None] & k_ok[None, :], other=0)
        b = tl.load(w_ptr + k0, mask=k_ok[:, None] & n_ok[None, :], other=0)
        acc = tl.dot(a.to(b.dtype), b, acc, input_precision=PRECISION)
    acc *= tl.load(scores_ptr + safe_ids, mask=row_ok, other=0).to(tl.float32)[:, None]
    mask = row_ok[:, None] & n_ok[None, :]
    if HAS_FACTOR:
        f_ptr = factor_ptr + (safe_ids // top_k)[:, None] * hidden + n[None, :]
        acc *= tl.load(f_ptr, mask=mask, other=0).to(tl.float32)
    y_ptr = y_ptr + safe_ids[:, None] * hidden + n[None, :]
    tl.store(y_ptr, acc.to(y_ptr.dtype.element_ty), mask=mask)


def fused_moe(
    x: Tensor,
    experts: Tensor,
    scores: Tensor,
    w1: Tensor,
    w2: Tensor,
    w3: Tensor,
    factor: Tensor | None = None,
    config: MoeTileConfig | None = None,
) -> Tensor:
    """sum_k scores[t, k] * E_{experts[t, k]}(x[t]) (* factor[t] when given) for x [T, d],
    experts / scores [T, K] (expert -1: none), E(x) = w3 (silu(w1 x) * (w2 x)) with
    w1 / w2 [E, F, d], w3 [E, d, F]; factor [T, d] (the feedback's 1 + gamma tanh r).
    Returns [T, d] in x's dtype; f32 accumulation, IEEE f32 products for f32 weights."""
    tokens, top_k = experts.shape
    num_experts, ffn, hidden = w1.shape
    cfg = config or tile_config(num_experts, ffn, hidden, tokens)
    sorted_ids, block_expert, pairs = moe_align_block_size(experts, num_experts, cfg.block_size_m)
    x, w1, w2, w3 = x.contiguous(), w1.contiguous(), w2.contiguous(), w3.contiguous()
    h = x.new_empty(sorted_ids.numel(), ffn)  # [S, F]
    y = x.new_zeros(pairs, hidden)  # [P, d]
    precision = "ieee" if w1.dtype == torch.float32 else "tf32"
    launch = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    tiles = (block_expert.numel(),)
    _gate_up_kernel[(*tiles, triton.cdiv(ffn, cfg.block_size_n))](
        x, w1, w2, h, sorted_ids, block_expert, pairs, top_k, hidden, ffn,
        NUM_EXPERTS=num_experts, BLOCK_M=cfg.block_size_m, BLOCK_N=cfg.block_size_n,
        BLOCK_K=cfg.block_size_k, PRECISION=precision, **launch,
    )  # fmt: skip
    _down_kernel[(*tiles, triton.cdiv(hidden, cfg.block_size_n))](
        h, w3, scores.contiguous().view(-1), y if factor is None else factor.contiguous(), y,
        sorted_ids, block_expert, pairs, top_k, hidden, ffn,
        NUM_EXPERTS=num_experts, BLOCK_M=cfg.block_size_m, BLOCK_N=cfg.block_size_n,
        BLOCK_K=cfg.block_size_k, HAS_FACTOR=factor is not None, PRECISION=precision, **launch,
    )  # fmt: skip
    return y.view(tokens, top_k, hidden).sum(1)
