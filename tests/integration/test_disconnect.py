"""A client that leaves (HTTP stream, HTTP unary) aborts its request and frees its cache."""

from __future__ import annotations

import httpx
from live_server import sse_events

from loadtests.server_process import ServeProcess

LONG = {"inputs": "Hello", "parameters": {"max_new_tokens": 480, "ignore_eos": True}}
CANCELLED = 'outcome="cancelled",route="{}"'


def assert_freed(server: ServeProcess, generated_before: float) -> None:
    assert server.wait_metric("hagmoe_kv_cache_usage_ratio", 0.0) == 0.0
    assert server.wait_metric("hagmoe_num_requests_running", 0.0) == 0.0
    assert server.wait_metric("hagmoe_server_requests_in_flight", 0.0) == 0.0
    assert server.metric("hagmoe_generation_tokens_total") - generated_before < 480


def test_stream_disconnect_aborts(server: ServeProcess) -> None:
    before = server.metric("hagmoe_generation_tokens_total")
    cancelled = server.metric("hagmoe_requests_total", CANCELLED.format("/generate_stream"))
    with httpx.stream("POST", server.url + "/generate_stream", json=LONG, timeout=30) as r:
        lines = r.iter_lines()
        first = sse_events([next(lines)])
        assert first[0]["index"] == 1
        assert server.metric("hagmoe_kv_cache_usage_ratio") > 0
    assert_freed(server, before)
    label = CANCELLED.format("/generate_stream")
    assert server.wait_metric("hagmoe_requests_total", cancelled + 1, label) == cancelled + 1


def test_openai_stream_disconnect_aborts(server: ServeProcess) -> None:
    before = server.metric("hagmoe_generation_tokens_total")
    body = {
        "model": "tiny",
        "prompt": "Hello",
        "max_tokens": 480,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as r:
        next(r.iter_lines())
    assert_freed(server, before)


def test_unary_disconnect_aborts(server: ServeProcess) -> None:
    before = server.metric("hagmoe_generation_tokens_total")
    cancelled = server.metric("hagmoe_requests_total", CANCELLED.format("/generate"))
    try:
        httpx.post(server.url + "/generate", json=LONG, timeout=httpx.Timeout(30, read=0.03))
    except httpx.ReadTimeout:
        pass
    else:
        raise AssertionError("the long request finished before the client left")
    assert_freed(server, before)
    label = CANCELLED.format("/generate")
    assert server.wait_metric("hagmoe_requests_total", cancelled + 1, label) == cancelled + 1
