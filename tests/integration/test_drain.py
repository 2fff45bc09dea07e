"""SIGTERM: readiness and gRPC health go NOT_SERVING, new requests get 503 / UNAVAILABLE,
the request in flight completes, and the process exits 0."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from live_server import sse_events

from loadtests.server_process import ServeProcess
from server._generated import generation_pb2 as pb
from server._generated import generation_pb2_grpc as pb_grpc

LONG = {"inputs": "Hello", "parameters": {"max_new_tokens": 480, "ignore_eos": True}}


def test_sigterm_drains_then_exits_zero(draining: ServeProcess) -> None:
    server = draining
    result: dict[str, httpx.Response] = {}
    worker = threading.Thread(
        target=lambda: result.setdefault(
            "long", httpx.post(server.url + "/generate", json=LONG, timeout=60)
        )
    )
    worker.start()
    deadline = time.monotonic() + 10
    while server.metric("hagmoe_server_requests_in_flight") < 1:
        assert time.monotonic() < deadline and worker.is_alive()
    with grpc.insecure_channel(server.grpc_target) as channel:
        server.signal(signal.SIGTERM)
        ready = httpx.get(server.url + "/ready")
        for _ in range(50):
            if ready.status_code == 503:
                break
            time.sleep(0.02)
            ready = httpx.get(server.url + "/ready")
        assert ready.status_code == 503 and ready.json()["error_type"] == "unavailable"
        refused = httpx.post(server.url + "/generate", json={"inputs": "x"})
        assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
        assert httpx.get(server.url + "/health").status_code == 200
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="hagmoe.v1.Generation"), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GenerationStub(channel).Generate(pb.GenerateRequest(text="x"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert worker.is_alive(), "the in-flight request ended before the checks"
    worker.join(timeout=30)
    long = result["long"]
    assert long.status_code == 200, long.text
    assert long.json()["generated_text"] and "draining" in server.log()
    assert server.proc.wait(timeout=30) == 0
    assert '"msg": "stopped"' in server.log()


def _read_stream(url: str, body: dict[str, object], out: dict[str, list[str]], key: str) -> None:
    with httpx.stream("POST", url, json=body, timeout=30) as r:
        out[key] = [line for line in r.iter_lines() if line]


def test_drain_timeout_ends_streams_with_an_error(cut: ServeProcess) -> None:
    """Streams still running when the drain timeout expires end with an error event in their
    route's shape (then [DONE] on /v1), gRPC with UNAVAILABLE; each is counted once."""
    server = cut
    lines: dict[str, list[str]] = {}
    v1 = {"prompt": "Hello", "max_tokens": 480, "ignore_eos": True, "stream": True}
    workers = [
        threading.Thread(
            target=_read_stream, args=(server.url + "/generate_stream", LONG, lines, "tgi")
        ),
        threading.Thread(
            target=_read_stream, args=(server.url + "/v1/completions", v1, lines, "v1")
        ),
    ]
    for worker in workers:
        worker.start()
    with grpc.insecure_channel(server.grpc_target) as channel:
        params = pb.SamplingParameters(max_new_tokens=480, ignore_eos=True)
        call = pb_grpc.GenerationStub(channel).GenerateStream(
            pb.GenerateRequest(text="Hello", parameters=params), timeout=30
        )
        assert next(call).tokens
        deadline = time.monotonic() + 10
        while server.metric("hagmoe_server_requests_in_flight") < 3:
            assert time.monotonic() < deadline
        server.signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as info:
            for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "drain timeout" in (info.value.details() or "")
    for worker in workers:
        worker.join(timeout=30)
    tgi, openai = sse_events(lines["tgi"]), sse_events(lines["v1"])
    assert tgi[-1]["error_type"] == "unavailable" and "drain timeout" in tgi[-1]["error"]
    assert openai[-1] == "[DONE]" and openai[-2]["error"]["type"] == "service_unavailable"
    assert server.proc.wait(timeout=30) == 0
    log = server.log()
    for path in ("/generate_stream", "/v1/completions"):
        assert log.count(f'"path": "{path}"') == 1, log[-3000:]
    assert log.count('"method": "grpc.GenerateStream"') == 1
