# mypy: disable-error-code="no-untyped-def"
"""Paged attention over the engine's block table, and the attention router's pass over the keys.

Cache layout (ModelRunner): per layer a KV part [num_slots, 2*Hkv*hd] (slot = block * bs +
offset; a row holds K then V, head-major) and an RV part [num_slots, G+N] (routing values).
Query row (b, i) at position pos sees keys j with first <= j <= pos, first = pos + 1 - window
under a sliding window (else 0); query head h reads kv head h // (H / Hkv).

`paged_attention` is the first pass: the attention output and each head's log-sum-exp.
`route_sums` is the second, run once the step's routing values are in the RV cache (rv_i
depends on row i's attention output): it recomputes the scores tile by tile, turns them into
probabilities with the saved log-sum-exps, and reduces them to the router's sums and the coarse
mean distribution's entropy without materialising [H, L] (docs/gpu.md derives it).

Legend: B sequences, Q query rows per sequence, H query heads, Hkv kv heads, hd head dim,
nb blocks per sequence, bs block size, L = nb * bs key positions, G groups, N experts,
W = G + N routing values; tile sizes BLOCK_M query (row, head) pairs, BLOCK_N keys.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

MIN_DOT = 16  # smallest tl.dot dimension on the GPU


@triton.jit
def _key_slots(table_ptr, b, start, nb, hi, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr):
    """Keys start .. start + BLOCK_N of sequence b: positions [BLOCK_N], cache slots [BLOCK_N],
    and which exist (below hi and inside the table)."""
    j = start + tl.arange(0, BLOCK_N)
    ok = (j < hi) & (j < nb * BLOCK_SIZE)
    block = tl.load(table_ptr + b * nb + j // BLOCK_SIZE, mask=ok, other=0).to(tl.int64)
    return j, block * BLOCK_SIZE + j % BLOCK_SIZE, ok


@triton.jit
def _attention_kernel(
    q_ptr,  # [B, Q, H, hd]
    cache_ptr,  # [num_slots, 2*Hkv*hd]
    table_ptr,  # [B, nb]
    pos_ptr,  # [B, Q]
    valid_ptr,  # [B, Q] int8 (HAS_VALID)
    out_ptr,  # [B, Q, H*hd]
    lse_ptr,  # [B, Q, H] f32
    rows,
    nb,
    scale,
    window,
    HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    REP_P: tl.constexpr,  # query heads per kv head, padded to a power of two
    BLOCK_Q: tl.constexpr,  # query rows per program
    BLOCK_M: tl.constexpr,  # >= BLOCK_Q * REP_P, >= MIN_DOT
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_VALID: tl.constexpr,
    PRECISION: tl.constexpr,
):
    b, q_block, kvh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rep = HEADS // KV_HEADS
    width = KV_HEADS * HEAD_DIM
    m = tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    qi = q_block * BLOCK_Q + m // REP_P  # [BLOCK_M] query row of each tile row
    head = kvh * rep + m % REP_P
    row_ok = (m // REP_P < BLOCK_Q) & (qi < rows) & (m % REP_P < rep)
    if HAS_VALID:
        row_ok &= tl.load(valid_ptr + b * rows + qi, mask=row_ok, other=0) != 0
    pos = tl.where(row_ok, tl.load(pos_ptr + b * rows + qi, mask=row_ok, other=0), -1)
    first = tl.where(window > 0, tl.maximum(pos + 1 - window, 0), 0)  # [BLOCK_M]
    hi = tl.max(pos) + 1
    lo = tl.min(tl.where(row_ok, first, hi)) // BLOCK_N * BLOCK_N
    d_ok = d < HEAD_DIM
    q_off = ((b * rows + qi) * HEADS + head).to(tl.int64) * HEAD_DIM
    q = tl.load(q_ptr + q_off[:, None] + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0)
    top = tl.full([BLOCK_M], -1e30, tl.float32)
    total = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        j, slot, key_ok = _key_slots(table_ptr, b, start, nb, hi, BLOCK_SIZE, BLOCK_N)
        kv_off = slot[:, None] * (2 * width) + kvh * HEAD_DIM + d[None, :]  # [BLOCK_N, BLOCK_D]
        kv_mask = key_ok[:, None] & d_ok[None, :]
        k = tl.load(cache_ptr + kv_off, mask=kv_mask, other=0)
        s = tl.dot(q.to(k.dtype), tl.trans(k), input_precision=PRECISION) * scale  # [M, N]
        seen = (j[None, :] <= pos[:, None]) & (j[None, :] >= first[:, None]) & key_ok[None, :]
        s = tl.where(seen, s, float("-inf"))
        new_top = tl.maximum(top, tl.max(s, 1))
        p = tl.exp(s - new_top[:, None])
        alpha = tl.exp(top - new_top)
        total = total * alpha + tl.sum(p, 1)
        v = tl.load(cache_ptr + kv_off + width, mask=kv_mask, other=0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        top = new_top
    live = total > 0
    out = acc / tl.where(live, total, 1.0)[:, None]
    out_off = ((b * rows + qi) * HEADS + head).to(tl.int64) * HEAD_DIM
    store = (m // REP_P < BLOCK_Q) & (qi < rows) & (m % REP_P < rep)
    tl.store(out_ptr + out_off[:, None] + d[None, :], out, mask=store[:, None] & d_ok[None, :])
    lse = tl.where(live, top + tl.log(tl.where(live, total, 1.0)), float("-inf"))
    tl.store(lse_ptr + (b * rows + qi) * HEADS + head, lse, mask=store)


@triton.jit
def _route_sums_kernel(
    q_ptr,  # [B, Q, H, hd]
    lse_ptr,  # [B, Q, H] f32
    cache_ptr,  # [num_slots, 2*Hkv*hd]
    rv_ptr,  # [num_slots, W]
    table_ptr,  # [B, nb]
    pos_ptr,  # [B, Q]
    valid_ptr,  # [B, Q] int8 (HAS_VALID)
    z_ptr,  # [B, Q, W] f32
    entropy_ptr,  # [B, Q] f32
    rows,
    nb,
    scale,
    window,
    HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    COARSE: tl.constexpr,
    GROUPS: tl.constexpr,
    WIDTH: tl.constexpr,
    BLOCK_H: tl.constexpr,  # query heads per kv head, padded (>= MIN_DOT)
    BLOCK_D: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_VALID: tl.constexpr,
    PRECISION: tl.constexpr,
):
    b, i = tl.program_id(0), tl.program_id(1)
    r = b * rows + i
    rep = HEADS // KV_HEADS
    width = KV_HEADS * HEAD_DIM
    pos = tl.load(pos_ptr + r)
    if HAS_VALID:
        pos = tl.where(tl.load(valid_ptr + r) != 0, pos, -1)
    first = tl.where(window > 0, tl.maximum(pos + 1 - window, 0), 0)
    hi = pos + 1
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    w = tl.arange(0, BLOCK_W)
    d_ok = d < HEAD_DIM
    z = tl.zeros([BLOCK_W], tl.float32)
    neg_entropy = tl.zeros([BLOCK_N], tl.float32)
    for start in range(first // BLOCK_N * BLOCK_N, hi, BLOCK_N):
        j, slot, key_ok = _key_slots(table_ptr, b, start, nb, hi, BLOCK_SIZE, BLOCK_N)
        seen = key_ok & (j >= first)
        a_c = tl.zeros([BLOCK_N], tl.float32)
        a_f = tl.zeros([BLOCK_N], tl.float32)
        for kvh in tl.static_range(KV_HEADS):
            head = kvh * rep + h
            h_ok = h < rep
            q_off = (r * HEADS + head).to(tl.int64) * HEAD_DIM
            q = tl.load(
                q_ptr + q_off[:, None] + d[None, :], mask=h_ok[:, None] & d_ok[None, :], other=0
            )  # [BLOCK_H, BLOCK_D]
            lse = tl.load(lse_ptr + r * HEADS + head, mask=h_ok, other=0.0)
            k_off = slot[:, None] * (2 * width) + kvh * HEAD_DIM + d[None, :]
            k = tl.load(cache_ptr + k_off, mask=key_ok[:, None] & d_ok[None, :], other=0)
            s = tl.dot(q.to(k.dtype), tl.trans(k), input_precision=PRECISION) * scale
            p = tl.where(h_ok[:, None] & seen[None, :], tl.exp(s - lse[:, None]), 0.0)
            coarse = tl.where(head < COARSE, 1.0 / COARSE, 0.0)  # [BLOCK_H]
            fine = tl.where(head >= COARSE, 1.0 / (HEADS - COARSE), 0.0)
            a_c += tl.sum(p * coarse[:, None], 0)
            a_f += tl.sum(p * fine[:, None], 0)
        rv_mask = key_ok[:, None] & (w[None, :] < WIDTH)
        rv = tl.load(rv_ptr + slot[:, None] * WIDTH + w[None, :], mask=rv_mask, other=0)
        weight = tl.where(w[None, :] < GROUPS, a_c[:, None], a_f[:, None])  # [BLOCK_N, BLOCK_W]
        z += tl.sum(weight * rv.to(tl.float32), 0)
        neg_entropy += tl.where(a_c > 0, a_c * tl.log(tl.where(a_c > 0, a_c, 1.0)), 0.0)
    tl.store(z_ptr + r * WIDTH + w, z, mask=w < WIDTH)
    tl.store(entropy_ptr + r, -tl.sum(neg_entropy, 0))


def _pow2(n: int, floor: int = 1) -> int:
    return max(floor, triton.next_power_of_2(n))


def _precision(x: Tensor) -> str:
    """IEEE f32 products for f32 (no TF32: the numerical contract), native for 16-bit."""
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _valid_arg(valid: Tensor | None, like: Tensor) -> Tensor:
    if valid is None:
        return like
    return valid.to(torch.int8).contiguous()


def paged_attention(
    q: Tensor,
    kv_cache: Tensor,
    block_table: Tensor,
    query_pos: Tensor,
    valid: Tensor | None,
    block_size: int,
    num_kv_heads: int,
    window: int | None,
    block_n: int = 32,
) -> tuple[Tensor, Tensor]:
    """Attention of query rows q [B, Q, H, hd] at positions query_pos [B, Q] (valid [B, Q]:
    real rows, None: all) against their sequences' paged K/V, read in place from kv_cache
    [num_slots, 2*Hkv*hd] through block_table [B, nb]; f32 accumulation.

    Returns out [B, Q, H*hd] (q's dtype; zero on invalid rows) and each head's log-sum-exp of
    the scaled scores, lse [B, Q, H] f32 (-inf on invalid rows), for `route_sums`."""
    batch, rows, heads, hd = q.shape
    q, table, pos = q.contiguous(), block_table.contiguous(), query_pos.contiguous()
    assert kv_cache.is_contiguous() and kv_cache.shape[1] == 2 * num_kv_heads * hd
    rep_p = _pow2(heads // num_kv_heads)
    block_q = 1 if rows == 1 else max(1, MIN_DOT // rep_p)
    out = q.new_zeros(batch, rows, heads * hd)
    lse = torch.empty(batch, rows, heads, dtype=torch.float32, device=q.device)
    grid = (batch, triton.cdiv(rows, block_q), num_kv_heads)
    _attention_kernel[grid](
        q, kv_cache, table, pos, _valid_arg(valid, pos), out, lse,
        rows, table.shape[1], hd**-0.5, window or 0,
        HEADS=heads, KV_HEADS=num_kv_heads, HEAD_DIM=hd, BLOCK_SIZE=block_size,
        REP_P=rep_p, BLOCK_Q=block_q, BLOCK_M=_pow2(block_q * rep_p, MIN_DOT),
        BLOCK_D=_pow2(hd, MIN_DOT), BLOCK_N=block_n, HAS_VALID=valid is not None,
        PRECISION=_precision(kv_cache),
    )  # fmt: skip
    return out, lse


def route_sums(
    q: Tensor,
    lse: Tensor,
    kv_cache: Tensor,
    rv_cache: Tensor,
    block_table: Tensor,
    query_pos: Tensor,
    valid: Tensor | None,
    block_size: int,
    num_kv_heads: int,
    window: int | None,
    coarse_heads: int,
    groups: int,
    block_n: int = 32,
) -> tuple[Tensor, Tensor]:
    """The attention router's sums for the rows `paged_attention(q, ...)` served (same q, cache,
    table, positions, validity and window; lse its second result), with the step's routing
    values already in rv_cache [num_slots, G+N]:
    z [B, Q, G+N] f32 = [sum_j a_c[j] rv_j[:G] ; sum_j a_f[j] rv_j[G:]] and the entropy
    -sum_j a_c[j] log a_c[j] [B, Q] f32 (0 log 0 = 0), where a_c / a_f are the attention
    probabilities averaged over heads [0, coarse_heads) / [coarse_heads, H). Invalid rows: 0."""
    batch, rows, heads, hd = q.shape
    q, table, pos = q.contiguous(), block_table.contiguous(), query_pos.contiguous()
    assert rv_cache.is_contiguous() and kv_cache.is_contiguous()
    width = rv_cache.shape[1]
    z = torch.empty(batch, rows, width, dtype=torch.float32, device=q.device)
    entropy = torch.empty(batch, rows, dtype=torch.float32, device=q.device)
    _route_sums_kernel[(batch, rows)](
        q, lse.contiguous(), kv_cache, rv_cache, table, pos, _valid_arg(valid, pos), z, entropy,
        rows, table.shape[1], hd**-0.5, window or 0,
        HEADS=heads, KV_HEADS=num_kv_heads, HEAD_DIM=hd, BLOCK_SIZE=block_size,
        COARSE=coarse_heads, GROUPS=groups, WIDTH=width,
        BLOCK_H=_pow2(heads // num_kv_heads, MIN_DOT), BLOCK_D=_pow2(hd, MIN_DOT),
        BLOCK_W=_pow2(width), BLOCK_N=block_n, HAS_VALID=valid is not None,
        PRECISION=_precision(kv_cache),
    )  # fmt: skip
    return z, entropy
