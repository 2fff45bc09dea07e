"""Metrics: names, a registry per server, the step listener and bulk histograms."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from hagmoe.engine.client import ModelInfo
from hagmoe.engine.engine_core import StepStats
from server.metrics import Metrics
from server.routing_metrics import BulkHistogram

INFO = ModelInfo(
    "m", "hagmoe", "attention", 320, 2, 4, 2, 3, 512, 16, 64, 100, "cpu", "float32", 8, 64
)


@dataclass
class FakeRouting:
    expert_tokens: list[list[int]] = field(default_factory=lambda: [[1, 0, 2, 0], [0, 3, 0, 0]])
    group_tokens: list[list[int]] = field(default_factory=lambda: [[2, 1], [3, 0]])
    k: list[int] = field(default_factory=lambda: [1, 2, 1, 3, 3, 2])
    entropy: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 0.25, 0.75, 0.9])


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels or {})


def test_two_servers_have_separate_registries() -> None:
    first, second = Metrics(INFO), Metrics(INFO)
    first.requests.labels(route="/generate", outcome="success").inc()
    labels = {"route": "/generate", "outcome": "success"}
    assert sample(first, "hagmoe_requests_total", labels) == 1
    assert sample(second, "hagmoe_requests_total", labels) is None


def test_step_listener_feeds_engine_metrics() -> None:
    metrics = Metrics(INFO)
    stats = StepStats(7, 2, 1, 1, 10, 0, 0.25, 0.01, FakeRouting())  # type: ignore[arg-type]
    metrics.on_step(stats, [])
    metrics.on_step(StepStats(prefix_cache_queries=20, prefix_cache_hits=16), [])
    assert sample(metrics, "hagmoe_num_requests_running") == 0
    assert sample(metrics, "hagmoe_kv_cache_usage_ratio") == 0.0
    assert sample(metrics, "hagmoe_preemptions_total") == 1
    assert sample(metrics, "hagmoe_prefix_cache_queries_total") == 30
    assert sample(metrics, "hagmoe_prefix_cache_hits_total") == 16
    assert sample(metrics, "hagmoe_step_tokens_count") == 1
    assert sample(metrics, "hagmoe_step_tokens_sum") == 7
    assert sample(metrics, "hagmoe_expert_tokens_total", {"layer": "0", "expert": "2"}) == 2
    assert sample(metrics, "hagmoe_group_tokens_total", {"layer": "1", "group": "0"}) == 3
    assert sample(metrics, "hagmoe_active_experts_count") == 6
    assert sample(metrics, "hagmoe_active_experts_bucket", {"le": "1.0"}) == 2
    assert sample(metrics, "hagmoe_active_experts_bucket", {"le": "2.0"}) == 4
    assert sample(metrics, "hagmoe_routing_entropy_sum") == pytest.approx(3.4)
    text = metrics.render().decode()
    assert "# TYPE hagmoe_active_experts histogram" in text
    assert re.search(r"^# TYPE hagmoe_expert_tokens(_total)? counter$", text, re.M)


def test_bulk_histogram_agrees_with_prometheus() -> None:
    bounds = (0.1, 0.5, 1.0)
    values = [0.05, 0.1, 0.2, 0.5, 0.7, 1.0, 3.0]
    registry = CollectorRegistry()
    reference = Histogram("ref", "r", buckets=bounds, registry=registry)
    for v in values:
        reference.observe(v)
    bulk = BulkHistogram(bounds)
    bulk.observe_many(values[:3])
    bulk.observe_many(values[3:])
    family = bulk.family("ref", "r")
    ours = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    expected = {
        (s.name, s.labels.get("le")): s.value
        for m in registry.collect()
        for s in m.samples
        if not s.name.endswith("_created")
    }
    assert ours == pytest.approx(expected)
    assert b"ref_bucket" in generate_latest(registry)


def test_the_process_and_its_collector_are_exposed() -> None:
    text = generate_latest(Metrics(INFO).registry).decode()
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info"):
        assert f"\n{name}" in text, name
    assert 'python_gc_collections_total{generation="2"}' in text
