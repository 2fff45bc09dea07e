"""One HAG-MoE decoder layer (pre-norm, causal): attention, routing, experts, an optional shared
expert (imported families), feedback."""

from __future__ import annotations

from torch import Tensor, nn

from hagmoe.kernels.triton import dispatch as triton_dispatch
from hagmoe.model.attention import Attention
from hagmoe.model.config import ModelConfig
from hagmoe.model.experts import Experts
from hagmoe.model.feedback import Feedback
from hagmoe.model.forward_context import ForwardContext
from hagmoe.model.norms import make_norm
from hagmoe.model.router import AttentionRouter, LinearRouter
from hagmoe.model.shared_expert import SharedExpert


class DecoderLayer(nn.Module):
    """x [T, d] -> x_out [T, d] as in MODEL.md's "One layer"."""

    def __init__(self, config: ModelConfig, index: int) -> None:
        super().__init__()
        self.index = index
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

    def forward(self, x: Tensor, ctx: ForwardContext) -> Tensor:
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
