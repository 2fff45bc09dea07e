"""TGI and OpenAI parameters -> SamplingParams, and what is rejected."""

from __future__ import annotations

from typing import Any

import pytest

from server.errors import InvalidInput
from server.limits import Limits
from server.openai_schemas import ChatCompletionRequest, CompletionRequest
from server.params import (
    chat_sampling,
    completion_prompt,
    completion_sampling,
    tgi_sampling,
    truncate_prompt,
)
from server.tgi_schemas import TgiParameters

LIMITS = Limits(max_input_tokens=511, max_total_tokens=512, max_body_bytes=1 << 20)


def tgi(**kw: Any) -> Any:
    return tgi_sampling(TgiParameters(**kw), 10, LIMITS)


def test_tgi_is_greedy_unless_sampling_is_asked() -> None:
    assert tgi().temperature == 0.0
    assert tgi(do_sample=True).temperature == 1.0
    assert tgi(temperature=0.7).temperature == 0.7
    assert tgi(top_k=5).temperature == 1.0 and tgi(top_k=5).top_k == 5
    assert tgi(top_p=0.9).temperature == 1.0
    assert tgi(temperature=1.0).temperature == 0.0


def test_tgi_defaults_and_fields() -> None:
    p = tgi(stop=["\n"], seed=3, top_n_tokens=4, return_routing=True, repetition_penalty=1.2)
    assert p.max_new_tokens == 100 and p.stop == ["\n"] and p.seed == 3
    assert p.logprobs == 4 and p.return_routing and p.repetition_penalty == 1.2
    assert tgi().logprobs == 0
    assert tgi_sampling(TgiParameters(), 500, LIMITS).max_new_tokens == 12


@pytest.mark.parametrize(
    "kw",
    [
        {"watermark": True},
        {"decoder_input_details": True},
        {"best_of": 2},
        {"adapter_id": "a"},
        {"grammar": {"type": "json"}},
    ],
)
def test_tgi_unsupported_values_are_rejected(kw: dict[str, Any]) -> None:
    name = next(iter(kw))
    with pytest.raises(InvalidInput, match=name) as info:
        tgi(**kw)
    assert info.value.param == name


def test_tgi_accepts_what_huggingface_hub_sends() -> None:
    TgiParameters(best_of=None, adapter_id=None, grammar=None, watermark=False, truncate=None)
    with pytest.raises(ValueError, match="unknown"):
        TgiParameters(unknown=1)  # type: ignore[call-arg]


def test_truncate() -> None:
    assert truncate_prompt([1, 2, 3], 2) == [2, 3] and truncate_prompt([1, 2], None) == [1, 2]
    with pytest.raises(InvalidInput, match="truncate"):
        truncate_prompt([1], 0)


def completion(**kw: Any) -> Any:
    return completion_sampling(CompletionRequest(model="m", prompt="x", **kw), 10, LIMITS)


def chat(**kw: Any) -> Any:
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], **kw)  # type: ignore[list-item]
    return chat_sampling(body, 10, LIMITS)


def test_openai_defaults() -> None:
    c = completion()
    assert c.max_new_tokens == 16 and c.temperature == 1.0 and c.logprobs is None
    assert completion(max_tokens=None).max_new_tokens == 502
    assert chat().max_new_tokens == 502 and chat(max_completion_tokens=7).max_new_tokens == 7


def test_openai_fields() -> None:
    c = completion(stop="END", logprobs=3, temperature=0, seed=1, top_k=4, min_tokens=2)
    assert c.stop == ["END"] and c.logprobs == 3 and c.temperature == 0.0
    assert c.seed == 1 and c.top_k == 4 and c.min_new_tokens == 2
    assert chat(logprobs=True).logprobs == 0 and chat(logprobs=True, top_logprobs=5).logprobs == 5
    assert chat().logprobs is None


@pytest.mark.parametrize(
    ("make", "param"),
    [
        (lambda: completion(n=2), "n"),
        (lambda: completion(best_of=3), "best_of"),
        (lambda: completion(suffix="s"), "suffix"),
        (lambda: completion(logit_bias={"1": 2.0}), "logit_bias"),
        (lambda: chat(top_logprobs=2), "top_logprobs"),
        (lambda: chat(tools=[{"type": "function"}]), "tools"),
        (lambda: chat(response_format={"type": "json_object"}), "response_format"),
    ],
)
def test_openai_unsupported_values_are_rejected(make: Any, param: str) -> None:
    with pytest.raises(InvalidInput) as info:
        make()
    assert info.value.param == param


def test_completion_prompt_forms() -> None:
    assert completion_prompt("hi") == "hi"
    assert completion_prompt([1, 2]) == [1, 2]
    assert completion_prompt(["hi"]) == "hi"
    assert completion_prompt([[1, 2]]) == [1, 2]
    with pytest.raises(InvalidInput, match="one prompt per request"):
        completion_prompt(["a", "b"])
    with pytest.raises(InvalidInput, match="empty"):
        completion_prompt([])
