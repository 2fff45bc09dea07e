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
