"""The Triton paged attention and the attention router's second pass (hagmoe/kernels/triton),
under Triton's interpreter on CPU float32 tensors, against the model's torch paths: paged reads
through block tables with holes, 1..200 keys, GQA ratios, sliding windows, padding rows."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import pytest
import torch
from torch import Tensor

pytest.importorskip("triton")

from hagmoe.kernels.triton import paged_attention as tpa
from hagmoe.model import named_config
from hagmoe.model.attention import Attention
from hagmoe.model.forward_context import ForwardContext, Segment
from hagmoe.model.router import AttentionRouter

TOL = dict(rtol=2e-5, atol=2e-6)


def paged_case(
    lengths: list[int], rows: int, block_size: int, width: int, rv_width: int, seed: int
) -> tuple[Segment, list[Tensor]]:
    """Sequences whose last `rows` (fewer for short ones: padding rows) query rows end at
    lengths[b] keys, spread over shuffled blocks with unused (NaN) blocks between them; the
    table's tail entries point at other sequences' blocks, as the engine pads them."""
    gen = torch.Generator().manual_seed(seed)
    nb = max(-(-n // block_size) for n in lengths)
    needed = [-(-n // block_size) for n in lengths]
    total = 2 * sum(needed) + 3
    order = torch.randperm(total, generator=gen)
    kv = torch.randn(total * block_size, width, generator=gen)
    rv = torch.randn(total * block_size, rv_width, generator=gen)
    table = torch.zeros(len(lengths), nb, dtype=torch.long)
    used, cursor = [], 0
    for b, n in enumerate(needed):
        blocks = order[cursor : cursor + n]
        cursor += n + 1  # a hole after every sequence
        table[b] = blocks[0]
        table[b, :n] = blocks
        used += blocks.tolist()
    unused = torch.ones(total, dtype=torch.bool)
    unused[used] = False
    kv.view(total, -1)[unused] = float("nan")
    rv.view(total, -1)[unused] = float("nan")
    q_rows = [min(rows, n) for n in lengths]
    pos = torch.zeros(len(lengths), rows, dtype=torch.long)
    valid = torch.zeros(len(lengths), rows, dtype=torch.bool)
    for b, (n, r) in enumerate(zip(lengths, q_rows, strict=True)):
        pos[b, :r] = torch.arange(n - r, n)
        valid[b, :r] = True
    seg = Segment(
        pos, valid=None if valid.all() else valid, block_table=table, block_size=block_size
    )
    return seg, [kv, rv]


def modules(heads: int, kv_heads: int, hd: int, coarse: int, window: int | None):
    config = named_config(
        "tiny", num_heads=heads, num_kv_heads=kv_heads, head_dim=hd, num_coarse_heads=coarse
    )
    attn, router = Attention(config, keep_head_mix=True), AttentionRouter(config)
    attn.sliding_window = window  # the config admits it for the linear router only
    return config, attn, router


CASES = [  # lengths, rows, block size, H, Hkv, hd, coarse heads, window
    ([1, 37, 200], 1, 4, 8, 2, 16, 4, None),  # decode, GQA 4
    ([5, 23, 61], 6, 3, 6, 3, 24, 2, None),  # chunks with padding rows, GQA 2, hd not 2^n
    ([9, 90], 4, 5, 4, 1, 16, 1, 7),  # MQA, sliding window
    ([2, 70], 1, 16, 3, 3, 8, 2, 33),  # MHA, decode under a window
]


@pytest.mark.parametrize(
    ("lengths", "rows", "bs", "heads", "kv_heads", "hd", "coarse", "window"), CASES
)
def test_paged_attention_and_route_sums_match_torch(
    lengths: list[int],
    rows: int,
    bs: int,
    heads: int,
    kv_heads: int,
    hd: int,
    coarse: int,
    window: int | None,
) -> None:
    config, attn, router = modules(heads, kv_heads, hd, coarse, window)
    groups, width = config.num_groups, config.num_routing_values
    seg, caches = paged_case(lengths, rows, bs, 2 * kv_heads * hd, width, seed=len(lengths) + bs)
    assert seg.block_table is not None
    q = torch.randn(len(lengths), rows, heads, hd, generator=torch.Generator().manual_seed(1))
    ctx = ForwardContext(positions=seg.query_pos.reshape(-1), segments=[seg], kv_caches=[caches])
    valid = torch.ones_like(seg.query_pos, dtype=torch.bool) if seg.valid is None else seg.valid

    keys = ctx.read(0, seg, 0, q)  # [B, L, 2*Hkv*hd]
    probs, ref_out = attn._attend(q, keys, attn._mask(seg))
    mix = attn._head_mix(probs)
    assert mix is not None
    ref_z, ref_entropy = router._sums(mix.coarse, mix.fine, q, ctx, 0, seg)

    out, lse = tpa.paged_attention(
        q, caches[0], seg.block_table, seg.query_pos, seg.valid, bs, kv_heads, window
    )
    torch.testing.assert_close(out[valid], ref_out[valid], **TOL)
    assert torch.all(out[~valid] == 0) and torch.all(lse[~valid] == float("-inf"))
    k = keys.view(*keys.shape[:2], 2, kv_heads, hd)[:, :, 0].repeat_interleave(heads // kv_heads, 2)
    scores = torch.einsum("bqhd,blhd->bqhl", q, k) * hd**-0.5
    scores = scores.masked_fill(~attn._mask(seg).transpose(1, 2), float("-inf"))
    torch.testing.assert_close(lse[valid], torch.logsumexp(scores, -1)[valid], **TOL)
    z, entropy = tpa.route_sums(
        q, lse, caches[0], caches[1], seg.block_table, seg.query_pos, seg.valid, bs, kv_heads,
        window, coarse, groups,
    )  # fmt: skip
    torch.testing.assert_close(z[valid], ref_z[valid], **TOL)
    torch.testing.assert_close(entropy[valid], ref_entropy[valid], **TOL)
    assert torch.all(z[~valid] == 0) and torch.all(entropy[~valid] == 0)
