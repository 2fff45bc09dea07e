"""gRPC fuzzing: random bytes and odd-but-valid messages to every method only ever answer
OK, INVALID_ARGUMENT, UNAUTHENTICATED or RESOURCE_EXHAUSTED, never UNKNOWN or INTERNAL."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from loadtests.server_process import ServeProcess
from server._generated import generation_pb2 as pb

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
SERVICE = "/hagmoe.v1.Generation/"
UNARY = ("Generate", "Tokenize", "GetModelInfo")
BUDGET_S = 15.0


def _identity(raw: bytes) -> bytes:
    return raw


def _code(method: Callable[[bytes], Any], raw: bytes) -> grpc.StatusCode:
    try:
        result = method(raw)
        if not isinstance(result, bytes | pb.GenerateResponse | pb.TokenizeResponse):
            for _ in result:  # a stream: read it to its status
                pass
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def random_bytes(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 64))
    if kind == 1:  # a text field (1) holding bytes that are not UTF-8
        payload = rng.randbytes(rng.randrange(1, 16)) + b"\xff\xfe"
        return b"\x0a" + bytes([len(payload)]) + payload
    if kind == 2:  # a length prefix past the end
        return b"\x0a\x7f" + rng.randbytes(3)
    return bytes([rng.randrange(256)]) * rng.randrange(1, 8)


ODD_FLOATS = (math.nan, math.inf, -math.inf, -1.0, 0.0, 1e308, -1e-308, 5e-324)
ODD_UINTS = (0, 1, 2**31 - 1, 2**32 - 1)


def odd_request(rng: random.Random) -> pb.GenerateRequest:
    p = pb.SamplingParameters()
    for name in ("temperature", "top_p", "typical_p", "repetition_penalty"):
        if rng.random() < 0.5:
            setattr(p, name, rng.choice(ODD_FLOATS))
    for name in ("frequency_penalty", "presence_penalty"):
        if rng.random() < 0.3:
            setattr(p, name, rng.choice(ODD_FLOATS))
    for name in ("max_new_tokens", "min_new_tokens", "top_k", "top_logprobs"):
        if rng.random() < 0.5:
            setattr(p, name, rng.choice(ODD_UINTS))
    if rng.random() < 0.3:
        p.seed = rng.choice((0, 2**63, 2**64 - 1))
    if rng.random() < 0.3:
        p.stop_token_ids.extend(rng.choice(ODD_UINTS) for _ in range(3))
    if rng.random() < 0.2:
        p.stop.append(rng.choice(("", "\x00", "a" * 1000)))
    p.ignore_eos, p.return_routing, p.logprobs = (rng.random() < 0.5 for _ in range(3))
    request = pb.GenerateRequest(parameters=p)
    choice = rng.randrange(4)
    if choice == 0:
        request.text = rng.choice(("", "\x00", "Hello", "é" * 600))
    elif choice == 1:
        request.token_ids.ids.extend(rng.choice(ODD_UINTS) for _ in range(rng.randrange(0, 4)))
    elif choice == 2:
        request.token_ids.ids.extend([97] * 600)
    return request


def _methods(channel: grpc.Channel) -> dict[str, Callable[[bytes], Any]]:
    methods: dict[str, Callable[[bytes], Any]] = {}
    codec = {"request_serializer": _identity, "response_deserializer": _identity}
    for name in UNARY:
        unary = channel.unary_unary(SERVICE + name, **codec)
        methods[name] = lambda raw, u=unary: u(raw, timeout=10)
    stream = channel.unary_stream(SERVICE + "GenerateStream", **codec)
    methods["GenerateStream"] = lambda raw: stream(raw, timeout=10)
    return methods


@pytest.fixture(scope="module")
def channel(server: ServeProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch


def test_random_bytes_and_odd_messages(channel: grpc.Channel) -> None:
    rng = random.Random(20261204)
    methods = _methods(channel)
    seen: dict[str, set[grpc.StatusCode]] = {}
    deadline = time.monotonic() + BUDGET_S
    rounds = 0
    while time.monotonic() < deadline and rounds < 400:
        rounds += 1
        name = rng.choice(sorted(methods))
        odd = rng.random() < 0.5 and name in ("Generate", "GenerateStream")
        raw = odd_request(rng).SerializeToString() if odd else random_bytes(rng)
        code = _code(methods[name], raw)
        seen.setdefault(name, set()).add(code)
        assert code in ALLOWED, f"{name}({raw[:80]!r}) answered {code}"
    assert rounds >= 40 and set(seen) == set(methods)
    assert grpc.StatusCode.INVALID_ARGUMENT in seen["Generate"]


def test_reflection_without_a_key_is_unauthenticated(strict: ServeProcess) -> None:
    with grpc.insecure_channel(strict.grpc_target) as ch:
        replies = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        with pytest.raises(grpc.RpcError) as info:
            list(replies)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        raw = ch.unary_unary(
            SERVICE + "Generate", request_serializer=_identity, response_deserializer=_identity
        )
        with pytest.raises(grpc.RpcError) as garbage:
            raw(b"\xff\xff\xff", timeout=5)
        assert garbage.value.code() == grpc.StatusCode.UNAUTHENTICATED
