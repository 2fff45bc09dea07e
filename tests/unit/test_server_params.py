"""TGI and OpenAI parameters -> SamplingParams, and what is rejected."""

from __future__ import annotations

from typing import Any

import pytest

from hagmoe.engine.structured_output import StructuredOutputs
from server.errors import InvalidInput
from server.limits import Limits
from server.openai_schemas import ChatCompletionRequest, CompletionRequest
from server.params import (
    chat_sampling,
    completion_prompts,
    completion_sampling,
    num_sequences,
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
        {"best_of": 2},
        {"adapter_id": "a"},
    ],
)
def test_tgi_unsupported_values_are_rejected(kw: dict[str, Any]) -> None:
    name = next(iter(kw))
    with pytest.raises(InvalidInput, match=name) as info:
        tgi(**kw)
    assert info.value.param == name


def test_tgi_grammar_and_prompt_logprobs() -> None:
    schema = {"type": "object"}
    assert tgi(grammar={"type": "json", "value": schema}).structured_outputs == StructuredOutputs(
        json=schema
    )
    assert tgi(grammar={"type": "regex", "value": "a+"}).structured_outputs == StructuredOutputs(
        regex="a+"
    )
    with pytest.raises(InvalidInput, match="grammar"):
        tgi(grammar={"type": "regex", "value": {"a": 1}})
    with pytest.raises(ValueError, match="type"):
        TgiParameters(grammar={"type": "lark", "value": "x"})  # type: ignore[arg-type]
    assert tgi(decoder_input_details=True).prompt_logprobs == 0
    assert tgi().prompt_logprobs is None
    with pytest.raises(InvalidInput, match="decoder_input_details"):
        tgi_sampling(TgiParameters(decoder_input_details=True), 10, LIMITS, stream=True)


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


def chat(tool_constraint: StructuredOutputs | None = None, **kw: Any) -> Any:
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], **kw)  # type: ignore[list-item]
    return chat_sampling(body, 10, LIMITS, tool_constraint=tool_constraint)


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
        (lambda: completion(suffix="s"), "suffix"),
        (lambda: completion(logit_bias={"a": 2.0}), "logit_bias"),
        (lambda: completion(bad_words=["x"]), "bad_words"),
        (lambda: completion(prompt_logprobs=1, stream=True), "prompt_logprobs"),
        (lambda: chat(response_format={"type": "json_schema"}), "response_format"),
        (lambda: chat(guided_regex="a", guided_choice=["b"]), "guided_regex"),
        (lambda: chat(top_logprobs=2), "top_logprobs"),
        (
            lambda: chat(guided_regex="a", tool_constraint=StructuredOutputs(regex="b")),
            "tool_choice",
        ),
    ],
)
def test_openai_unsupported_values_are_rejected(make: Any, param: str) -> None:
    with pytest.raises(InvalidInput) as info:
        make()
    assert info.value.param == param


def test_openai_token_fields() -> None:
    c = completion(
        min_p=0.1,
        stop_token_ids=[3],
        logit_bias={"5": -100.0, "7": 2.5},
        allowed_token_ids=[1, 2],
        prompt_logprobs=2,
    )
    assert c.min_p == 0.1 and c.stop_token_ids == [3] and c.allowed_token_ids == [1, 2]
    assert c.logit_bias == {5: -100.0, 7: 2.5} and c.prompt_logprobs == 2
    body = CompletionRequest(model="m", prompt="x", bad_words=["ab", "c"])
    encoded = completion_sampling(body, 10, LIMITS, lambda w: [ord(ch) for ch in w])
    assert encoded.bad_words_token_ids == [[97, 98], [99]]


def test_echo_with_logprobs_asks_for_prompt_logprobs() -> None:
    assert completion(echo=True, logprobs=3).prompt_logprobs == 3
    assert completion(echo=True, logprobs=1, prompt_logprobs=4).prompt_logprobs == 4
    assert completion(echo=True).prompt_logprobs is None


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"response_format": {"type": "text"}}, None),
        ({"response_format": {"type": "json_object"}}, StructuredOutputs(json_object=True)),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": {}},
                }
            },
            StructuredOutputs(json={}),
        ),
        ({"structured_outputs": {"regex": "a|b"}}, StructuredOutputs(regex="a|b")),
        (
            {"structured_outputs": {"json": '{"type": "string"}'}},
            StructuredOutputs(json='{"type": "string"}'),
        ),
        ({"guided_json": {"type": "object"}}, StructuredOutputs(json={"type": "object"})),
        ({"guided_choice": ["a", "b"]}, StructuredOutputs(choice=("a", "b"))),
        ({"guided_grammar": 'start: "a"'}, StructuredOutputs(grammar='start: "a"')),
    ],
)
def test_structured_output_fields(kw: dict[str, Any], expected: StructuredOutputs | None) -> None:
    assert chat(**kw).structured_outputs == expected
    assert completion(**kw).structured_outputs == expected


def test_several_structured_output_fields_are_refused_by_name() -> None:
    with pytest.raises(InvalidInput, match="response_format, guided_json") as info:
        completion(response_format={"type": "json_object"}, guided_json={"type": "object"})
    assert info.value.param == "response_format"


def test_completion_prompt_forms() -> None:
    assert completion_prompts("hi") == ["hi"]
    assert completion_prompts([1, 2]) == [[1, 2]]
    assert completion_prompts(["hi", "yo"]) == ["hi", "yo"]
    assert completion_prompts([[1, 2], [3]]) == [[1, 2], [3]]
    with pytest.raises(InvalidInput, match="empty"):
        completion_prompts([])


def test_n_and_best_of() -> None:
    assert num_sequences(CompletionRequest(prompt="x", n=2)) == 2
    assert num_sequences(CompletionRequest(prompt="x", n=2), 5) == 5
    with pytest.raises(InvalidInput, match="best_of: must be >= n=3"):
        num_sequences(CompletionRequest(prompt="x", n=3), 2)
    with pytest.raises(InvalidInput, match="cannot be streamed"):
        num_sequences(CompletionRequest(prompt="x", stream=True), 2)
    ranked = completion_sampling(CompletionRequest(prompt="x", best_of=3), 1, LIMITS)
    assert ranked.logprobs == 0  # best_of ranks by the chosen tokens' logprobs


def test_max_tokens_zero_needs_echo() -> None:
    with pytest.raises(InvalidInput, match="max_tokens: 0 needs echo"):
        completion_sampling(CompletionRequest(prompt="x", max_tokens=0), 1, LIMITS)
    params = completion_sampling(CompletionRequest(prompt="x", max_tokens=0, echo=True), 1, LIMITS)
    assert params.max_new_tokens == 1


def test_tgi_best_of_follows_tgi_rules() -> None:
    with pytest.raises(InvalidInput, match="best_of: needs sampling"):
        tgi_sampling(TgiParameters(best_of=2), 1, LIMITS)
    with pytest.raises(InvalidInput, match="seed: must not be set"):
        tgi_sampling(TgiParameters(best_of=2, do_sample=True, seed=1), 1, LIMITS)
    with pytest.raises(InvalidInput, match="cannot be streamed"):
        tgi_sampling(TgiParameters(best_of=2, do_sample=True), 1, LIMITS, stream=True)
    assert tgi_sampling(TgiParameters(best_of=2, do_sample=True), 1, LIMITS).logprobs == 0
