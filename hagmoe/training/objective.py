"""The training objective of MODEL.md:

    L = L_lm + lam_g L_group + lam_e L_expert + lam_div L_div + lam_gamma sum_l gamma_l^2 + lam_z L_z

L_group, L_expert, L_div and L_z are averaged over layers; gamma^2 is summed over layers. The
linear router's layers use the Switch / OLMoE load balance over all N experts in the L_expert slot
and the z-loss of their gate logits in the L_z slot (no group or divergence terms). Only tokens
marked valid count (all of them when no mask is given).

Split across ranks (data parallelism), pass the run's BatchReduce (hagmoe.training.reduce): every
batch-level statistic is then the global batch's, so the ranks' mean loss and mean gradient are
the one-process ones over the same global batch.

Legend: B sequences, T tokens per sequence (flat T = B*T for routing), V vocabulary size,
G groups, M experts per group, N = G*M experts, K max experts per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hagmoe.model.layer import DecoderLayer
from hagmoe.model.model import FullOutput, HagMoEModel
from hagmoe.model.routing import LayerRouting
from hagmoe.training.reduce import LOCAL, BatchReduce


@dataclass(slots=True)
class LossWeights:
    """The lam weights in force at one step (after their ramp)."""

    group: float = 0.0
    expert: float = 0.0
    div: float = 0.0
    gamma: float = 0.0
    z: float = 0.0
    div_cap: float = math.inf  # nats: per-token KL beyond this earns nothing


@dataclass(slots=True)
class LossTerms:
    """Each term of the objective (scalars) and the weighted total."""

    total: Tensor
    lm: Tensor
    group: Tensor
    expert: Tensor
    div: Tensor
    gamma: Tensor
    z: Tensor

    def as_floats(self) -> dict[str, float]:
        names = ("total", "lm", "group", "expert", "div", "gamma", "z")
        return {name: float(getattr(self, name).detach()) for name in names}


def lm_loss(
    logits: Tensor, targets: Tensor, valid: Tensor | None = None, reduce: BatchReduce = LOCAL
) -> Tensor:
    """Mean next-token cross entropy in nats of logits [B, T, V] against targets [B, T]."""
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.reshape(-1), reduction="none")
    return _mean(nll, None if valid is None else valid.reshape(-1), reduce)


def group_balance(
    group: Tensor, group_logits: Tensor, num_groups: int, reduce: BatchReduce = LOCAL
) -> Tensor:
    """L_group = G sum_g f_g P_g: f_g the share of tokens whose g* = g (group [T]), P_g the mean
    of softmax(z_g) (group_logits [T, G]). 1 when balanced, G when all on one sure group."""
    counts = reduce.total(torch.bincount(group, minlength=num_groups).to(group_logits.dtype))
    f = counts / counts.sum()  # [G]
    p = reduce.mean_rows(torch.softmax(group_logits, dim=-1))  # [G]
    return num_groups * (f * p).sum()


def expert_balance(
    group: Tensor,
    experts: Tensor,
    expert_logits: Tensor,
    num_groups: int,
    reduce: BatchReduce = LOCAL,
) -> Tensor:
    """L_expert = mean over groups with tokens of M sum_m f_m P_m, inside each group g: f_m the
    share of the group's (token, expert) assignments going to its expert m (experts [T, K] global
    ids g*M + m, -1 unused), P_m the mean of softmax(z_e) (expert_logits [T, M]) over the
    group's tokens (group [T]). Groups without tokens have no distribution and are left out."""
    m = expert_logits.shape[-1]
    dtype = expert_logits.dtype
    counts = torch.bincount(experts[experts >= 0], minlength=num_groups * m)  # [N]
    counts = reduce.total(counts.view(num_groups, m).to(dtype))  # [G, M]
    f = counts / counts.sum(1, keepdim=True).clamp_min(1)  # [G, M]
    member = F.one_hot(group, num_groups).to(dtype)  # [T, G]
    tokens = reduce.total(member.sum(0))  # [G]
    sums = member.T @ torch.softmax(expert_logits, dim=-1)  # [G, M]
    p = reduce.scaled(sums, tokens.clamp_min(1)[:, None])  # [G, M]
    per_group = m * (f * p).sum(1)  # [G]
    return per_group[tokens > 0].mean()


def switch_balance(experts: Tensor, gate_logits: Tensor, reduce: BatchReduce = LOCAL) -> Tensor:
    """Switch / OLMoE load balance N sum_n f_n P_n over all experts: f_n the share of (token,
    expert) assignments (experts [T, K], -1 unused) going to n, P_n the mean of softmax(gate
    logits [T, N]). 1 when balanced, N when all on one sure expert."""
    n = gate_logits.shape[-1]
    counts = torch.bincount(experts[experts >= 0], minlength=n).to(gate_logits.dtype)  # [N]
    counts = reduce.total(counts)
    f = counts / counts.sum().clamp_min(1)
    p = reduce.mean_rows(torch.softmax(gate_logits, dim=-1))  # [N]
    return n * (f * p).sum()


def divergence_loss(
    divergence: Tensor, cap: float = math.inf, reduce: BatchReduce = LOCAL
) -> Tensor:
    """L_div = -mean_i min(KL(a_c[i] || a_f[i]), cap) from the per-token divergences [T].

    MODEL.md's term is uncapped; uncapped, the fine heads learn to put ~0 mass where the coarse
    heads look and the loss runs to -inf (our first bundled run did at step 170)."""
    return -reduce.mean_rows(divergence.clamp(max=cap))


def z_loss(logits: Tensor, reduce: BatchReduce = LOCAL) -> Tensor:
    """mean_i (logsumexp logits[i])^2 of router logits [T, X]."""
    return reduce.mean_rows(torch.logsumexp(logits, dim=-1).square())


def gamma_penalty(model: HagMoEModel) -> Tensor:
    """sum over layers of gamma^2 (0 without feedback)."""
    total = _full(model.embed.weight).new_zeros(())
    for layer in model.layers:
        assert isinstance(layer, DecoderLayer)
        if layer.feedback is not None:
            total = total + _full(layer.feedback.gamma).square().sum()
    return total


def _full(t: Tensor) -> Tensor:
    """A parameter as a plain tensor: FSDP2 keeps sharded DTensors outside the forward."""
    full = getattr(t, "full_tensor", None)
    return full() if full is not None else t


def objective(
    model: HagMoEModel,
    output: FullOutput,
    targets: Tensor,
    weights: LossWeights,
    valid: Tensor | None = None,
    reduce: BatchReduce = LOCAL,
) -> LossTerms:
    """Every term of MODEL.md's objective for one forward (run with training=TrainingOptions(...)) against
    targets [B, T]; valid [B, T] marks the tokens that count (default: all); `reduce` makes the
    batch statistics global when the batch is split across ranks."""
    if not output.routing:
        raise ValueError(
            "the objective needs the routing of forward_full(..., training=TrainingOptions())"
        )
    flat = None if valid is None else valid.reshape(-1)  # [B*T]
    lm = lm_loss(output.logits, targets, valid, reduce)
    per_layer = [
        _router_terms(r, model.config.num_groups, flat, weights.div_cap, reduce)
        for r in output.routing
    ]
    group, expert, div, z = (torch.stack(terms).mean() for terms in zip(*per_layer, strict=True))
    gamma = gamma_penalty(model)
    total = (
        lm
        + weights.group * group
        + weights.expert * expert
        + weights.div * div
        + weights.gamma * gamma
        + weights.z * z
    )
    return LossTerms(total=total, lm=lm, group=group, expert=expert, div=div, gamma=gamma, z=z)


def _router_terms(
    routing: LayerRouting,
    num_groups: int,
    valid: Tensor | None,
    div_cap: float,
    reduce: BatchReduce = LOCAL,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(L_group, L_expert, L_div, L_z) of one layer over its valid tokens."""
    r = _select(routing, valid)
    if r.expert_logits is None:
        raise ValueError("the objective needs forward_full(..., training=TrainingOptions())")
    zero = r.expert_logits.new_zeros(())
    if r.group_logits is None:
        balance = switch_balance(r.experts, r.expert_logits, reduce)
        return zero, balance, zero, z_loss(r.expert_logits, reduce)
    assert r.divergence is not None
    return (
        group_balance(r.group, r.group_logits, num_groups, reduce),
        expert_balance(r.group, r.experts, r.expert_logits, num_groups, reduce),
        divergence_loss(r.divergence, div_cap, reduce),
        z_loss(r.group_logits, reduce) + z_loss(r.expert_logits, reduce),
    )


def _select(routing: LayerRouting, valid: Tensor | None) -> LayerRouting:
    if valid is None:
        return routing

    def rows(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[valid]

    return LayerRouting(
        group=routing.group[valid],
        experts=routing.experts[valid],
        scores=routing.scores[valid],
        k=routing.k[valid],
        entropy=routing.entropy[valid],
        group_logits=rows(routing.group_logits),
        expert_logits=rows(routing.expert_logits),
        divergence=rows(routing.divergence),
    )


def _mean(values: Tensor, valid: Tensor | None, reduce: BatchReduce = LOCAL) -> Tensor:
    if valid is None:
        return reduce.mean_rows(values)
    return reduce.scaled(values[valid].sum(), reduce.total(valid.sum()).clamp_min(1))
