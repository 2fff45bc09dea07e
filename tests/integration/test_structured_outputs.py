"""Structured outputs over a real server on the bundled model (its tokenizer.json is what the
grammar compiler needs; the tests' byte-level tiny model has none): OpenAI's response_format,
vLLM's guided_* / structured_outputs, TGI's grammar; the output must match."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from loadtests.server_process import ServeProcess

MODEL = "bundled"  # conftest BUNDLED_NAME
PROMPT = "The answer, as JSON:"


def closed(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


SHORT = {"type": "string", "maxLength": 6}
SMALL_INT = {"type": "integer", "minimum": 0, "maximum": 99}
BOOL = {"type": "boolean"}
SCHEMAS = {
    "person": closed({"name": SHORT, "age": SMALL_INT}, ["name", "age"]),
    "array": {"type": "array", "items": SMALL_INT, "minItems": 1, "maxItems": 3},
    "enum": closed(
        {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}}, ["color", "ok"]
    ),
    "nested": closed(
        {
            "point": closed({"x": SMALL_INT, "y": SMALL_INT}, ["x", "y"]),
            "tags": {"type": "array", "items": SHORT, "maxItems": 2},
        },
        ["point", "tags"],
    ),
    "pattern": closed({"code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"}}, ["code"]),
    "flags": closed({"a": BOOL, "b": BOOL}, ["a", "b"]),
    "negative": closed({"t": {"type": "integer", "minimum": -5, "maximum": 5}}, ["t"]),
    "nullable": closed({"v": {"type": ["integer", "null"], "minimum": 0, "maximum": 9}}, ["v"]),
    "const": closed({"kind": {"const": "point"}, "n": SMALL_INT}, ["kind", "n"]),
    "optional": closed({"a": SMALL_INT, "b": SHORT}, ["a"]),
    "objects": {"type": "array", "items": closed({"id": SMALL_INT}, ["id"]), "maxItems": 2},
    "any_of": {"anyOf": [closed({"cat": SHORT}, ["cat"]), closed({"dog": SMALL_INT}, ["dog"])]},
    "tuple": {"type": "array", "prefixItems": [SMALL_INT, SHORT], "items": False, "minItems": 2},
    "int_enum": closed({"level": {"enum": [1, 2, 3]}}, ["level"]),
    "top_enum": {"enum": ["alpha", "beta", "gamma"]},
    "date": closed({"d": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}}, ["d"]),
    "deep": closed({"a": closed({"b": closed({"c": SMALL_INT}, ["c"])}, ["b"])}, ["a"]),
    "pair": {"type": "array", "items": BOOL, "minItems": 2, "maxItems": 2},
    "lengths": closed({"w": {"type": "string", "minLength": 2, "maxLength": 4}}, ["w"]),
    "mixed": closed(
        {
            "id": SMALL_INT,
            "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 3},
            "meta": closed({"ok": BOOL}, ["ok"]),
        },
        ["id", "tags", "meta"],
    ),
}
assert len(SCHEMAS) == 20


@pytest.fixture(scope="module")
def client(bundled: ServeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=bundled.url + "/v1", api_key="unused", max_retries=0)


def response_format(name: str) -> Any:
    schema = {"name": name, "schema": SCHEMAS[name], "strict": True}
    return {"type": "json_schema", "json_schema": schema}


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_chat_json_schema_unary_and_stream(client: openai.OpenAI, name: str) -> None:
    messages: Any = [{"role": "user", "content": PROMPT}]
    kw: Any = {"model": MODEL, "messages": messages, "max_tokens": 150, "temperature": 0}
    out = client.chat.completions.create(response_format=response_format(name), **kw)
    assert out.choices[0].finish_reason == "stop"
    text = out.choices[0].message.content or ""
    jsonschema.validate(json.loads(text), SCHEMAS[name])
    chunks = client.chat.completions.create(
        response_format=response_format(name), stream=True, **kw
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text


def test_completion_response_format_and_json_object(client: openai.OpenAI) -> None:
    kw: Any = {"model": MODEL, "prompt": PROMPT, "max_tokens": 150, "temperature": 0}
    out = client.completions.create(extra_body={"response_format": response_format("enum")}, **kw)
    jsonschema.validate(json.loads(out.choices[0].text), SCHEMAS["enum"])
    small = closed({"a": SMALL_INT}, ["a"])
    vllm = client.completions.create(extra_body={"structured_outputs": {"json": small}}, **kw)
    jsonschema.validate(json.loads(vllm.choices[0].text), small)


def test_guided_choice_and_regex(client: openai.OpenAI) -> None:
    kw: Any = {"model": MODEL, "prompt": "Pick one:", "max_tokens": 20, "temperature": 1.0}
    choices = ["yes", "no", "maybe"]
    for seed in range(3):
        out = client.completions.create(extra_body={"guided_choice": choices}, seed=seed, **kw)
        assert out.choices[0].text in choices
    regex = "[a-c]{2}-[0-9]{3}"
    for body in ({"guided_regex": regex}, {"structured_outputs": {"regex": regex}}):
        out = client.completions.create(extra_body=body, seed=1, **kw)
        assert re.fullmatch(regex, out.choices[0].text), out.choices[0].text


def test_bad_or_conflicting_specs_are_400(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "x"}]
    bad: Any = {"type": "json_schema", "json_schema": {"name": "b", "schema": {"type": "nope"}}}
    with pytest.raises(openai.BadRequestError, match="structured_outputs") as info:
        client.chat.completions.create(model=MODEL, messages=messages, response_format=bad)
    assert info.value.status_code == 400
    with pytest.raises(openai.BadRequestError, match="response_format, guided_regex"):
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            response_format={"type": "json_object"},
            extra_body={"guided_regex": "a"},
        )


def test_tgi_grammar_json_and_regex(bundled: ServeProcess) -> None:
    def generate(grammar: dict[str, Any]) -> httpx.Response:
        params = {"max_new_tokens": 150, "grammar": grammar}
        body = {"inputs": PROMPT, "parameters": params}
        return httpx.post(bundled.url + "/generate", json=body, timeout=60)

    r = generate({"type": "json", "value": SCHEMAS["person"]})
    assert r.status_code == 200, r.text
    jsonschema.validate(json.loads(r.json()["generated_text"]), SCHEMAS["person"])
    r = generate({"type": "regex", "value": "[0-9]{4}"})
    assert r.status_code == 200 and re.fullmatch("[0-9]{4}", r.json()["generated_text"])
    r = generate({"type": "regex", "value": "(unclosed"})
    assert r.status_code == 422 and r.json()["error_type"] == "validation"
    assert "structured_outputs" in r.json()["error"]
