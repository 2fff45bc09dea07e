"""Prometheus metrics of one server, in its own registry (names fixed by ARCHITECTURE.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from hagmoe.engine.client import ModelInfo
from hagmoe.engine.outputs import RequestOutput
from server.admission import Admission
from server.routing_metrics import RoutingCollector

if TYPE_CHECKING:
    from hagmoe.engine.engine_core import StepStats


LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip
TOKEN_BUCKETS = tuple(float(2**i) for i in range(14))


class Metrics:
    """Request metrics (fed by the service) and engine metrics (fed by the step listener)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, info: ModelInfo) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total
        GCCollector(registry=r)  # python_gc_collections_total{generation}
        PlatformCollector(registry=r)  # python_info
        self.requests = Counter(
            "hagmoe_requests", "Requests by route and outcome", ["route", "outcome"], registry=r
        )
        self.request_duration = _hist("hagmoe_request_duration_seconds", "Request latency", r)
        self.ttft = _hist("hagmoe_time_to_first_token_seconds", "Time to the first token", r)
        self.itl = _hist("hagmoe_inter_token_latency_seconds", "Time between streamed tokens", r)
        self.queue_time = _hist("hagmoe_queue_time_seconds", "Time queued before the first step", r)
        self.prompt_tokens = Counter("hagmoe_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("hagmoe_generation_tokens", "Tokens generated", registry=r)
        self.running = Gauge(
            "hagmoe_num_requests_running", "Requests in the engine's batch", registry=r
        )
        self.waiting = Gauge(
            "hagmoe_num_requests_waiting", "Requests the engine queues", registry=r
        )
        self.kv_usage = Gauge(
            "hagmoe_kv_cache_usage_ratio", "KV cache blocks in use (0..1)", registry=r
        )
        self.prefix_queries = Counter(
            "hagmoe_prefix_cache_queries", "Tokens looked up in the prefix cache", registry=r
        )
        self.prefix_hits = Counter(
            "hagmoe_prefix_cache_hits", "Tokens found in the prefix cache", registry=r
        )
        self.preemptions = Counter("hagmoe_preemptions", "Requests preempted", registry=r)
        self.step_tokens = Histogram(
            "hagmoe_step_tokens", "Tokens per engine step", buckets=TOKEN_BUCKETS, registry=r
        )
        self.step_duration = _hist("hagmoe_step_duration_seconds", "Engine step duration", r)
        self.server_queue = Gauge(
            "hagmoe_server_queue_requests", "Requests waiting for a server slot", registry=r
        )
        self.in_flight = Gauge(
            "hagmoe_server_requests_in_flight", "Generation requests holding a slot", registry=r
        )
        self.routing = RoutingCollector(
            info.num_layers, info.num_experts, info.num_groups, info.max_experts_per_token
        )
        r.register(self.routing)

    def watch_admission(self, admission: Admission) -> None:
        """The server queue and in-flight gauges read the admission gate's own counts."""
        self.server_queue.set_function(lambda: admission.waiting)
        self.in_flight.set_function(lambda: admission.running)

    def on_step(self, stats: StepStats, outputs: list[RequestOutput]) -> None:
        """The engine's step listener (engine thread): cheap gauge sets and bulk adds only."""
        self.running.set(stats.num_running)
        self.waiting.set(stats.num_waiting)
        self.kv_usage.set(stats.kv_cache_usage)
        if stats.num_preempted:
            self.preemptions.inc(stats.num_preempted)
        if stats.prefix_cache_queries:
            self.prefix_queries.inc(stats.prefix_cache_queries)
            self.prefix_hits.inc(stats.prefix_cache_hits)
        if stats.num_batched_tokens:
            self.step_tokens.observe(stats.num_batched_tokens)
            self.step_duration.observe(stats.duration)
        if stats.routing is not None:
            self.routing.add(stats.routing)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _hist(name: str, doc: str, registry: CollectorRegistry) -> Histogram:
    return Histogram(name, doc, buckets=LATENCY_BUCKETS, registry=registry)
