"""The gRPC frontend of a real server: Generation, health, reflection, statuses, cancel."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from loadtests.server_process import ServeProcess
from server._generated import generation_pb2 as pb
from server._generated import generation_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def channel(server: ServeProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.GenerationStub:
    return pb_grpc.GenerationStub(channel)


def request(text: str = "Hello", **params: object) -> pb.GenerateRequest:
    defaults: dict[str, object] = {"max_new_tokens": 5, "ignore_eos": True}
    return pb.GenerateRequest(text=text, parameters=pb.SamplingParameters(**{**defaults, **params}))


def test_generate_with_routing_and_logprobs(stub: pb_grpc.GenerationStub) -> None:
    out, call = stub.Generate.with_call(
        request(return_routing=True, top_logprobs=2),
        metadata=(("x-request-id", "grpc-42"),),
        timeout=30,
    )
    assert ("x-request-id", "grpc-42") in call.initial_metadata()
    assert out.finish_reason == pb.FINISH_REASON_LENGTH
    assert out.usage.prompt_tokens == 5 and out.usage.completion_tokens == len(out.tokens) == 5
    assert out.text == "".join(t.text for t in out.tokens)
    for token in out.tokens:
        assert token.HasField("logprob") and len(token.top_logprobs) == 2
        assert [r.layer for r in token.routing] == [0, 1]
        assert all(r.k == len(r.experts) == len(r.scores) for r in token.routing)


def test_stream_matches_unary_and_token_prompt(stub: pb_grpc.GenerationStub) -> None:
    unary = stub.Generate(request(), timeout=30)
    messages = list(stub.GenerateStream(request(), timeout=30))
    assert "".join(m.text for m in messages) == unary.text
    assert [m.finished for m in messages] == [False] * (len(messages) - 1) + [True]
    assert messages[-1].usage.completion_tokens == 5
    ids = pb.GenerateRequest(
        token_ids=pb.TokenIds(ids=list(b"Hello")),
        parameters=pb.SamplingParameters(max_new_tokens=5, ignore_eos=True),
    )
    assert stub.Generate(ids, timeout=30).text == unary.text


def test_tokenize_and_model_info(stub: pb_grpc.GenerationStub) -> None:
    tokens = stub.Tokenize(pb.TokenizeRequest(text="ab"), timeout=10)
    assert list(tokens.ids) == [97, 98] and list(tokens.tokens) == ["a", "b"]
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.model_id == "tiny" and info.max_total_tokens == 512 and info.num_layers == 2


@pytest.mark.parametrize(
    ("req", "needle"),
    [
        (request(temperature=-1.0), "temperature"),
        (request(max_new_tokens=600), "512"),
        (pb.GenerateRequest(), "prompt"),
        (request(stop_token_ids=[9999]), "9999"),
    ],
)
def test_invalid_argument(
    stub: pb_grpc.GenerationStub, req: pb.GenerateRequest, needle: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(req, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (info.value.details() or "")


def test_deadline_exceeded_frees_the_cache(
    stub: pb_grpc.GenerationStub, server: ServeProcess
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(request(max_new_tokens=480), timeout=0.03)  # 480 tokens: ~0.24 s
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert server.wait_metric("hagmoe_kv_cache_usage_ratio", 0.0) == 0.0
    assert server.wait_metric("hagmoe_num_requests_running", 0.0) == 0.0


def test_cancelled_stream_frees_the_cache(
    stub: pb_grpc.GenerationStub, server: ServeProcess
) -> None:
    generated = server.metric("hagmoe_generation_tokens_total")
    label = 'outcome="cancelled",route="grpc.GenerateStream"'
    cancelled = server.metric("hagmoe_requests_total", label)
    successes = server.metric("hagmoe_requests_total", label.replace("cancelled", "success"))
    call = stub.GenerateStream(request(max_new_tokens=480), timeout=30)
    first = next(call)
    assert first.tokens
    assert server.metric("hagmoe_kv_cache_usage_ratio") > 0
    call.cancel()
    assert server.wait_metric("hagmoe_kv_cache_usage_ratio", 0.0) == 0.0
    assert server.wait_metric("hagmoe_num_requests_running", 0.0) == 0.0
    assert server.metric("hagmoe_generation_tokens_total") - generated < 480
    assert server.wait_metric("hagmoe_requests_total", cancelled + 1, label) == cancelled + 1
    success_label = label.replace("cancelled", "success")
    assert server.metric("hagmoe_requests_total", success_label) == successes


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "hagmoe.v1.Generation"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = refl.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"hagmoe.v1.Generation", "grpc.health.v1.Health"} <= names
