"""Routers: HAG-MoE's attention router (groups, experts, dynamic K) and the linear top-k gate.

Legend: T flat tokens, B sequences, Q query rows, L key positions, d hidden size,
G groups, M experts per group, N = G*M experts, K max experts per token.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hagmoe.kernels import cpu
from hagmoe.kernels.packed import PackedLinear
from hagmoe.kernels.triton import dispatch as triton_dispatch
from hagmoe.model.attention import HeadMix
from hagmoe.model.config import ModelConfig
from hagmoe.model.forward_context import ForwardContext, Segment
from hagmoe.model.linear import Linear, linear
from hagmoe.model.routing import LayerRouting
from hagmoe.quantization.format import WeightFormat


def top_experts(p: Tensor, k_max: int, k: Tensor) -> tuple[Tensor, Tensor]:
    """Best k_max entries of p [T, E] (ties -> lower index), masked beyond each token's k [T].

    Returns indices [T, K] (-1 where masked) and scores [T, K] (0 where masked)."""
    scores, idx = torch.sort(p, dim=-1, descending=True, stable=True)
    scores, idx = scores[:, :k_max], idx[:, :k_max]
    keep = torch.arange(k_max, device=p.device)[None, :] < k[:, None]
    return idx.masked_fill(~keep, -1), scores.masked_fill(~keep, 0.0)


def _kl_rows(a_c: Tensor, a_f: Tensor) -> Tensor:
    """KL(a_c || a_f) over the last dim; keys where a_c = 0 (masked) add 0 and pass no NaN back
    (xlogy's gradient there would be 0 / 0), and an a_f that underflowed to 0 counts as the
    dtype's smallest normal number, so the KL and its gradient stay finite."""
    live = a_c > 0
    one = torch.ones_like(a_c)
    floor = torch.finfo(a_f.dtype).tiny
    safe_c, safe_f = torch.where(live, a_c, one), torch.where(live, a_f.clamp_min(floor), one)
    return (torch.xlogy(a_c, safe_c) - torch.xlogy(a_c, safe_f)).sum(-1)


class StackedWeight(nn.Module):
    """A bare weight tensor of any shape, so it is saved as `<name>.weight`."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(*shape))


class AttentionRouter(nn.Module):
    """Routes with the layer's own attention rows over cached routing values (MODEL.md)."""

    values_packed: PackedLinear | None = None  # W_rv [G+N, d] in float32 panels (pack_values)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.kernel_sizes = cpu.RouterSizes(
            config.num_groups,
            config.experts_per_group,
            config.k_min,
            config.k_max,
            config.entropy_alpha,
        )
        d, g, m = config.hidden_size, config.num_groups, config.experts_per_group
        self.coarse = nn.Linear(d, g, bias=False)
        self.fine = StackedWeight(g, m, d)  # [G, M, d]
        self.entropy_mean: Tensor
        self.register_buffer("entropy_mean", torch.zeros(()))  # mu_H

    def values_weight(self) -> Tensor:
        """W_rv [G+N, d] = [W_g / sqrt(d) ; every group's W_e]."""
        d = self.config.hidden_size
        return torch.cat((self.coarse.weight / math.sqrt(d), self.fine.weight.reshape(-1, d)))

    def pack_values(self) -> PackedLinear:
        """Pack W_rv once for serving (float32: the values feed argmax and top-k); the
        per-op path and the one-call decode layer then compute rv alike. Returns it."""
        if self.values_packed is None:
            self.values_packed = PackedLinear.from_weight(
                self.values_weight().detach(), WeightFormat()
            )
        return self.values_packed

    def routing_values(self, u: Tensor) -> Tensor:
        """rv [T, G+N] = [W_g u / sqrt(d) ; W_e[g] u for every g]."""
        if self.values_packed is not None:
            return self.values_packed(u)
        return linear(u, self.values_weight())

    def forward(
        self, u: Tensor, mixes: list[HeadMix], ctx: ForwardContext, layer: int
    ) -> LayerRouting:
        """Decide group, experts, scores and K for every token of u [T, d]."""
        cfg = self.config
        t, g, m = u.shape[0], cfg.num_groups, cfg.experts_per_group
        rv = self.routing_values(u)  # [T, G+N]
        ctx.write(layer, 1, rv)
        z = u.new_empty(t, g + g * m)  # [T, G+N]: z_g, then every group's expert logits
        entropy = u.new_empty(t)
        divergence = u.new_empty(t) if ctx.training is not None else None
        for seg, mix in zip(ctx.segments, mixes, strict=True):
            if mix.paged is not None:  # the Triton attention's rows (serving on CUDA)
                assert ctx.kv_caches is not None and seg.block_table is not None
                kv, rv_cache = ctx.kv_caches[layer]
                z_seg, entropy_seg = triton_dispatch.route_sums(
                    mix.paged, kv, rv_cache, seg.block_table, seg.query_pos, seg.valid,
                    seg.block_size, g,
                )  # fmt: skip
                seg.put(z, z_seg)
                seg.put(entropy, entropy_seg)
                continue
            a_c, a_f = mix.coarse, mix.fine  # [B, Q, L]
            if divergence is not None:
                seg.put(divergence, _kl_rows(a_c, a_f))
            if ctx.training is None or ctx.training.detach_routing_attention:
                a_c, a_f = a_c.detach(), a_f.detach()
            z_seg, entropy_seg = self._sums(a_c, a_f, rv, ctx, layer, seg)
            seg.put(z, z_seg)
            seg.put(entropy, entropy_seg)
        return self._decide(z, entropy, divergence, ctx)

    def _decide(
        self, z: Tensor, entropy: Tensor, divergence: Tensor | None, ctx: ForwardContext
    ) -> LayerRouting:
        """Group, experts, scores and K from z [T, G+N] and the coarse entropy [T]."""
        cfg = self.config
        t, g, m = z.shape[0], cfg.num_groups, cfg.experts_per_group
        k_override = ctx.training.k_override if ctx.training is not None else None
        if triton_dispatch.enabled_for(z) and ctx.training is None:
            decided = triton_dispatch.route_decide(
                z, entropy, ctx.positions, self.kernel_sizes, self.entropy_mean, k_override
            )
            return LayerRouting(*decided)
        if cpu.enabled_for(z) and ctx.training is None:
            group, experts, scores, k, norm_entropy = cpu.route_decide(
                z, entropy, ctx.positions, self.kernel_sizes, float(self.entropy_mean), k_override
            )
            return LayerRouting(group, experts, scores, k, norm_entropy)
        z_g = z[:, :g]
        group = z_g.argmax(dim=-1)  # [T]; ties -> lowest index
        z_e = (
            z[:, g:].view(t, g, m).gather(1, group[:, None, None].expand(t, 1, m)).squeeze(1)
        )  # [T, M]
        p = torch.softmax(z_e, dim=-1)
        norm_entropy = self.normalised_entropy(entropy, ctx.positions)
        k = self.cardinality(norm_entropy, k_override)
        local, scores = top_experts(p, cfg.k_max, k)
        experts = torch.where(local >= 0, group[:, None] * m + local, local)
        return LayerRouting(
            group=group,
            experts=experts,
            scores=scores,
            k=k,
            entropy=norm_entropy,
            group_logits=z_g if ctx.training is not None else None,
            expert_logits=z_e if ctx.training is not None else None,
            divergence=divergence,
        )

    def _sums(
        self, a_c: Tensor, a_f: Tensor, rv: Tensor, ctx: ForwardContext, layer: int, seg: Segment
    ) -> tuple[Tensor, Tensor]:
        """A segment's z [B, Q, G+N] (a_c over z_g's values, a_f over the experts') and coarse
        entropy [B, Q]; in paged mode the CPU kernel reads the RV cache in place."""
        g = self.config.num_groups
        if (
            ctx.kv_caches is not None
            and seg.block_table is not None
            and a_c.stride(2) == 1
            and a_c.stride() == a_f.stride()
            and cpu.enabled_for(a_c)
        ):
            return cpu.route_sums(
                a_c, a_f, ctx.kv_caches[layer][1], seg.block_table, seg.query_pos, seg.valid,
                seg.block_size, g,
            )  # fmt: skip
        rv_keys = ctx.read(layer, seg, 1, rv)  # [B, L, G+N]
        z = torch.cat((a_c @ rv_keys[..., :g], a_f @ rv_keys[..., g:]), dim=-1)
        return z, -torch.xlogy(a_c, a_c).sum(-1).detach()

    @staticmethod
    def normalised_entropy(entropy: Tensor, positions: Tensor) -> Tensor:
        """Hn[i] = H[i] / log(i + 1) for i >= 1, Hn[0] = 0 (causal normaliser)."""
        denom = torch.log((positions + 1).to(entropy.dtype)).clamp_min(1e-30)
        return torch.where(positions >= 1, entropy / denom, torch.zeros_like(entropy))

    def cardinality(self, norm_entropy: Tensor, k_override: int | None) -> Tensor:
        """K[i] = clamp(k_min + floor((k_max - k_min) * sigmoid(alpha (Hn - mu_H))))."""
        cfg = self.config
        if k_override is not None:
            return torch.full_like(norm_entropy, k_override, dtype=torch.long)
        gate = torch.sigmoid(cfg.entropy_alpha * (norm_entropy - self.entropy_mean))
        k = cfg.k_min + torch.floor((cfg.k_max - cfg.k_min) * gate).long()
        return k.clamp(cfg.k_min, cfg.k_max)


class LinearRouter(nn.Module):
    """The standard top-k gate: p = softmax(W_gate u) over all N experts."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.gate = Linear(config.hidden_size, config.num_experts, bias=False)

    def forward(
        self, u: Tensor, mixes: list[HeadMix], ctx: ForwardContext, layer: int
    ) -> LayerRouting:
        """Top `top_k` experts of softmax(W_gate u), renormalised when normalize_topk."""
        cfg = self.config
        logits = self.gate(u)  # [T, N]
        p = torch.softmax(logits, dim=-1)
        ranked, order = torch.sort(p, dim=-1, descending=True, stable=True)  # ties -> lower index
        scores, experts = ranked[:, : cfg.top_k].contiguous(), order[:, : cfg.top_k].contiguous()
        if cfg.normalize_topk:
            scores = scores / scores.sum(-1, keepdim=True)
        return self.decided(experts, scores, ctx, logits if ctx.training is not None else None)

    def decided(
        self, experts: Tensor, scores: Tensor, ctx: ForwardContext, logits: Tensor | None = None
    ) -> LayerRouting:
        """The LayerRouting of top-k choices experts / scores [T, K]; the fields every token
        shares (group -1, k = top_k, entropy 0) are made once per forward pass."""
        t = experts.shape[0]

        def shared() -> tuple[Tensor, Tensor, Tensor]:
            k = torch.full((t,), self.config.top_k, dtype=torch.long, device=experts.device)
            return torch.full_like(k, -1), k, scores.new_zeros(t)

        group, k, entropy = ctx.cached(("topk_routing", t), shared)
        return LayerRouting(group, experts, scores, k, entropy, expert_logits=logits)
