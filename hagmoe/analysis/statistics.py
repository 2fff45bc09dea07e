"""Routing statistics per layer, from routing records (docs/analysis.md defines each one).

- tokens per expert (token-expert assignments) and per group (tokens whose g* = g);
- load-balance coefficient of variation CV = std / mean of the tokens per expert (population
  std; 0 = perfectly even); the same over groups;
- K histogram and mean K, and mean K / normalised entropy / divergence against position;
- coarse-vs-fine divergence: JS(a_c[i], a_f[i]) in nats (in [0, ln 2]) and KL(a_c[i] || a_f[i])
  (the quantity the training objective's L_div pushes up, capped at DIV_CAP per token);
- co-activation C[a, b]: tokens routed to both a and b (C[a, a] = tokens routed to a), and
  P(b | a) = C[a, b] / C[a, a];
- the tokens each expert prefers: lift(t, e) = P(e | t) / P(e), with P(e | t) the share of the
  occurrences of token t routed to e and P(e) the share of all tokens routed to e.
Sections a router does not have (groups, dynamic K, entropy for the linear router; divergence
without attention rows; token lift without token texts) are None.

Legend: T tokens, K max experts per token, N experts, G groups, U distinct tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hagmoe.analysis.records import LayerRecords, RoutingRecords

DIV_CAP = 1.0  # nats: the training objective's per-token cap on KL(a_c || a_f)


@dataclass(slots=True)
class PositionCurve:
    """Mean of a per-token value in position bins [starts[b], starts[b] + width)."""

    starts: list[int]
    width: int
    mean: list[float | None]  # None: no token in the bin
    count: list[int]


@dataclass(slots=True)
class TokenLift:
    """One token's preference for one expert."""

    token: str
    count: int  # occurrences of the token
    routed: int  # of which routed to the expert
    lift: float  # P(expert | token) / P(expert)


@dataclass(slots=True)
class Divergence:
    """Coarse-vs-fine head divergence of one layer."""

    mean_js: float  # nats, in [0, ln 2]
    mean_kl: float  # nats, KL(a_c || a_f)
    share_at_cap: float  # share of tokens with KL >= DIV_CAP
    js_by_position: PositionCurve


@dataclass(slots=True)
class LayerStats:
    """Every statistic of one layer (None: not applicable to this router / input)."""

    layer: int
    expert_tokens: list[int]  # [N]
    expert_share: list[float]  # [N] share of all assignments
    load_cv: float
    busiest: int
    idlest: int
    max_over_mean: float  # load of the busiest expert / mean load
    coactivation: list[list[int]]  # [N, N]
    coactivation_given: list[list[float]]  # [N, N] P(b | a); rows of unused experts are 0
    top_pairs: list[dict[str, Any]]  # most frequent expert pairs
    group_tokens: list[int] | None = None  # [G]
    group_share: list[float] | None = None
    group_cv: float | None = None
    k_histogram: dict[str, int] | None = None  # K -> tokens
    mean_k: float | None = None
    k_by_position: PositionCurve | None = None
    mean_entropy: float | None = None
    entropy_by_position: PositionCurve | None = None
    divergence: Divergence | None = None
    top_tokens: list[list[TokenLift]] | None = None  # [N] best first


@dataclass(slots=True)
class Statistics:
    """The whole analysis, as `hagmoe analyze` writes it to statistics.json."""

    router: str
    num_layers: int
    num_experts: int
    num_groups: int
    k_range: list[int]
    tokens: int
    source: dict[str, Any]
    layers: list[LayerStats]
    not_applicable: dict[str, str] = field(default_factory=dict)  # section -> why

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def expert_counts(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """Token-expert assignments [N] of experts [T, K] (-1 = masked slot)."""
    chosen = experts[experts >= 0]
    return np.bincount(chosen, minlength=num_experts)[:num_experts]


def coefficient_of_variation(counts: np.ndarray) -> float:
    """std / mean of counts (population std); 0 when all are 0."""
    mean = float(np.mean(counts))
    return float(np.std(counts)) / mean if mean > 0 else 0.0


def position_curve(values: np.ndarray, positions: np.ndarray, num_bins: int) -> PositionCurve:
    """Mean of values [T] in at most num_bins equal-width position bins from 0 to the largest
    position (width 1 when positions are few)."""
    top = int(positions.max()) + 1 if positions.size else 1
    width = max(1, math.ceil(top / num_bins))
    starts = list(range(0, top, width))
    index = positions // width
    sums = np.bincount(index, weights=values, minlength=len(starts))
    counts = np.bincount(index, minlength=len(starts))
    mean = [float(s / c) if c else None for s, c in zip(sums, counts, strict=True)]
    return PositionCurve(starts, width, mean, [int(c) for c in counts])


def coactivation(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """C [N, N]: tokens routed to both a and b; the diagonal holds tokens routed to a."""
    onehot = np.zeros((experts.shape[0], num_experts), dtype=np.int64)  # [T, N]
    rows, slots = np.nonzero(experts >= 0)
    onehot[rows, experts[rows, slots]] = 1
    return onehot.T @ onehot


def conditional(coact: np.ndarray) -> np.ndarray:
    """P(b | a) = C[a, b] / C[a, a] [N, N] (0 for an expert no token used)."""
    diag = np.diag(coact).astype(np.float64)
    safe = np.where(diag > 0, diag, 1.0)
    return np.where(diag[:, None] > 0, coact / safe[:, None], 0.0)


def top_pairs(coact: np.ndarray, tokens: int, count: int = 10) -> list[dict[str, Any]]:
    """The `count` most frequent expert pairs a < b with their co-activation lift
    C[a, b] T / (C[a, a] C[b, b]) (1: as often as if independent)."""
    n = coact.shape[0]
    a, b = np.triu_indices(n, k=1)
    together = coact[a, b]
    order = np.argsort(-together, kind="stable")[:count]
    out = []
    for i in order:
        if together[i] == 0:
            break
        ea, eb = int(a[i]), int(b[i])
        expected = coact[ea, ea] * coact[eb, eb] / max(tokens, 1)
        out.append(
            {"experts": [ea, eb], "tokens": int(together[i]), "lift": float(together[i] / expected)}
        )
    return out


def token_lift(
    tokens: list[str], experts: np.ndarray, num_experts: int, top: int = 20, min_count: int = 5
) -> list[list[TokenLift]]:
    """Per expert, the `top` tokens (seen at least `min_count` times) with the highest lift
    P(e | t) / P(e); ties -> more occurrences, then token text. Experts no token used get []."""
    names, inverse = np.unique(np.array(tokens, dtype=object), return_inverse=True)
    occurrences = np.bincount(inverse, minlength=len(names))  # [U]
    routed = np.zeros((len(names), num_experts), dtype=np.int64)  # [U, N]
    rows, slots = np.nonzero(experts >= 0)
    np.add.at(routed, (inverse[rows], experts[rows, slots]), 1)
    p_expert = routed.sum(0) / max(len(tokens), 1)  # [N]
    frequent = np.nonzero(occurrences >= min_count)[0]
    result: list[list[TokenLift]] = []
    for e in range(num_experts):
        if p_expert[e] == 0:
            result.append([])
            continue
        lifts = routed[frequent, e] / occurrences[frequent] / p_expert[e]
        ranked = sorted(
            (i for i in range(len(frequent)) if routed[frequent[i], e] > 0),
            key=lambda i: (-lifts[i], -occurrences[frequent[i]], str(names[frequent[i]])),
        )[:top]
        result.append(
            [
                TokenLift(
                    str(names[frequent[i]]),
                    int(occurrences[frequent[i]]),
                    int(routed[frequent[i], e]),
                    float(lifts[i]),
                )
                for i in ranked
            ]
        )
    return result


def _load(layer: int, rec: LayerRecords, n: int, t: int) -> LayerStats:
    counts = expert_counts(rec.experts, n)
    coact = coactivation(rec.experts, n)
    total = max(int(counts.sum()), 1)
    mean = float(counts.mean()) if n else 0.0
    return LayerStats(
        layer=layer,
        expert_tokens=[int(c) for c in counts],
        expert_share=[float(c / total) for c in counts],
        load_cv=coefficient_of_variation(counts),
        busiest=int(np.argmax(counts)),
        idlest=int(np.argmin(counts)),
        max_over_mean=float(counts.max() / mean) if mean > 0 else 0.0,
        coactivation=coact.tolist(),
        coactivation_given=conditional(coact).tolist(),
        top_pairs=top_pairs(coact, t),
    )


def _attention_sections(
    stats: LayerStats, rec: LayerRecords, records: RoutingRecords, bins: int
) -> None:
    g = records.num_groups
    groups = np.bincount(rec.group[rec.group >= 0], minlength=g)[:g]
    stats.group_tokens = [int(c) for c in groups]
    stats.group_share = [float(c / max(int(groups.sum()), 1)) for c in groups]
    stats.group_cv = coefficient_of_variation(groups)
    lo, hi = records.k_range
    hist = np.bincount(rec.k, minlength=hi + 1)
    stats.k_histogram = {str(k): int(hist[k]) for k in range(lo, max(hi, int(rec.k.max())) + 1)}
    stats.mean_k = float(rec.k.mean())
    stats.k_by_position = position_curve(rec.k.astype(np.float64), records.positions, bins)
    stats.mean_entropy = float(rec.entropy.mean())
    stats.entropy_by_position = position_curve(rec.entropy, records.positions, bins)


def _divergence(rec: LayerRecords, positions: np.ndarray, bins: int) -> Divergence | None:
    if rec.js is None or rec.kl is None:
        return None
    return Divergence(
        mean_js=float(rec.js.mean()),
        mean_kl=float(rec.kl.mean()),
        share_at_cap=float((rec.kl >= DIV_CAP).mean()),
        js_by_position=position_curve(rec.js, positions, bins),
    )


def _not_applicable(records: RoutingRecords, stats: list[LayerStats]) -> dict[str, str]:
    why: dict[str, str] = {}
    if not records.has_groups:
        why["groups"] = "the linear router has no expert groups"
    if not records.has_dynamic_k:
        lo = records.k_range[0]
        why["k"] = f"the linear router uses a fixed top_k = {lo}: no dynamic K"
        why["entropy"] = "the linear router computes no routing entropy"
    if all(s.divergence is None for s in stats):
        why["divergence"] = (
            "the linear router has no coarse / fine heads"
            if records.router == "linear"
            else "needs the attention rows: run the model (responses do not carry them)"
        )
    if records.tokens is None:
        why["top_tokens"] = "the token texts are unknown (OpenAI bodies without logprobs)"
    return why


def compute_statistics(
    records: RoutingRecords, position_bins: int = 32, top: int = 20, min_count: int = 5
) -> Statistics:
    """Every statistic of the module docstring for each layer of `records`; position curves
    use at most `position_bins` bins, token lift the `top` tokens seen >= `min_count` times."""
    n, t = records.num_experts, records.num_tokens
    layers = []
    for i, rec in enumerate(records.layers):
        stats = _load(i, rec, n, t)
        if records.has_dynamic_k:
            _attention_sections(stats, rec, records, position_bins)
        stats.divergence = _divergence(rec, records.positions, position_bins)
        if records.tokens is not None:
            stats.top_tokens = token_lift(records.tokens, rec.experts, n, top, min_count)
        layers.append(stats)
    return Statistics(
        router=records.router,
        num_layers=len(layers),
        num_experts=n,
        num_groups=records.num_groups,
        k_range=list(records.k_range),
        tokens=t,
        source=records.source,
        layers=layers,
        not_applicable=_not_applicable(records, layers),
    )
