"""Tokenizer, info, health, readiness, metrics and OpenAPI routes of a real server."""

from __future__ import annotations

import re

import httpx

from loadtests.server_process import ServeProcess

ARCHITECTURE_METRICS = (
    "hagmoe_requests_total",
    "hagmoe_request_duration_seconds",
    "hagmoe_time_to_first_token_seconds",
    "hagmoe_inter_token_latency_seconds",
    "hagmoe_queue_time_seconds",
    "hagmoe_prompt_tokens_total",
    "hagmoe_generation_tokens_total",
    "hagmoe_num_requests_running",
    "hagmoe_num_requests_waiting",
    "hagmoe_kv_cache_usage_ratio",
    "hagmoe_prefix_cache_queries_total",
    "hagmoe_prefix_cache_hits_total",
    "hagmoe_preemptions_total",
    "hagmoe_step_tokens",
    "hagmoe_step_duration_seconds",
    "hagmoe_expert_tokens_total",
    "hagmoe_group_tokens_total",
    "hagmoe_active_experts",
    "hagmoe_routing_entropy",
)


def test_tokenize_detokenize_round_trip(server: ServeProcess) -> None:
    r = httpx.post(server.url + "/tokenize", json={"inputs": "héllo"})
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == len(body["token_ids"]) == 6 and body["max_input_tokens"] == 511
    back = httpx.post(server.url + "/detokenize", json={"token_ids": body["token_ids"]})
    assert back.json() == {"text": "héllo"}
    bad = httpx.post(server.url + "/detokenize", json={"token_ids": [100000]})
    assert bad.status_code == 422 and "100000" in bad.json()["error"]


def test_info(server: ServeProcess) -> None:
    info = httpx.get(server.url + "/info").json()
    assert info["model_id"] == "tiny" and info["router"] == "attention"
    assert info["max_total_tokens"] == 512 and info["max_input_tokens"] == 511
    assert info["num_layers"] == 2 and info["num_experts"] == 8 and info["num_blocks"] == 256
    assert info["chat_template"] == "fallback"


def test_health_and_ready(server: ServeProcess) -> None:
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert httpx.get(server.url + "/ready").json() == {"status": "ready"}


def test_unknown_route_is_404(server: ServeProcess) -> None:
    assert httpx.get(server.url + "/nowhere").status_code == 404


def test_openapi_documents_every_field(server: ServeProcess) -> None:
    schema = httpx.get(server.url + "/openapi.json").json()
    for path in ("/generate", "/generate_stream", "/", "/v1/completions", "/v1/chat/completions"):
        assert "post" in schema["paths"][path]
    schemas = schema["components"]["schemas"]
    ours = {k: v for k, v in schemas.items() if "ValidationError" not in k}
    assert {"TgiParameters", "CompletionRequest", "ChatCompletionRequest", "ErrorBody"} <= set(ours)
    undocumented = [
        f"{name}.{field}"
        for name, model in ours.items()
        for field, spec in model.get("properties", {}).items()
        if "description" not in spec
    ]
    assert not undocumented


def test_metrics_count_traffic(server: ServeProcess) -> None:
    before = server.metric("hagmoe_requests_total", 'outcome="success",route="/generate"')
    generated = server.metric("hagmoe_generation_tokens_total")
    body = {"inputs": "count me", "parameters": {"max_new_tokens": 4, "ignore_eos": True}}
    assert httpx.post(server.url + "/generate", json=body, timeout=30).status_code == 200
    text = httpx.get(server.url + "/metrics").text
    for name in ARCHITECTURE_METRICS:
        assert f"\n{name}" in text, name
    after = server.metric("hagmoe_requests_total", 'outcome="success",route="/generate"')
    assert after == before + 1
    assert server.metric("hagmoe_generation_tokens_total") == generated + 4
    assert server.metric("hagmoe_step_tokens_count") >= 4
    assert server.metric("hagmoe_active_experts_count") > 0
    layer0 = re.findall(r'^hagmoe_expert_tokens_total\{[^}]*layer="0"[^}]*\} (\S+)$', text, re.M)
    experts = sum(float(v) for v in layer0)
    assert len(layer0) == 8
    assert experts >= server.metric("hagmoe_generation_tokens_total")
    assert server.metric("hagmoe_prefix_cache_queries_total") > 0
