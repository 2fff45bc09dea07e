"""One HAG-MoE decoder layer (pre-norm, causal): attention, routing, experts, an optional shared
expert (imported families), feedback."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hagmoe.kernels import cpu
from hagmoe.kernels.decode_layer import (
    AttentionRouting,
    DecodeLayer,
    DecodeRouting,
    DecodeRows,
    FeedbackWeights,
)
from hagmoe.kernels.packed import PackedLinear
from hagmoe.kernels.triton import dispatch as triton_dispatch
from hagmoe.model.attention import Attention
from hagmoe.model.config import ModelConfig
from hagmoe.model.experts import Experts
from hagmoe.model.feedback import Feedback
from hagmoe.model.forward_context import ForwardContext, Segment
from hagmoe.model.norms import make_norm
from hagmoe.model.router import AttentionRouter, LinearRouter
from hagmoe.model.routing import LayerRouting
from hagmoe.model.shared_expert import SharedExpert


class DecoderLayer(nn.Module):
    """x [T, d] -> x_out [T, d] as in MODEL.md's "One layer"."""

    decode_kernel: DecodeLayer | None = None  # the one-call decode layer (fuse_for_decode)

    def __init__(self, config: ModelConfig, index: int) -> None:
        super().__init__()
        self.index = index
        self.config = config
        attention_routed = config.router == "attention"
        self.attn_norm = make_norm(config)
        self.attn = Attention(config, keep_head_mix=attention_routed)
        self.moe_norm = make_norm(config)
        self.router: AttentionRouter | LinearRouter = (
            AttentionRouter(config) if attention_routed else LinearRouter(config)
        )
        self.experts = Experts(config)
        self.shared_expert = SharedExpert(config) if config.shared_expert_size > 0 else None
        self.feedback = Feedback(config) if config.feedback > 0 else None

    def fuse_for_decode(self) -> None:
        """Once packed in place: q/k/v in one call, and (no shared expert, no q/k norm or
        clipping, packed router and feedback weights) the whole layer in one call on decode
        steps; nothing changes where that does not apply."""
        self.attn.fuse_projections()
        attn, cfg = self.attn, self.config
        experts, router = self.experts.packed, self._decode_router()
        feedback = None if self.feedback is None else self._decode_feedback()
        if (
            attn.qkv is None
            or attn.o_proj.packed is None
            or router is None
            or experts is None
            or (self.feedback is not None and feedback is None)
            or self.shared_expert is not None
            or cfg.qk_norm_type is not None
            or cfg.clip_qkv is not None
            or attn.head_dim % cpu.LANES
        ):
            return
        norms = tuple((n.weight, getattr(n, "bias", None)) for n in (self.attn_norm, self.moe_norm))
        sizes = (
            attn.num_heads,
            attn.num_kv_heads,
            attn.head_dim,
            cfg.top_k,
            cfg.sliding_window or 0,
        )
        self.decode_kernel = DecodeLayer.build(
            norms,  # type: ignore[arg-type]
            ((attn.qkv, attn.qkv_bias), (attn.o_proj.packed, attn.o_proj.bias)),
            router,
            experts,
            feedback,
            sizes,
            cfg.norm_eps,
            cfg.normalize_topk,
            attn.rope_theta is not None,
        )

    def _decode_router(self) -> PackedLinear | AttentionRouting | None:
        """The router's part of the one-call layer (None: its weights are not packed)."""
        router = self.router
        if isinstance(router, LinearRouter):
            return router.gate.packed
        return AttentionRouting(
            router.pack_values(),
            router.kernel_sizes,
            self.attn.num_coarse,
            float(router.entropy_mean),
        )

    def _decode_feedback(self) -> FeedbackWeights | None:
        """The feedback's part of the one-call layer (None: its projection is not packed)."""
        assert self.feedback is not None
        proj = self.feedback.proj.packed
        if proj is None:
            return None
        embed = self.feedback.expert_embed.detach().contiguous()
        return FeedbackWeights(embed, proj, float(self.feedback.gamma))

    def forward(self, x: Tensor, ctx: ForwardContext) -> Tensor:
        if self.decode_kernel is not None and ctx.training is None:
            seg = ctx.decode_segment
            if (
                seg is not None
                and self.decode_kernel.takes(x.shape[0])
                and ctx.cached("cpu_kernels", lambda: cpu.enabled_for(x))
            ):
                return self._decode(x, ctx, seg)
        attn_out, mixes = self.attn(self.attn_norm(x), ctx, self.index)
        h = x + attn_out
        u = self.moe_norm(h)
        routing = self.router(u, mixes, ctx, self.index)
        if ctx.keeps_routing:
            ctx.routing.append(routing)
        if triton_dispatch.moe_enabled_for(u, self.experts):
            return h + triton_dispatch.moe(
                u, routing.experts, routing.scores, self.experts, self.shared_expert, self.feedback
            )
        o = self.experts(u, routing.experts, routing.scores)
        if self.shared_expert is not None:
            o = o + self.shared_expert(u)
        if self.feedback is not None:
            o = self.feedback(o, routing.experts, routing.scores)
        return h + o

    def decode_rows(self, ctx: ForwardContext, seg: Segment) -> DecodeRows:
        """The decode step's rows for the one-call layers, built once per forward pass."""
        slots, table, attn = ctx.slot_mapping, seg.block_table, self.attn
        assert slots is not None and table is not None
        theta = attn.rope_theta
        return ctx.cached(
            "decode_rows",
            lambda: DecodeRows.build(
                None
                if theta is None
                else ctx.rope(attn.head_dim, theta, torch.float32, attn.rope_scaling),
                slots,
                table,
                seg.query_pos,
                seg.block_size,
            ),
        )

    def _decode(self, x: Tensor, ctx: ForwardContext, seg: Segment) -> Tensor:
        """The decode step through the one-call layer (decode_kernel)."""
        assert self.decode_kernel is not None and ctx.kv_caches is not None
        rows = self.decode_rows(ctx, seg)
        out, routing = self.decode_kernel(x, rows, ctx.kv_caches[self.index])
        self.keep_decided(routing, ctx)
        return out

    def keep_decided(self, routing: DecodeRouting, ctx: ForwardContext) -> None:
        """Append a one-call decode's decisions for its rows [B, ...] where ctx keeps them."""
        if not ctx.keeps_routing:
            return
        if isinstance(self.router, LinearRouter):
            ctx.routing.append(self.router.decided(routing.experts, routing.scores, ctx))
            return
        assert routing.group is not None and routing.k is not None and routing.entropy is not None
        ctx.routing.append(
            LayerRouting(routing.group, routing.experts, routing.scores, routing.k, routing.entropy)
        )
