"""deployment/grafana/dashboards/hagmoe.json: well-formed for Grafana and showing what an
operator needs, including the MoE routing view."""

from __future__ import annotations

import json
from typing import Any

from deploy_support import DASHBOARD, GRAFANA, dashboard_expressions, load_yaml, metric_names


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(all_panels(panel.get("panels", [])))
    return found


def panels_reading(name: str) -> list[dict[str, Any]]:
    return [
        p
        for p in all_panels(dashboard()["panels"])
        if any(name in t.get("expr", "") for t in p.get("targets", []))
    ]


def test_panels_are_well_formed() -> None:
    board = dashboard()
    panels = all_panels(board["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    assert board["uid"] and board["title"]


def test_datasource_variable_defaults_to_the_provisioned_prometheus() -> None:
    provisioned = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    uid = provisioned["datasources"][0]["uid"]
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["current"]["value"] == uid
    for name in ("instance", "layer"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"


def test_the_operators_metrics_are_all_shown() -> None:
    shown = metric_names(dashboard_expressions(dashboard()))
    wanted = {
        "hagmoe_requests_total",  # request rate and errors
        "hagmoe_time_to_first_token_seconds_bucket",
        "hagmoe_inter_token_latency_seconds_bucket",
        "hagmoe_request_duration_seconds_bucket",
        "hagmoe_queue_time_seconds_bucket",
        "hagmoe_prompt_tokens_total",  # throughput
        "hagmoe_generation_tokens_total",
        "hagmoe_num_requests_running",
        "hagmoe_num_requests_waiting",
        "hagmoe_server_queue_requests",
        "hagmoe_kv_cache_usage_ratio",
        "hagmoe_prefix_cache_hits_total",
        "hagmoe_prefix_cache_queries_total",
        "hagmoe_preemptions_total",
        "hagmoe_expert_tokens_total",
        "hagmoe_group_tokens_total",
        "hagmoe_active_experts_bucket",
        "hagmoe_routing_entropy_bucket",
    }
    assert wanted <= shown, wanted - shown


def test_latency_panels_show_quantiles() -> None:
    for name in ("hagmoe_time_to_first_token_seconds", "hagmoe_inter_token_latency_seconds"):
        (panel,) = [p for p in panels_reading(name + "_bucket") if p["type"] == "timeseries"]
        exprs = [t["expr"] for t in panel["targets"]]
        for q in ("0.5", "0.9", "0.99"):
            assert any(e.startswith(f"histogram_quantile({q},") for e in exprs), (name, q)
        assert panel["fieldConfig"]["defaults"]["unit"] == "s"


def test_moe_heatmaps() -> None:
    (experts,) = panels_reading("hagmoe_expert_tokens_total{")[:1]
    assert experts["type"] == "heatmap"
    assert experts["repeat"] == "layer", "one heatmap per layer"
    assert experts["targets"][0]["format"] == "heatmap"
    assert experts["targets"][0]["legendFormat"] == "{{expert}}"
    for name in ("hagmoe_active_experts_bucket", "hagmoe_routing_entropy_bucket"):
        (panel,) = [p for p in panels_reading(name) if p["type"] == "heatmap"]
        target = panel["targets"][0]
        assert target["format"] == "heatmap" and target["legendFormat"] == "{{le}}"
        assert panel["options"]["calculate"] is False, "Prometheus buckets, not recomputed"
    group_panels = panels_reading("hagmoe_group_tokens_total")
    assert group_panels and all(p["type"] == "timeseries" for p in group_panels)
