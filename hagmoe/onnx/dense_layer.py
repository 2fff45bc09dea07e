"""One HAG-MoE decoder layer written for export: batched [B, Q] rows against a per-sequence
cache, every expert computed for every token and combined through a dense score matrix.

Legend: B sequences, Q query rows, L key positions, H query heads, Hkv key/value heads,
hd head dim, d hidden size, G groups, M experts per group, N = G*M experts, F expert FFN size,
R feedback dim, K max experts per token (k_max or top_k), T flat rows (B*Q).

The math is MODEL.md's "One layer", on the parameters of the model's own DecoderLayer (with the
imported families' q/k norms, q/k/v clipping, rope scaling, sliding window, shared expert): the
data-dependent dispatch of `Experts` is replaced by dense compute, dynamic K by masking up to
k_max, and `top_experts`' stable sort by TopK (both put ties at the lower index).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hagmoe.model.config import ModelConfig
from hagmoe.model.layer import DecoderLayer
from hagmoe.model.rope import apply_rope, rope_cos_sin
from hagmoe.model.router import AttentionRouter, LinearRouter
from hagmoe.onnx.ops import apply_norm, causal_keys, dense_scores, insert_at, masked_top


class DenseLayer(nn.Module):
    """x [B, Q, d] at positions [B, Q] -> x_out [B, Q, d] and the layer's present cache.

    The cache is (key [B, L, Hkv, hd], value [B, L, Hkv, hd]) plus, for the attention router,
    routing [B, L, G+N]. Without `past` the keys are the rows themselves (prefill, Q = L);
    with it, each row's entry is written at index past_lengths[b] of the past grown by one."""

    def __init__(self, layer: DecoderLayer, config: ModelConfig) -> None:
        super().__init__()
        self.layer = layer
        self.config = config

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        past: list[Tensor] | None = None,
        past_lengths: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        layer = self.layer
        attn_out, probs, present = self._attention(
            apply_norm(layer.attn_norm, x), positions, past, past_lengths
        )
        h = x + attn_out
        u = apply_norm(layer.moe_norm, h)
        if isinstance(layer.router, AttentionRouter):
            rv = layer.router.routing_values(u)  # [B, Q, G+N]
            rv_keys = self._grow(rv, past[2] if past is not None else None, past_lengths)
            present.append(rv_keys)
            scores = self._attention_route(layer.router, probs, rv_keys, positions)
        else:
            scores = self._linear_route(layer.router, u)
        o = self._experts(u, scores)
        if layer.shared_expert is not None:
            o = o + layer.shared_expert(u)
        return h + self._feedback(o, scores), present

    @staticmethod
    def _grow(new: Tensor, past: Tensor | None, past_lengths: Tensor | None) -> Tensor:
        if past is None:
            return new
        assert past_lengths is not None
        return insert_at(past, new, past_lengths)

    def _attention(
        self, a: Tensor, positions: Tensor, past: list[Tensor] | None, past_lengths: Tensor | None
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """a [B, Q, d] -> o_proj(Attn(a)) [B, Q, d], probs [B, H, Q, L], [key, value]."""
        attn, cfg = self.layer.attn, self.config
        b, nq, _ = a.shape
        h, hkv, hd = cfg.num_heads, cfg.kv_heads, cfg.hd
        q, k, v = self._project(a.reshape(b * nq, -1))  # [B*Q, H, hd], [B*Q, Hkv, hd] x 2
        if attn.rope_theta is not None:
            flat = positions.reshape(-1)
            cos, sin = rope_cos_sin(flat, hd, attn.rope_theta, q.dtype, attn.rope_scaling)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys = self._grow(k.reshape(b, nq, hkv, hd), past[0] if past else None, past_lengths)
        values = self._grow(v.reshape(b, nq, hkv, hd), past[1] if past else None, past_lengths)
        rep = h // hkv
        qg = q.reshape(b, nq, hkv, rep, hd).permute(0, 2, 3, 1, 4)  # [B, Hkv, rep, Q, hd]
        kt = keys.permute(0, 2, 3, 1).unsqueeze(2)  # [B, Hkv, 1, hd, L]
        scores = (qg @ kt / math.sqrt(hd)).reshape(b, h, nq, -1)  # [B, H, Q, L]
        mask = causal_keys(positions, keys.shape[1], attn.sliding_window)  # [B, 1, Q, L]
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        vt = values.permute(0, 2, 1, 3).unsqueeze(2)  # [B, Hkv, 1, L, hd]
        pv = probs.reshape(b, hkv, rep, nq, -1) @ vt  # [B, Hkv, rep, Q, hd]
        out = pv.permute(0, 3, 1, 2, 4).reshape(b, nq, h * hd)
        return attn.o_proj(out), probs, [keys, values]

    def _project(self, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Attention._project with export-friendly norms: a [T, d] -> q [T, H, hd], k and v
        [T, Hkv, hd] (q/k RMSNorm per head or over the projection, then q/k/v clipping)."""
        attn, hd = self.layer.attn, self.config.hd
        t = a.shape[0]
        q, k, v = attn.q_proj(a), attn.k_proj(a), attn.v_proj(a)
        if attn.qk_norm_type == "projection":
            q, k = apply_norm(attn.q_norm, q), apply_norm(attn.k_norm, k)
        q, k, v = q.reshape(t, -1, hd), k.reshape(t, -1, hd), v.reshape(t, -1, hd)
        if attn.qk_norm_type == "head":
            q, k = apply_norm(attn.q_norm, q), apply_norm(attn.k_norm, k)
        if attn.clip_qkv is not None:
            c = attn.clip_qkv
            q, k, v = q.clamp(-c, c), k.clamp(-c, c), v.clamp(-c, c)
        return q, k, v

    def _attention_route(
        self, router: AttentionRouter, probs: Tensor, rv_keys: Tensor, positions: Tensor
    ) -> Tensor:
        """Group, experts, scores and K from the head mixes and cached routing values ->
        the dense score matrix [B, Q, N]."""
        cfg = self.config
        g, m, c = cfg.num_groups, cfg.experts_per_group, cfg.coarse_heads
        a_c, a_f = probs[:, :c].mean(1), probs[:, c:].mean(1)  # [B, Q, L]
        z_g = a_c @ rv_keys[..., :g]  # [B, Q, G]
        z_all = a_f @ rv_keys[..., g:]  # [B, Q, N]
        group = z_g.argmax(dim=-1)  # [B, Q]
        pick = group[..., None, None].expand(-1, -1, 1, m)  # [B, Q, 1, M]
        z_e = z_all.reshape(*z_all.shape[:2], g, m).gather(2, pick).squeeze(2)  # [B, Q, M]
        p = torch.softmax(z_e, dim=-1)
        safe = torch.where(a_c > 0, a_c, torch.ones_like(a_c))
        entropy = -(a_c * torch.log(safe)).sum(-1)  # [B, Q]
        norm_entropy = AttentionRouter.normalised_entropy(entropy, positions)
        k = router.cardinality(norm_entropy, None)  # [B, Q]
        local, scores = masked_top(p, cfg.k_max, k)
        return dense_scores(group[..., None] * m + local, scores, cfg.num_experts)

    def _linear_route(self, router: LinearRouter, u: Tensor) -> Tensor:
        """Top `top_k` of softmax(W_gate u), renormalised when normalize_topk -> [B, Q, N]."""
        cfg = self.config
        p = torch.softmax(router.gate(u), dim=-1)  # [B, Q, N]
        scores, experts = torch.topk(p, cfg.top_k, dim=-1)
        if cfg.normalize_topk:
            scores = scores / scores.sum(-1, keepdim=True)
        return dense_scores(experts, scores, cfg.num_experts)

    def _experts(self, u: Tensor, scores: Tensor) -> Tensor:
        """sum_n scores[..., n] * E_n(u): u [B, Q, d], scores [B, Q, N] -> [B, Q, d].

        All N experts run as one up GEMM [d -> N*F] and one down GEMM [N*F -> d]; the scores
        weight the hidden units in between (the down projection is linear)."""
        experts, cfg = self.layer.experts, self.config
        n, f, d = cfg.num_experts, cfg.ffn_size, cfg.hidden_size
        gate = F.linear(u, experts.w1.reshape(n * f, d))  # [B, Q, N*F]
        up = F.linear(u, experts.w2.reshape(n * f, d))
        hidden = (F.silu(gate) * up).reshape(*u.shape[:2], n, f) * scores[..., None]
        down = experts.w3.permute(1, 0, 2).reshape(d, n * f)  # [d, N*F]
        return F.linear(hidden.reshape(*u.shape[:2], n * f), down)  # [B, Q, d]

    def _feedback(self, o: Tensor, scores: Tensor) -> Tensor:
        """o * (1 + gamma * tanh(W_r (scores @ expert_embed))), or o without feedback."""
        feedback = self.layer.feedback
        if feedback is None:
            return o
        mix = scores @ feedback.expert_embed  # [B, Q, R]
        return o * (1 + feedback.gamma * torch.tanh(feedback.proj(mix)))
