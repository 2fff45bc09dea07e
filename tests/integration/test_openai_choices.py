"""n, best_of, prompt batches, scoring with max_tokens 0, and fields refused by name, over a
real server through the official `openai` client."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest
from live_server import sse_events

from loadtests.server_process import ServeProcess

EXTRA = {"ignore_eos": True}


@pytest.fixture(scope="module")
def client(server: ServeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _unique_prompt() -> str:
    return ("n-test " + uuid.uuid4().hex) * 2  # 78 bytes: 4 full blocks of 16


def test_n_choices_share_one_prefill(client: openai.OpenAI, server: ServeProcess) -> None:
    hits = server.metric("hagmoe_prefix_cache_hits_total")
    prompt = _unique_prompt()
    out = client.completions.create(
        model="tiny", prompt=prompt, n=4, max_tokens=6, temperature=2.0, seed=7, extra_body=EXTRA
    )
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert out.usage is not None and out.usage.prompt_tokens == len(prompt)
    assert out.usage.completion_tokens == 24
    # the three siblings found the leader's four full blocks: the prompt was computed once
    assert server.metric("hagmoe_prefix_cache_hits_total") - hits >= 3 * 64


def test_n_is_reproducible_with_a_seed(client: openai.OpenAI) -> None:
    kw = {"model": "tiny", "prompt": "Hi", "n": 3, "max_tokens": 5, "seed": 11}
    first = client.completions.create(temperature=1.0, extra_body=EXTRA, **kw)  # type: ignore[call-overload]
    again = client.completions.create(temperature=1.0, extra_body=EXTRA, **kw)  # type: ignore[call-overload]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]


def test_best_of_keeps_the_most_likely(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model="tiny", prompt="Hello", n=1, best_of=4, max_tokens=4, temperature=1.5, seed=3,
        logprobs=0, extra_body=EXTRA,
    )  # fmt: skip
    assert len(out.choices) == 1
    lp = out.choices[0].logprobs
    assert lp is not None and lp.token_logprobs is not None
    best = sum(x or 0.0 for x in lp.token_logprobs)
    every = client.completions.create(
        model="tiny", prompt="Hello", n=4, max_tokens=4, temperature=1.5, seed=3, logprobs=0,
        extra_body=EXTRA,
    )  # fmt: skip
    sums = [sum(x or 0.0 for x in (c.logprobs.token_logprobs or [])) for c in every.choices]  # type: ignore[union-attr]
    assert abs(best - max(sums)) < 1e-4


def test_a_list_of_prompts_is_a_batch(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model="tiny", prompt=["Hello", "Hi"], n=2, max_tokens=3, temperature=0,
        echo=True, extra_body=EXTRA,
    )  # fmt: skip
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert [c.text[:5] for c in out.choices[:2]] == ["Hello", "Hello"]
    assert [c.text[:2] for c in out.choices[2:]] == ["Hi", "Hi"]
    assert out.usage is not None and out.usage.prompt_tokens == 7


def test_streamed_n_and_batch_carry_each_index(server: ServeProcess) -> None:
    body = {
        "prompt": ["ab", "cd"], "n": 2, "max_tokens": 3, "stream": True, "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as r:
        events = sse_events(line for line in r.iter_lines() if line)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    finished = sorted(c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"])
    assert finished == [0, 1, 2, 3]
    assert events[-2]["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": 12,
        "total_tokens": 16,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_chat_n_unary_and_stream(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    out = client.chat.completions.create(
        model="tiny",
        messages=messages,
        n=3,
        max_tokens=4,
        extra_body=EXTRA,  # type: ignore[arg-type]
    )
    assert [c.index for c in out.choices] == [0, 1, 2]
    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        n=2,
        max_tokens=4,
        stream=True,
        extra_body=EXTRA,  # type: ignore[arg-type]
    )
    finished = sorted(c.choices[0].index for c in stream if c.choices[0].finish_reason)
    assert finished == [0, 1]


def test_max_tokens_zero_scores_the_prompt(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model="tiny", prompt="Hello", max_tokens=0, echo=True, logprobs=1
    )
    choice = out.choices[0]
    assert choice.text == "Hello" and choice.finish_reason == "length"
    lp = choice.logprobs
    assert lp is not None and lp.tokens == list("Hello")
    assert lp.token_logprobs is not None and lp.token_logprobs[0] is None
    assert all(x is not None and x < 0 for x in lp.token_logprobs[1:])
    assert out.usage is not None and out.usage.completion_tokens == 0
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny", prompt="Hello", max_tokens=0)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/completions", {"prompt": "x", "frobnicate": 1}, "frobnicate"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "echo": 1},
            "echo",
        ),
        ("/v1/completions", {"prompt": "x", "response_format": {"type": "text", "x": 1}}, "x"),
        ("/generate", {"inputs": "x", "options": {}}, "options"),
        ("/v1/completions", {"prompt": "x", "priority": 1}, "priority"),
    ],
)
def test_unimplemented_fields_are_refused_by_name(
    server: ServeProcess, path: str, body: dict[str, object], field: str
) -> None:
    r = httpx.post(server.url + path, json=body, timeout=30)
    assert r.status_code in (400, 422), r.text
    assert field in r.text


def test_harmless_fields_are_accepted(server: ServeProcess) -> None:
    body = {"prompt": "x", "max_tokens": 1, "user": "u", "metadata": {"a": "b"}, "store": False}
    assert httpx.post(server.url + "/v1/completions", json=body, timeout=30).status_code == 200


def test_truncate_prompt_tokens_keeps_the_end(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model="tiny", prompt="abcdefgh", max_tokens=1, echo=True,
        extra_body={"truncate_prompt_tokens": 3},
    )  # fmt: skip
    assert out.choices[0].text.startswith("fgh")
    assert out.usage is not None and out.usage.prompt_tokens == 3


def test_continue_final_message_and_template_kwargs(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}]
    out = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=2, temperature=0,  # type: ignore[arg-type]
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )  # fmt: skip
    assert out.usage is not None
    # the fallback template renders "<|user|>\nHi\n<|assistant|>\nHel": the turn's end is cut
    assert out.usage.prompt_tokens == len("<|user|>\nHi\n<|assistant|>\nHel")
    with pytest.raises(openai.BadRequestError, match="chat_template_kwargs"):
        client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=1,  # type: ignore[arg-type]
            extra_body={"chat_template_kwargs": {"messages": []}},
        )  # fmt: skip
