"""The MoE view of /metrics: expert and group token counts, K and entropy histograms.

Engine steps report thousands of values at once, so they are bucketed with numpy and exported
by a custom collector instead of one prometheus_client call per value."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class RoutingStatsLike(Protocol):
    """The shape of the engine's per-step RoutingStats."""

    expert_tokens: list[list[int]]
    group_tokens: list[list[int]]
    k: list[int]
    entropy: list[float]


ENTROPY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


class BulkHistogram:
    """A histogram fed whole arrays at a time; bounds are the `le` upper bounds."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = np.asarray(sorted(bounds), dtype=np.float64)
        self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)
        self.total = 0.0

    def observe_many(self, values: Sequence[float] | np.ndarray) -> None:
        array = np.asarray(values, dtype=np.float64).ravel()
        if array.size == 0:
            return
        index = np.searchsorted(self.bounds, array, side="left")
        self.counts += np.bincount(index, minlength=len(self.counts))
        self.total += float(array.sum())

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative = np.cumsum(self.counts)
        buckets = [(_bound(b), float(c)) for b, c in zip(self.bounds, cumulative, strict=False)]
        buckets.append(("+Inf", float(cumulative[-1])))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.total)


def _bound(b: float) -> str:
    return str(floatToGoString(float(b)))


class RoutingCollector(Collector):
    """hagmoe_expert_tokens_total, hagmoe_group_tokens_total, hagmoe_active_experts and
    hagmoe_routing_entropy, accumulated from each engine step's RoutingStats."""

    def __init__(self, num_layers: int, num_experts: int, num_groups: int, k_max: int) -> None:
        self._lock = threading.Lock()
        self.experts = np.zeros((num_layers, num_experts), dtype=np.int64)
        self.groups = np.zeros((num_layers, num_groups), dtype=np.int64)
        self.k = BulkHistogram(range(1, max(k_max, 1) + 1))
        self.entropy = BulkHistogram(ENTROPY_BUCKETS)

    def add(self, stats: RoutingStatsLike) -> None:
        experts = np.asarray(stats.expert_tokens, dtype=np.int64)
        groups = np.asarray(stats.group_tokens, dtype=np.int64)
        with self._lock:
            if experts.shape == self.experts.shape:
                self.experts += experts
            if groups.size and groups.shape == self.groups.shape:
                self.groups += groups
            self.k.observe_many(stats.k)
            self.entropy.observe_many(stats.entropy)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield _per_layer(
                "hagmoe_expert_tokens",
                "Tokens routed to each expert (token-expert assignments)",
                "expert",
                self.experts,
            )
            yield _per_layer(
                "hagmoe_group_tokens",
                "Tokens routed to each expert group (attention router only)",
                "group",
                self.groups,
            )
            yield self.k.family("hagmoe_active_experts", "Experts used per token and layer (K)")
            yield self.entropy.family(
                "hagmoe_routing_entropy", "Normalised entropy of the group routing per token"
            )


def _per_layer(name: str, doc: str, label: str, counts: np.ndarray) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["layer", label])
    for layer, row in enumerate(counts.tolist()):
        for index, value in enumerate(row):
            family.add_metric([str(layer), str(index)], float(value))
    return family
