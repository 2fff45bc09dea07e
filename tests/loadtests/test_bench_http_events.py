"""How bench_serving reads the SSE events of each HTTP route."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtests.http_backend import HttpBackend, StreamError, sse_data
from loadtests.metrics import RequestOutput, StreamTimer


def feed(kind: str, events: list[dict[str, Any]]) -> tuple[RequestOutput, StreamTimer]:
    backend = HttpBackend(kind, "http://127.0.0.1:9", model="m")
    out, timer = RequestOutput(), StreamTimer()
    for event in events:
        backend.on_event(event, timer, out)
    return out, timer


def test_tgi_counts_every_token_event_and_takes_the_details() -> None:
    token = {"token": {"id": 1}, "generated_text": None, "details": None}
    last = {"token": {"id": 2}, "details": {"input_length": 7, "generated_tokens": 3}}
    out, timer = feed("tgi", [token, token, last])
    assert len(timer.stamps) == 3 and (out.prompt_len, out.output_len) == (7, 3)


def test_chat_skips_the_role_chunk_and_reads_usage() -> None:
    role = {"choices": [{"delta": {"role": "assistant", "content": ""}}]}
    step = {"choices": [{"delta": {"content": "a"}}]}
    empty: dict[str, Any] = {"choices": [{"delta": {}}]}  # a token whose text is not complete yet
    usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}
    out, timer = feed("openai-chat", [role, step, empty, usage])
    assert len(timer.stamps) == 2 and (out.prompt_len, out.output_len) == (9, 2)


@pytest.mark.parametrize(
    ("kind", "event"),
    [
        ("tgi", {"error": "boom", "error_type": "generation"}),
        ("openai", {"error": {"message": "x"}}),
    ],
)
def test_error_events_fail_the_request(kind: str, event: dict[str, Any]) -> None:
    with pytest.raises(StreamError):
        feed(kind, [event])


BODY = (
    b': a comment\n\ndata: {"a": 1}\n\nevent: x\r\ndata: {"b": 2}\r\n\r\n'
    b'data: [DONE]\n\ndata: {"cut": 1}'  # the last event never completes
)


@given(st.lists(st.integers(0, len(BODY)), max_size=8))
def test_sse_data_is_the_same_however_the_body_is_split(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(BODY)]

    async def chunks() -> AsyncIterator[bytes]:
        for a, b in itertools.pairwise(bounds):
            yield BODY[a:b]

    async def read() -> list[bytes]:
        return [data async for data in sse_data(chunks())]

    assert asyncio.run(read()) == [b'{"a": 1}', b'{"b": 2}', b"[DONE]"]
