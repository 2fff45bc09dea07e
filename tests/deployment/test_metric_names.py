"""Every hagmoe_* series the dashboard, the alerts and the autoscaler read is one a real
server exposes on /metrics, with the labels they match on."""

from __future__ import annotations

import json
from typing import Any

import httpx
from deploy_support import (
    DASHBOARD,
    KUBERNETES,
    PROMETHEUS,
    alert_expressions,
    dashboard_expressions,
    label_matchers,
    load_yaml,
    metric_names,
)
from prometheus_client.parser import text_string_to_metric_families

from loadtests.server_process import ServeProcess

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}


def exposed(server: ServeProcess) -> dict[str, set[str]]:
    """Sample name (with _bucket/_sum/_count/_total) -> the label names it carries."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def autoscaler_metrics() -> set[str]:
    hpa = load_yaml(KUBERNETES / "hpa.yaml")
    names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    adapter = load_yaml(PROMETHEUS / "prometheus-adapter-values.yaml")
    names |= metric_names(rule["seriesQuery"] for rule in adapter["rules"]["custom"])
    return names


def test_everything_read_is_exposed(live_server: ServeProcess) -> None:
    samples = exposed(live_server)
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    sources = {
        "dashboard": dashboard_expressions(board),
        "alerts": alert_expressions(),
    }
    for source, exprs in sources.items():
        names = metric_names(exprs)
        assert names, source
        missing = names - samples.keys()
        assert not missing, f"{source} reads {sorted(missing)}, which /metrics does not expose"
        for name, label in label_matchers(exprs):
            assert label in samples[name] | TARGET_LABELS, f"{source}: {name} has no {label}"
    missing = autoscaler_metrics() - samples.keys()
    assert not missing, f"the autoscaler reads {missing}"


def test_the_names_in_the_architecture_are_all_exposed(live_server: ServeProcess) -> None:
    samples = exposed(live_server)
    for name in (
        "hagmoe_requests_total",
        "hagmoe_time_to_first_token_seconds_bucket",
        "hagmoe_inter_token_latency_seconds_count",
        "hagmoe_queue_time_seconds_sum",
        "hagmoe_kv_cache_usage_ratio",
        "hagmoe_expert_tokens_total",
        "hagmoe_group_tokens_total",
        "hagmoe_active_experts_bucket",
        "hagmoe_routing_entropy_bucket",
    ):
        assert name in samples, name
    assert {"route", "outcome"} <= samples["hagmoe_requests_total"]
    assert {"layer", "expert"} <= samples["hagmoe_expert_tokens_total"]
