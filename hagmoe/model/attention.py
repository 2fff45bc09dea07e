"""Causal multi-head attention with GQA that also hands its probabilities to the router.

Options of imported families: q/k RMSNorm (per head or over the whole projection) and q/k/v
clipping before rope, rope scaling, a sliding window, and no output-projection bias.

Legend: T flat tokens, B sequences, Q query rows, L key positions, H query heads,
Hkv key/value heads, hd head dim, d hidden size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hagmoe.kernels import cpu
from hagmoe.kernels.packed import PackedLinear, fuse
from hagmoe.kernels.triton import dispatch as triton_dispatch
from hagmoe.model.config import ModelConfig
from hagmoe.model.forward_context import ForwardContext, Segment
from hagmoe.model.linear import Linear
from hagmoe.model.rope import apply_rope

KERNEL_QUERY_KEYS = 128 * 512  # query rows x key positions of a segment's sequence


@dataclass(slots=True)
class HeadMix:
    """Attention rows averaged over the coarse and the fine heads, for one segment; from the
    Triton attention they stay unmaterialised ([B, Q, 0]) and `paged` holds what the router's
    pass over the keys computes them from."""

    coarse: Tensor  # [B, Q, L] a_c
    fine: Tensor  # [B, Q, L] a_f
    paged: triton_dispatch.PagedQueries | None = None


class Attention(nn.Module):
    """q/k/v/o projections; attention probabilities are materialised because routing needs them."""

    qkv: PackedLinear | None = None  # q, k, v fused once packed (fuse_projections)
    qkv_bias: Tensor | None = None

    def __init__(self, config: ModelConfig, keep_head_mix: bool) -> None:
        super().__init__()
        d, hd = config.hidden_size, config.hd
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.kv_heads, hd
        self.num_coarse = config.coarse_heads
        self.keep_head_mix = keep_head_mix
        self.rope_theta = config.rope_theta if config.position == "rope" else None
        self.rope_scaling = config.rope_scaling
        self.sliding_window = config.sliding_window
        self.clip_qkv = config.clip_qkv
        self.qk_norm_type = config.qk_norm_type
        self.q_proj = Linear(d, self.num_heads * hd, bias=config.attn_bias)
        self.k_proj = Linear(d, self.num_kv_heads * hd, bias=config.attn_bias)
        self.v_proj = Linear(d, self.num_kv_heads * hd, bias=config.attn_bias)
        self.o_proj = Linear(self.num_heads * hd, d, bias=bool(config.attn_out_bias))
        if config.qk_norm_type is not None:
            per_head = config.qk_norm_type == "head"
            q_size = hd if per_head else self.num_heads * hd
            k_size = hd if per_head else self.num_kv_heads * hd
            self.q_norm = nn.RMSNorm(q_size, eps=config.norm_eps)
            self.k_norm = nn.RMSNorm(k_size, eps=config.norm_eps)

    def fuse_projections(self) -> None:
        """Once q/k/v are packed in place: one kernel call projects all three (their modules
        keep views of the fused panels); nothing changes where they cannot be fused."""
        parts = [m.packed for m in (self.q_proj, self.k_proj, self.v_proj)]
        if any(p is None for p in parts):
            return
        self.qkv = fuse(parts)  # type: ignore[arg-type]
        biases = [m.bias for m in (self.q_proj, self.k_proj, self.v_proj)]
        self.qkv_bias = None if biases[0] is None else torch.cat(biases).detach()  # type: ignore[arg-type]

    def forward(self, a: Tensor, ctx: ForwardContext, layer: int) -> tuple[Tensor, list[HeadMix]]:
        """a [T, d] (normed) -> o_proj(Attn(a)) [T, d], and each segment's head mix."""
        t = a.shape[0]
        q, k, v = self._project(a)
        if self.rope_theta is not None:
            cos, sin = ctx.rope(self.head_dim, self.rope_theta, q.dtype, self.rope_scaling)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        kv = torch.cat((k.reshape(t, -1), v.reshape(t, -1)), dim=1)  # [T, 2*Hkv*hd]
        ctx.write(layer, 0, kv)
        out = a.new_empty(t, self.num_heads * self.head_dim)
        mixes = []
        for seg in ctx.segments:
            q_seg = seg.take(q)  # [B, Q, H, hd]
            cache = self._paged_cache(q_seg, ctx, layer, seg)
            paged = ctx.kv_caches is not None and seg.block_table is not None
            if triton_dispatch.attends(q_seg, paged, ctx.training is not None):
                mix, o = self._attend_triton(q_seg, ctx, layer, seg)
            elif cache is not None:
                mix, o = self._attend_in_cache(q_seg, cache, seg)
            else:
                keys = ctx.read(layer, seg, 0, kv)  # [B, L, 2*Hkv*hd]
                probs, o = self._attend(q_seg, keys, self._mask(seg))
                mix = self._head_mix(probs)
            seg.put(out, o)
            if mix is not None:
                mixes.append(mix)
        return self.o_proj(out), mixes

    def _head_mix(self, probs: Tensor) -> HeadMix | None:
        """probs [B, H, Q, L] averaged over the coarse and the fine heads (routers that need it)."""
        if not self.keep_head_mix:
            return None
        return HeadMix(probs[:, : self.num_coarse].mean(1), probs[:, self.num_coarse :].mean(1))

    def _paged_cache(
        self, q: Tensor, ctx: ForwardContext, layer: int, seg: Segment
    ) -> Tensor | None:
        """The layer's KV cache where the CPU kernel attends in place: paged mode, decode rows,
        and prefill chunks of short contexts (each row reads its keys on its own, so rows x keys
        stays under KERNEL_QUERY_KEYS; longer ones share them through batched GEMMs)."""
        rows, keys = q.shape[1], seg.num_keys
        if (
            (rows == 1 or rows * keys <= KERNEL_QUERY_KEYS)
            and ctx.kv_caches is not None
            and seg.block_table is not None
            and self.head_dim % cpu.LANES == 0
            and cpu.enabled_for(q)
        ):
            return ctx.kv_caches[layer][0]
        return None

    def _attend_in_cache(
        self, q: Tensor, cache: Tensor, seg: Segment
    ) -> tuple[HeadMix | None, Tensor]:
        """q [B, Q, H, hd] against K/V read in place -> head mix, out [B, Q, H*hd]."""
        assert seg.block_table is not None
        mix, out = cpu.paged_attention(
            q,
            cache,
            seg.block_table,
            seg.query_pos,
            seg.valid,
            seg.block_size,
            self.num_kv_heads,
            self.sliding_window,
            self.num_coarse if self.keep_head_mix else None,
        )
        head_mix = None if mix is None else HeadMix(mix[:, :, 0], mix[:, :, 1])  # [B, Q, L] each
        return head_mix, out

    def _attend_triton(
        self, q: Tensor, ctx: ForwardContext, layer: int, seg: Segment
    ) -> tuple[HeadMix | None, Tensor]:
        """q [B, Q, H, hd] through the Triton paged attention -> head mix, out [B, Q, H*hd]."""
        coarse = self.num_coarse if self.keep_head_mix else None
        assert ctx.kv_caches is not None and seg.block_table is not None
        paged, out = triton_dispatch.paged_attention(
            q, ctx.kv_caches[layer][0], seg.block_table, seg.query_pos, seg.valid,
            seg.block_size, self.num_kv_heads, self.sliding_window, coarse,
        )  # fmt: skip
        none = q.new_empty(*q.shape[:2], 0)  # [B, Q, 0]
        return (None if paged is None else HeadMix(none, none, paged)), out

    def _project(self, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """a [T, d] -> q [T, H, hd], k and v [T, Hkv, hd]: projected, q/k normed, clipped."""
        t, hd = a.shape[0], self.head_dim
        if self.qkv is not None:
            kv_width = self.num_kv_heads * hd
            y = self.qkv(a, self.qkv_bias)  # [T, (H + 2 Hkv) hd]
            q, k, v = y.split((self.num_heads * hd, kv_width, kv_width), dim=1)
        else:
            q, k, v = self.q_proj(a), self.k_proj(a), self.v_proj(a)
        if self.qk_norm_type == "projection":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.view(t, -1, hd), k.view(t, -1, hd), v.view(t, -1, hd)
        if self.qk_norm_type == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.clip_qkv is not None:
            c = self.clip_qkv
            q, k, v = q.clamp(-c, c), k.clamp(-c, c), v.clamp(-c, c)
        return q, k, v

    def _mask(self, seg: Segment) -> Tensor:
        """The segment's causal mask [B, 1, Q, L], narrowed to the last `sliding_window` keys."""
        if self.sliding_window is None:
            return seg.mask
        j = torch.arange(seg.mask.shape[-1], device=seg.mask.device)  # [L]
        recent = j[None, None, :] > seg.query_pos[:, :, None] - self.sliding_window  # [B, Q, L]
        return seg.mask & recent.unsqueeze(1)

    def _attend(self, q: Tensor, keys: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """q [B, Q, H, hd], keys [B, L, 2*Hkv*hd], mask [B, 1, Q, L] -> probs [B, H, Q, L], out [B, Q, H*hd]."""
        if q.shape[1] == 1:
            return self._attend_one(q, keys, mask)
        b, nq, h, hd = q.shape
        hkv, rep = self.num_kv_heads, h // self.num_kv_heads
        k, v = keys.view(b, -1, 2, hkv, hd).unbind(2)  # [B, L, Hkv, hd] each
        qg = q.view(b, nq, hkv, rep, hd).permute(0, 2, 3, 1, 4)  # [B, Hkv, rep, Q, hd]
        scores = qg @ k.permute(0, 2, 3, 1).unsqueeze(2) / math.sqrt(hd)  # [B, Hkv, rep, Q, L]
        scores = scores.reshape(b, h, nq, -1).masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)  # [B, H, Q, L]
        pv = probs.view(b, hkv, rep, nq, -1) @ v.transpose(1, 2).unsqueeze(
            2
        )  # [B, Hkv, rep, Q, hd]
        return probs, pv.permute(0, 3, 1, 2, 4).reshape(b, nq, h * hd)

    def _attend_one(self, q: Tensor, keys: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Decode rows (Q = 1): two bmm over the gathered keys as they lie, no transposed copies.

        Each query head is spread over a block-diagonal [H, Hkv*hd] row so one bmm against
        K [L, Hkv*hd] scores all heads; the output keeps each head's own KV-head block."""
        b, _, h, hd = q.shape
        hkv = self.num_kv_heads
        width = hkv * hd
        owner = torch.arange(h, device=q.device) // (h // hkv)  # [H] kv head of each query head
        select = torch.nn.functional.one_hot(owner, hkv).to(q.dtype)  # [H, Hkv]
        spread = (q.view(b, h, 1, hd) * select.view(1, h, hkv, 1)).view(b, h, width)
        scores = torch.bmm(spread, keys[..., :width].transpose(1, 2)) / math.sqrt(hd)  # [B, H, L]
        probs = torch.softmax(scores.masked_fill(~mask.view(b, 1, -1), float("-inf")), dim=-1)
        pv = torch.bmm(probs, keys[..., width:]).view(b, h, hkv, hd)  # [B, H, Hkv, hd]
        out = pv[:, torch.arange(h, device=q.device), owner]  # [B, H, hd]
        return probs.unsqueeze(2), out.reshape(b, 1, h * hd)
