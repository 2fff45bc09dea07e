"""A naive float64 reference of HAG-MoE, written from MODEL.md's math alone.

Plain Python loops over sequences, tokens i, keys j, heads and experts; the only torch used is
float64 vector arithmetic on one token at a time. Parameters are read by the names of MODEL.md's
checkpoint table, so nothing of `hagmoe.model` is called except to fetch its state_dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hagmoe.model import HagMoEModel, ModelConfig

Vec = Tensor
Params = dict[str, Tensor]


@dataclass
class RefRouting:
    """One layer's decisions for every flat token (sequence-major, as forward_full flattens)."""

    group: list[int] = field(default_factory=list)
    experts: list[list[int]] = field(default_factory=list)
    scores: list[list[float]] = field(default_factory=list)
    k: list[int] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)


@dataclass
class Decision:
    group: int
    experts: list[int]
    scores: list[float]
    k: int
    entropy: float


def checkpoint_tensors(model: HagMoEModel) -> Params:
    """The model's tensors in float64, keyed by MODEL.md's checkpoint names."""
    return {name: t.detach().to(torch.float64).clone() for name, t in model.state_dict().items()}


def softmax(z: list[float]) -> list[float]:
    top = max(z)
    e = [math.exp(v - top) for v in z]
    total = sum(e)
    return [v / total for v in e]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def silu(x: Vec) -> Vec:
    return x / (1.0 + torch.exp(-x))


def argmax_lowest(z: list[float]) -> int:
    best = 0
    for i, v in enumerate(z):
        if v > z[best]:
            best = i
    return best


def top_lowest(p: list[float], k: int) -> list[int]:
    return sorted(range(len(p)), key=lambda m: (-p[m], m))[:k]


def norm(x: Vec, params: Params, prefix: str, cfg: ModelConfig) -> Vec:
    weight = params[f"{prefix}.weight"]
    if cfg.norm == "rmsnorm":
        return x / math.sqrt(float((x * x).mean()) + cfg.norm_eps) * weight
    mean = float(x.mean())
    var = float(((x - mean) ** 2).mean())
    return (x - mean) / math.sqrt(var + cfg.norm_eps) * weight + params[f"{prefix}.bias"]


def linear(x: Vec, params: Params, prefix: str, bias: bool) -> Vec:
    y = params[f"{prefix}.weight"] @ x
    return y + params[f"{prefix}.bias"] if bias else y


def rope(x: Vec, pos: int, theta: float) -> Vec:
    hd = x.shape[0]
    half = hd // 2
    inv_freq = [1.0 / theta ** (2 * i / hd) for i in range(half)]
    angles = [pos * f for f in inv_freq] * 2
    cos = torch.tensor([math.cos(a) for a in angles], dtype=torch.float64)
    sin = torch.tensor([math.sin(a) for a in angles], dtype=torch.float64)
    rotated = torch.cat((-x[half:], x[:half]))
    return x * cos + rotated * sin


def heads(v: Vec, count: int, hd: int) -> list[Vec]:
    return [v[n * hd : (n + 1) * hd] for n in range(count)]


def attention(
    xs: list[Vec], params: Params, prefix: str, cfg: ModelConfig
) -> tuple[list[Vec], list[list[list[float]]]]:
    """o_proj(Attn(x)) for one sequence, and probs[h][i][j] for j <= i."""
    hd, nh, nkv = cfg.hd, cfg.num_heads, cfg.kv_heads
    qs, ks, vs = [], [], []
    for i, x in enumerate(xs):
        q = heads(linear(x, params, f"{prefix}.q_proj", cfg.attn_bias), nh, hd)
        k = heads(linear(x, params, f"{prefix}.k_proj", cfg.attn_bias), nkv, hd)
        v = heads(linear(x, params, f"{prefix}.v_proj", cfg.attn_bias), nkv, hd)
        if cfg.position == "rope":
            q = [rope(t, i, cfg.rope_theta) for t in q]
            k = [rope(t, i, cfg.rope_theta) for t in k]
        qs.append(q)
        ks.append(k)
        vs.append(v)
    group_size = nh // nkv
    probs: list[list[list[float]]] = [[] for _ in range(nh)]
    outs = []
    for i in range(len(xs)):
        per_head = []
        for h in range(nh):
            kv = h // group_size
            logits = [float(qs[i][h] @ ks[j][kv]) / math.sqrt(hd) for j in range(i + 1)]
            row = softmax(logits)
            probs[h].append(row)
            mixed = torch.zeros(hd, dtype=torch.float64)
            for j in range(i + 1):
                mixed = mixed + row[j] * vs[j][kv]
            per_head.append(mixed)
        outs.append(linear(torch.cat(per_head), params, f"{prefix}.o_proj", cfg.attn_bias))
    return outs, probs


def head_mean(probs: list[list[list[float]]], hs: range, i: int) -> list[float]:
    return [sum(probs[h][i][j] for h in hs) / len(hs) for j in range(i + 1)]


def weighted_sum(weights: list[float], us: list[Vec]) -> Vec:
    total = torch.zeros_like(us[0])
    for w, u in zip(weights, us, strict=False):
        total = total + w * u
    return total


def causal_entropy(a_c: list[float], i: int) -> float:
    if i == 0:
        return 0.0
    h = -sum(a * math.log(a) for a in a_c if a > 0.0)
    return h / math.log(i + 1)


def cardinality(hn: float, mu: float, cfg: ModelConfig) -> int:
    gate = sigmoid(cfg.entropy_alpha * (hn - mu))
    k = cfg.k_min + math.floor((cfg.k_max - cfg.k_min) * gate)
    return min(max(k, cfg.k_min), cfg.k_max)


def attention_route(
    us: list[Vec],
    probs: list[list[list[float]]],
    i: int,
    params: Params,
    prefix: str,
    cfg: ModelConfig,
) -> Decision:
    c, m = cfg.coarse_heads, cfg.experts_per_group
    a_c = head_mean(probs, range(c), i)
    a_f = head_mean(probs, range(c, cfg.num_heads), i)
    coarse_in = weighted_sum(a_c, us)
    fine_in = weighted_sum(a_f, us)
    w_g = params[f"{prefix}.coarse.weight"]
    z_g = [float(w_g[g] @ coarse_in) / math.sqrt(cfg.hidden_size) for g in range(cfg.num_groups)]
    g = argmax_lowest(z_g)
    w_e = params[f"{prefix}.fine.weight"][g]
    p = softmax([float(w_e[e] @ fine_in) for e in range(m)])
    hn = causal_entropy(a_c, i)
    k = cardinality(hn, float(params[f"{prefix}.entropy_mean"]), cfg)
    local = top_lowest(p, k)
    return Decision(g, [g * m + e for e in local], [p[e] for e in local], k, hn)


def linear_route(u: Vec, params: Params, prefix: str, cfg: ModelConfig) -> Decision:
    w = params[f"{prefix}.gate.weight"]
    p = softmax([float(w[n] @ u) for n in range(cfg.num_experts)])
    chosen = top_lowest(p, cfg.top_k)
    scores = [p[n] for n in chosen]
    if cfg.normalize_topk:
        total = sum(scores)
        scores = [s / total for s in scores]
    return Decision(-1, chosen, scores, cfg.top_k, 0.0)


def expert(u: Vec, n: int, params: Params, prefix: str) -> Vec:
    w1, w2, w3 = (params[f"{prefix}.{w}"][n] for w in ("w1", "w2", "w3"))
    return w3 @ (silu(w1 @ u) * (w2 @ u))


def moe_output(h: Vec, u: Vec, d: Decision, params: Params, prefix: str, cfg: ModelConfig) -> Vec:
    o = torch.zeros_like(u)
    for n, s in zip(d.experts, d.scores, strict=True):
        o = o + s * expert(u, n, params, f"{prefix}.experts")
    if cfg.feedback == 0:
        return h + o
    embed = params[f"{prefix}.feedback.expert_embed"]
    mix = torch.zeros(cfg.feedback, dtype=torch.float64)
    for n, s in zip(d.experts, d.scores, strict=True):
        mix = mix + s * embed[n]
    r = params[f"{prefix}.feedback.proj.weight"] @ mix
    gamma = float(params[f"{prefix}.feedback.gamma"][0])
    return h + o * (1.0 + gamma * torch.tanh(r))


def layer_sequence(
    xs: list[Vec], params: Params, layer: int, cfg: ModelConfig
) -> tuple[list[Vec], list[Decision]]:
    """One layer over one sequence's hidden states."""
    prefix = f"layers.{layer}"
    a = [norm(x, params, f"{prefix}.attn_norm", cfg) for x in xs]
    attn_out, probs = attention(a, params, f"{prefix}.attn", cfg)
    hs = [x + o for x, o in zip(xs, attn_out, strict=True)]
    us = [norm(h, params, f"{prefix}.moe_norm", cfg) for h in hs]
    outs, decisions = [], []
    for i, (h, u) in enumerate(zip(hs, us, strict=True)):
        if cfg.router == "attention":
            d = attention_route(us[: i + 1], probs, i, params, f"{prefix}.router", cfg)
        else:
            d = linear_route(u, params, f"{prefix}.router", cfg)
        outs.append(moe_output(h, u, d, params, prefix, cfg))
        decisions.append(d)
    return outs, decisions


def record(routing: RefRouting, decisions: list[Decision]) -> None:
    for d in decisions:
        routing.group.append(d.group)
        routing.experts.append(d.experts)
        routing.scores.append(d.scores)
        routing.k.append(d.k)
        routing.entropy.append(d.entropy)


def reference_layer(
    x: Tensor, params: Params, layer: int, cfg: ModelConfig
) -> tuple[Tensor, RefRouting]:
    """x [B, T, d] -> the layer's output [B, T, d] and its routing over the B*T flat tokens."""
    routing = RefRouting()
    outs = []
    for seq in x.to(torch.float64):
        ys, decisions = layer_sequence(list(seq), params, layer, cfg)
        outs.append(torch.stack(ys))
        record(routing, decisions)
    return torch.stack(outs), routing


def reference_model(
    ids: Tensor, params: Params, cfg: ModelConfig
) -> tuple[Tensor, list[RefRouting]]:
    """ids [B, T] -> logits [B, T, V] and one RefRouting per layer."""
    routings = [RefRouting() for _ in range(cfg.num_layers)]
    head = params["embed.weight"] if cfg.tie_embeddings else params["lm_head.weight"]
    all_logits = []
    for row in ids.tolist():
        xs = [params["embed.weight"][t].clone() for t in row]
        if cfg.position == "learned":
            xs = [x + params["pos_embed.weight"][i] for i, x in enumerate(xs)]
        for layer in range(cfg.num_layers):
            xs, decisions = layer_sequence(xs, params, layer, cfg)
            record(routings[layer], decisions)
        all_logits.append(torch.stack([head @ norm(x, params, "final_norm", cfg) for x in xs]))
    return torch.stack(all_logits), routings
