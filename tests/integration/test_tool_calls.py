"""Tool calling on /v1/chat/completions over a real server on the bundled model started with
`--tool-call-parser hermes` (its tokenizer.json is what the grammar compiler needs). The model
writes gibberish, so calls are grammar-made: tool_choice required or a named function, or auto
with a guided_choice that makes the model write one Hermes block; the calls must parse, match
their schema, and agree unary and streamed."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from live_server import sse_events

from loadtests.server_process import ServeProcess

MODEL = "bundled"  # conftest BUNDLED_NAME
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 6}},
    "required": ["city"],
    "additionalProperties": False,
}
COUNT = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["n"],
    "additionalProperties": False,
}
SCHEMAS = {"weather": CITY, "count": COUNT}
TOOLS: Any = [
    {"type": "function", "function": {"name": name, "parameters": schema}}
    for name, schema in SCHEMAS.items()
]
MESSAGES: Any = [{"role": "user", "content": "Weather?"}]
KW: Any = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS, "max_tokens": 80}
CALL_ID = re.compile(r"call_[A-Za-z0-9]{24}")


@pytest.fixture(scope="module")
def client(bundled: ServeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=bundled.url + "/v1", api_key="unused", max_retries=0)


def named(name: str) -> Any:
    return {"type": "function", "function": {"name": name}}


def checked(calls: Any) -> list[tuple[str, Any]]:
    """(name, arguments) of each call, after checking its id and its schema."""
    out = []
    for call in calls:
        assert CALL_ID.fullmatch(call.id) and call.type == "function"
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, SCHEMAS[call.function.name])
        out.append((call.function.name, arguments))
    return out


def stream_chunks(bundled: ServeProcess, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream(
        "POST", bundled.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=120
    ) as r:
        assert r.status_code == 200, r.read()
        events = sse_events(line for line in r.iter_lines() if line)
    assert events[-1] == "[DONE]"
    return [e for e in events[:-1] if e["choices"]]


def streamed_calls(chunks: list[dict[str, Any]], index: int = 0) -> list[dict[str, Any]]:
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"][0]["index"] == index]
    return [call for d in deltas for call in d.get("tool_calls", [])]


def finish_of(chunks: list[dict[str, Any]], index: int = 0) -> str | None:
    reasons = [
        c["choices"][0]["finish_reason"]
        for c in chunks
        if c["choices"][0]["index"] == index and c["choices"][0]["finish_reason"]
    ]
    assert len(reasons) == 1
    return reasons[0]


def test_named_function_unary_and_stream(client: openai.OpenAI, bundled: ServeProcess) -> None:
    out = client.chat.completions.create(tool_choice=named("weather"), temperature=0, **KW)
    choice = out.choices[0]
    assert choice.finish_reason == "stop"  # a forced function: as OpenAI and vLLM
    assert choice.message.content is None and choice.message.tool_calls is not None
    calls = checked(choice.message.tool_calls)
    assert [name for name, _ in calls] == ["weather"]
    chunks = stream_chunks(bundled, {**KW, "tool_choice": named("weather"), "temperature": 0})
    deltas = streamed_calls(chunks)
    assert len(deltas) == 1 and deltas[0]["index"] == 0 and CALL_ID.fullmatch(deltas[0]["id"])
    assert deltas[0]["type"] == "function" and deltas[0]["function"]["name"] == "weather"
    assert json.loads(deltas[0]["function"]["arguments"]) == calls[0][1]
    assert finish_of(chunks) == "stop"
    assert out.usage is not None and out.usage.completion_tokens > 0


@pytest.mark.parametrize("parallel", [True, False])
def test_required_unary_and_stream(
    client: openai.OpenAI, bundled: ServeProcess, parallel: bool
) -> None:
    kw = {**KW, "tool_choice": "required", "temperature": 0, "parallel_tool_calls": parallel}
    out = client.chat.completions.create(**kw)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.tool_calls is not None
    calls = checked(choice.message.tool_calls)
    assert len(calls) >= 1 and (parallel or len(calls) == 1)
    chunks = stream_chunks(bundled, kw)
    deltas = streamed_calls(chunks)
    assert [d["index"] for d in deltas] == list(range(len(calls)))
    assert [(d["function"]["name"], json.loads(d["function"]["arguments"])) for d in deltas] == (
        calls
    )
    assert finish_of(chunks) == "tool_calls"


def test_n_choices_each_carry_their_calls(client: openai.OpenAI, bundled: ServeProcess) -> None:
    kw = {**KW, "tool_choice": "required", "parallel_tool_calls": False}
    kw |= {"n": 2, "temperature": 1.0, "seed": 5}  # one call each: sampled arrays run long
    out = client.chat.completions.create(**kw)
    assert [c.index for c in out.choices] == [0, 1]
    for choice in out.choices:
        assert choice.finish_reason == "tool_calls" and checked(choice.message.tool_calls)
    chunks = stream_chunks(bundled, kw)
    for j in (0, 1):
        assert streamed_calls(chunks, j) and finish_of(chunks, j) == "tool_calls"


BLOCK = '<tool_call>\n{"name": "count", "arguments": {"n": 3}}\n</tool_call>'


def test_auto_parses_a_hermes_block(client: openai.OpenAI, bundled: ServeProcess) -> None:
    """The bundled model cannot call a tool on its own: guided_choice makes it write a block."""
    kw = {**KW, "tool_choice": "auto", "extra_body": {"guided_choice": ["Sure. " + BLOCK]}}
    out = client.chat.completions.create(**kw)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Sure. "
    assert checked(choice.message.tool_calls) == [("count", {"n": 3})]
    body = {**KW, "tool_choice": "auto", "guided_choice": ["Sure. " + BLOCK]}
    chunks = stream_chunks(bundled, body)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Sure. " and "<" not in text
    deltas = streamed_calls(chunks)
    assert [(d["index"], d["function"]["name"]) for d in deltas] == [(0, "count")]
    assert finish_of(chunks) == "tool_calls"
    # tool_choice none: the same text is plain content
    plain = client.chat.completions.create(**{**kw, "tool_choice": "none"})
    assert plain.choices[0].message.content == "Sure. " + BLOCK
    assert plain.choices[0].message.tool_calls is None
    assert plain.choices[0].finish_reason == "stop"


def test_auto_with_free_text_is_content(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(**{**KW, "max_tokens": 12, "temperature": 0})
    choice = out.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert isinstance(choice.message.content, str) and choice.message.tool_calls is None


def test_a_tool_result_turn_renders_and_runs(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(tool_choice=named("weather"), temperature=0, **KW)
    message = first.choices[0].message
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    conversation: Any = [
        *MESSAGES,
        message,  # the client's own object, sent back as it came
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'},
    ]
    out = client.chat.completions.create(
        **{**KW, "messages": conversation, "tool_choice": named("count"), "temperature": 0}
        | {"max_tokens": 24}  # {"n": 3} is short; the bundled model holds 512 positions
    )
    assert checked(out.choices[0].message.tool_calls)[0][0] == "count"
    assert out.usage is not None and first.usage is not None
    assert out.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"tool_choice": named("nope")}, "nope"),
        (
            {"tool_choice": "required", "response_format": {"type": "json_object"}},
            "response_format",
        ),
        ({"tools": None, "tool_choice": "required"}, "needs `tools`"),
    ],
)
def test_refusals_name_tool_choice(bundled: ServeProcess, body: dict[str, Any], words: str) -> None:
    r = httpx.post(bundled.url + "/v1/chat/completions", json={**KW, **body}, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "tool_choice" and words in error["message"]


def test_auto_without_a_parser_is_refused(server: ServeProcess) -> None:
    """The shared server has no --tool-call-parser: tools default to auto, which it refuses."""
    tiny = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    for choice in ({}, {"tool_choice": "auto"}):
        with pytest.raises(openai.BadRequestError, match="--tool-call-parser") as info:
            tiny.chat.completions.create(**{**KW, "model": "tiny"}, **choice)
        assert info.value.status_code == 400
        assert info.value.body["param"] == "tool_choice"  # type: ignore[index]
    bad = httpx.post(
        server.url + "/v1/chat/completions",
        json={**KW, "model": "tiny", "tool_choice": "sometimes"},
        timeout=30,
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"].startswith("tool_choice")
