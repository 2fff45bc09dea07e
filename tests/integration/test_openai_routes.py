"""OpenAI routes over a real server, through the official `openai` client used unchanged."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from live_server import sse_events

from loadtests.server_process import ServeProcess

MODEL = "tiny"
EXTRA = {"ignore_eos": True}


@pytest.fixture(scope="module")
def client(server: ServeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_completion_unary_with_logprobs_and_usage(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=5, temperature=0, logprobs=2, extra_body=EXTRA
    )
    choice = out.choices[0]
    assert choice.finish_reason == "length"
    assert out.usage is not None and out.usage.prompt_tokens == 5
    assert out.usage.completion_tokens == 5 and out.usage.total_tokens == 10
    assert choice.logprobs is not None and len(choice.logprobs.token_logprobs or []) == 5
    assert all(len(top) >= 1 for top in choice.logprobs.top_logprobs or [])


def test_completion_echo_and_token_prompt(client: openai.OpenAI) -> None:
    echoed = client.completions.create(
        model=MODEL, prompt="Hi", max_tokens=3, temperature=0, echo=True, extra_body=EXTRA
    )
    assert echoed.choices[0].text.startswith("Hi")
    by_ids = client.completions.create(
        model=MODEL, prompt=[72, 105], max_tokens=3, temperature=0, extra_body=EXTRA
    )
    assert "Hi" + by_ids.choices[0].text == echoed.choices[0].text


def test_completion_echo_with_logprobs_leads_with_the_prompt(client: openai.OpenAI) -> None:
    kw: Any = {"model": MODEL, "prompt": "Hello", "max_tokens": 3, "temperature": 0}
    out = client.completions.create(echo=True, logprobs=1, extra_body=EXTRA, **kw)
    choice = out.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith("Hello") and lp is not None
    assert lp.tokens is not None and lp.tokens[:5] == list("Hello") and len(lp.tokens) == 8
    assert lp.token_logprobs is not None and lp.token_logprobs[0] is None
    assert all(x is not None for x in lp.token_logprobs[1:])
    assert lp.text_offset == [0, 1, 2, 3, 4, *lp.text_offset[5:]] and lp.text_offset[5] == 5
    scored = client.completions.create(extra_body={**EXTRA, "prompt_logprobs": 1}, **kw)
    prompt_lps = (scored.choices[0].model_extra or {})["prompt_logprobs"]
    pairs = zip(lp.tokens[1:5], lp.token_logprobs[1:5], prompt_lps[1:], strict=True)
    for token, logprob, entry in pairs:
        assert abs(entry[str(ord(token))]["logprob"] - (logprob or 0.0)) < 1e-4
    chunks = list(client.completions.create(echo=True, logprobs=1, stream=True, **kw))
    first = chunks[0].choices[0]
    assert first.text == "Hello" and first.logprobs is not None
    assert (first.logprobs.token_logprobs or [])[0] is None


def test_completion_token_controls(client: openai.OpenAI) -> None:
    kw: Any = {"model": MODEL, "prompt": "Hello", "max_tokens": 4, "temperature": 0}
    allowed = client.completions.create(
        extra_body={**EXTRA, "allowed_token_ids": [120]}, logprobs=0, **kw
    )
    assert allowed.choices[0].text == "xxxx"
    biased = client.completions.create(logit_bias={"121": 100}, extra_body=EXTRA, **kw)
    assert biased.choices[0].text == "yyyy"
    banned = client.completions.create(
        logit_bias={"121": 100}, extra_body={**EXTRA, "bad_words": ["y"]}, **kw
    )
    assert "y" not in banned.choices[0].text
    stopped = client.completions.create(
        logit_bias={"121": 100}, extra_body={"stop_token_ids": [121], "min_p": 0.5}, **kw
    )
    assert stopped.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        client.completions.create(logit_bias={"y": 1}, **kw)  # type: ignore[dict-item]


def test_completion_stream_matches_unary(client: openai.OpenAI) -> None:
    unary = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=6, temperature=0, extra_body=EXTRA
    )
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="Hello",
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=EXTRA,
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == unary.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_chat_unary_and_stream(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
    ]
    out = client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body=EXTRA,
    )
    choice = out.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert choice.logprobs is not None and len(choice.logprobs.content or []) == 5
    assert all(len(e.top_logprobs) == 2 for e in choice.logprobs.content or [])
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=5,
        temperature=0,
        stream=True,
        extra_body=EXTRA,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == choice.message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_cached_prompt_tokens_are_reported(client: openai.OpenAI) -> None:
    prompt = "The same long prompt, shared by two requests. " * 2
    first = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
    second = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
    assert first.usage is not None and second.usage is not None
    details = second.usage.prompt_tokens_details
    assert details is not None and (details.cached_tokens or 0) >= 16


def test_routing_extension(server: ServeProcess) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 3,
        "return_routing": True,
        **EXTRA,
    }
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    routing = r.json()["choices"][0]["routing"]
    assert len(routing) == 3 and all(len(per_token) == 2 for per_token in routing)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n": 129}, "n"),
        ({"temperature": -1.0}, "temperature"),
        ({"max_tokens": 600}, "max_new_tokens"),
    ],
)
def test_invalid_requests_are_400_in_openai_shape(
    client: openai.OpenAI, kwargs: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="Hello", **kwargs)  # type: ignore[call-overload]
    assert info.value.status_code == 400
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error"
    assert param in body["message"]


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "nope" in str(info.value)


def test_stream_failure_ends_with_error_then_done(server: ServeProcess) -> None:
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 480, "stream": True, "timeout": 0.02}
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, **EXTRA}) as r:
        assert r.status_code == 200
        events = sse_events(r.iter_lines())
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["type"] == "timeout" and events[-2]["error"]["code"] == "timeout"


def test_openai_validation_error_shape_for_bad_json(server: ServeProcess) -> None:
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": "4"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and "max_tokens" in error["message"]


def test_model_may_be_omitted(server: ServeProcess) -> None:
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
    served = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
    assert r.status_code == 200 and r.json()["model"] == served
