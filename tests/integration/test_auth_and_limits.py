"""API keys, overload (429 / RESOURCE_EXHAUSTED) and body size on a server with
--api-key, --api-key-file, --max-concurrent-requests 1, --max-queue 0 and --max-body-bytes 2048."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from live_server import KEYS

from loadtests.server_process import ServeProcess
from server._generated import generation_pb2 as pb
from server._generated import generation_pb2_grpc as pb_grpc

SHORT = {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}
LONG = {"inputs": "Hi", "parameters": {"max_new_tokens": 480, "ignore_eos": True}}


@pytest.fixture(scope="module")
def stub(strict: ServeProcess) -> Iterator[pb_grpc.GenerationStub]:
    with grpc.insecure_channel(strict.grpc_target) as channel:
        yield pb_grpc.GenerationStub(channel)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_rest_keys(strict: ServeProcess) -> None:
    missing = httpx.post(strict.url + "/generate", json=SHORT)
    assert missing.status_code == 401 and missing.json()["error_type"] == "unauthorized"
    wrong = httpx.post(strict.url + "/generate", json=SHORT, headers=bearer("nope"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid API key"
    for key in KEYS:
        ok = httpx.post(strict.url + "/generate", json=SHORT, headers=bearer(key), timeout=30)
        assert ok.status_code == 200, ok.text
    v1 = httpx.get(strict.url + "/v1/models")
    assert v1.status_code == 401 and v1.json()["error"]["type"] == "authentication_error"
    assert httpx.get(strict.url + "/info").status_code == 401
    for open_path in ("/health", "/ready", "/metrics"):
        assert httpx.get(strict.url + open_path).status_code == 200


def test_openai_client_with_and_without_key(strict: ServeProcess) -> None:
    good = openai.OpenAI(base_url=strict.url + "/v1", api_key=KEYS[0], max_retries=0)
    assert good.models.list().data
    bad = openai.OpenAI(base_url=strict.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_grpc_keys(strict: ServeProcess, stub: pb_grpc.GenerationStub) -> None:
    req = pb.TokenizeRequest(text="a")
    for metadata in ((), (("authorization", "Bearer nope"),)):
        with pytest.raises(grpc.RpcError) as info:
            stub.Tokenize(req, metadata=metadata, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as stream_info:
        list(stub.GenerateStream(pb.GenerateRequest(text="a"), timeout=5))
    assert stream_info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    ok = stub.Tokenize(req, metadata=(("authorization", f"Bearer {KEYS[1]}"),), timeout=5)
    assert list(ok.ids) == [97]
    with grpc.insecure_channel(strict.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_body_too_large_is_413(strict: ServeProcess, auth: dict[str, str]) -> None:
    big = {"inputs": "x" * 4096}
    r = httpx.post(strict.url + "/generate", json=big, headers=auth)
    assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"
    assert "2048" in r.json()["error"]
    v1 = httpx.post(
        strict.url + "/v1/completions", json={"model": "m", "prompt": "x" * 4096}, headers=auth
    )
    assert v1.status_code == 413 and "error" in v1.json() and "type" in v1.json()["error"]
    chunked = httpx.post(
        strict.url + "/generate", content=iter([b"{", b" " * 3000, b"}"]), headers=auth
    )
    assert chunked.status_code == 413


def test_burst_beyond_the_limits_is_429(
    strict: ServeProcess, stub: pb_grpc.GenerationStub, auth: dict[str, str]
) -> None:
    result: dict[str, httpx.Response] = {}
    running = threading.Thread(
        target=lambda: result.setdefault(
            "long", httpx.post(strict.url + "/generate", json=LONG, headers=auth, timeout=60)
        )
    )
    running.start()
    try:
        while strict.metric("hagmoe_server_requests_in_flight") < 1:
            assert running.is_alive(), result
        burst = [httpx.post(strict.url + "/generate", json=SHORT, headers=auth) for _ in range(3)]
        assert [r.status_code for r in burst] == [429] * 3
        assert all(int(r.headers["retry-after"]) >= 1 for r in burst)
        assert burst[0].json()["error_type"] == "overloaded"
        md = (("authorization", f"Bearer {KEYS[0]}"),)
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(pb.GenerateRequest(text="a"), metadata=md, timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailing = dict(info.value.trailing_metadata() or ())
        assert int(trailing["retry-after"]) >= 1
    finally:
        running.join()
    assert result["long"].status_code == 200
    assert strict.metric("hagmoe_requests_total", 'outcome="overloaded",route="/generate"') == 3
