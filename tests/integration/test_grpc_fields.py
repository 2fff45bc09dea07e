"""The gRPC Generate / GenerateStream fields that match REST's: structured outputs, min_p,
logit_bias, allowed and bad words, prompt logprobs, n sibling sequences, priority and
truncate_prompt_tokens, over a real server on the bundled model (whose tokenizer.json the
grammar compiler needs); bad values are INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import jsonschema
import pytest

from loadtests.server_process import ServeProcess
from server._generated import generation_pb2 as pb
from server._generated import generation_pb2_grpc as pb_grpc

PROMPT = "The answer, as JSON:"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
REGEX = "[a-c]{2}-[0-9]{3}"
CHOICES = ["yes", "no", "maybe"]


@pytest.fixture(scope="module")
def stub(bundled: ServeProcess) -> Iterator[pb_grpc.GenerationStub]:
    with grpc.insecure_channel(bundled.grpc_target) as channel:
        yield pb_grpc.GenerationStub(channel)


def request(text: str = PROMPT, priority: int = 0, **params: Any) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        text=text, parameters=pb.SamplingParameters(**params), priority=priority
    )


def constrained(**spec: Any) -> pb.StructuredOutputs:
    return pb.StructuredOutputs(**spec)


def ids(tokens: Any) -> list[int]:
    return [t.id for t in tokens]


def test_json_schema_output_parses_and_validates(stub: pb_grpc.GenerationStub) -> None:
    so = constrained(json=json.dumps(PERSON))
    out = stub.Generate(request(max_new_tokens=150, structured_outputs=so), timeout=60)
    assert out.finish_reason == pb.FINISH_REASON_EOS_TOKEN, out.text
    jsonschema.validate(json.loads(out.text), PERSON)
    streamed = list(stub.GenerateStream(request(max_new_tokens=150, structured_outputs=so)))
    assert "".join(m.text for m in streamed) == out.text
    obj = stub.Generate(  # any object: this small model may not close it in 20 tokens
        request(max_new_tokens=20, structured_outputs=constrained(json_object=True)), timeout=60
    )
    assert obj.text.startswith("{"), obj.text


def test_regex_and_choice_outputs_match(stub: pb_grpc.GenerationStub) -> None:
    for seed in range(3):
        regex = stub.Generate(
            request(
                max_new_tokens=20,
                temperature=1.0,
                seed=seed,
                structured_outputs=constrained(regex=REGEX),
            ),
            timeout=60,
        )
        assert re.fullmatch(REGEX, regex.text), regex.text
        choice = stub.Generate(
            request(
                "Pick one:",
                max_new_tokens=20,
                temperature=1.0,
                seed=seed,
                structured_outputs=constrained(choice=CHOICES),
            ),
            timeout=60,
        )
        assert choice.text in CHOICES


def test_n_sequences_seeded_are_deterministic(stub: pb_grpc.GenerationStub) -> None:
    params: dict[str, Any] = {
        "max_new_tokens": 8,
        "ignore_eos": True,
        "temperature": 1.0,
        "seed": 7,
        "n": 3,
    }
    first = stub.Generate(request(**params), timeout=60)
    again = stub.Generate(request(**params), timeout=60)
    assert [s.index for s in first.sequences] == [0, 1, 2]
    texts = [s.text for s in first.sequences]
    assert texts == [s.text for s in again.sequences]
    assert [ids(s.tokens) for s in first.sequences] == [ids(s.tokens) for s in again.sequences]
    assert first.text == texts[0] and ids(first.tokens) == ids(first.sequences[0].tokens)
    assert len({tuple(ids(s.tokens)) for s in first.sequences}) > 1  # seed + i each
    assert first.usage.completion_tokens == 24 and first.usage.prompt_tokens > 0
    one = stub.Generate(request(**{**params, "n": 1}), timeout=60)
    assert not one.sequences and ids(one.tokens) == ids(first.tokens)

    messages = list(stub.GenerateStream(request(**params), timeout=60))
    by_index: dict[int, list[pb.GenerateStreamResponse]] = {0: [], 1: [], 2: []}
    for m in messages:
        by_index[m.index].append(m)
    for i, own in by_index.items():
        assert [m.finished for m in own] == [False] * (len(own) - 1) + [True]
        assert own[-1].usage.completion_tokens == 8
        assert "".join(m.text for m in own) == texts[i]


def test_logit_bias_allowed_and_bad_words(stub: pb_grpc.GenerationStub) -> None:
    words = stub.Tokenize(pb.TokenizeRequest(text=" the cat sat"), timeout=10)
    vocab, forced, piece = list(words.ids), words.ids[0], words.tokens[0]
    assert list(stub.Tokenize(pb.TokenizeRequest(text=piece), timeout=10).ids) == [forced]
    base: dict[str, Any] = {"max_new_tokens": 6, "ignore_eos": True}
    out = stub.Generate(request(**base, logit_bias={forced: 100.0}), timeout=60)
    assert ids(out.tokens) == [forced] * 6
    allowed = stub.Generate(request(**base, allowed_token_ids=vocab), timeout=60)
    assert set(ids(allowed.tokens)) <= set(vocab)
    bad = stub.Generate(request(**base, logit_bias={forced: 100.0}, bad_words=[piece]), timeout=60)
    assert forced not in ids(bad.tokens)
    greedy = stub.Generate(request(**base), timeout=60)
    min_p = stub.Generate(request(**base, min_p=1.0, temperature=1.0, seed=3), timeout=60)
    assert ids(min_p.tokens) == ids(greedy.tokens)  # min_p 1 keeps only the top token


def test_prompt_logprobs_truncation_and_priority(stub: pb_grpc.GenerationStub) -> None:
    out = stub.Generate(request(max_new_tokens=2, prompt_logprobs=2), timeout=60)
    assert len(out.prompt_tokens) == out.usage.prompt_tokens > 1
    assert not out.prompt_tokens[0].HasField("logprob")
    for token in out.prompt_tokens[1:]:
        assert token.HasField("logprob") and len(token.top_logprobs) == 2
    prompt = list(stub.Tokenize(pb.TokenizeRequest(text=PROMPT), timeout=10).ids)
    assert ids(out.prompt_tokens) == prompt
    short = stub.Generate(request(max_new_tokens=2, truncate_prompt_tokens=2), timeout=60)
    assert short.usage.prompt_tokens == 2
    tail = pb.GenerateRequest(
        token_ids=pb.TokenIds(ids=prompt[-2:]), parameters=pb.SamplingParameters(max_new_tokens=2)
    )
    assert ids(stub.Generate(tail, timeout=60).tokens) == ids(short.tokens)
    plain = stub.Generate(request(max_new_tokens=2), timeout=60)
    assert not plain.prompt_tokens and not plain.sequences


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (request(n=0), "n"),
        (request(n=129), "n"),
        (request(min_p=1.5), "min_p"),
        (request(logit_bias={10**6: 1.0}), "logit_bias"),
        (request(logit_bias={1: 101.0}), "logit_bias"),
        (request(allowed_token_ids=[10**6]), "allowed_token_ids"),
        (request(bad_words=[""]), "bad_words"),
        (request(prompt_logprobs=21), "prompt_logprobs"),
        (request(truncate_prompt_tokens=0), "truncate_prompt_tokens"),
        (request(priority=3), "priority"),
        (request(structured_outputs=constrained()), "structured_outputs"),
        (request(structured_outputs=constrained(regex="a", choice=["b"])), "structured_outputs"),
        (request(structured_outputs=constrained(regex="(unclosed")), "structured_outputs"),
        (request(structured_outputs=constrained(json="{not json")), "structured_outputs"),
    ],
)
def test_bad_fields_are_invalid_argument(
    stub: pb_grpc.GenerationStub, req: pb.GenerateRequest, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(req, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(field), info.value.details()


def test_stream_refuses_prompt_logprobs(stub: pb_grpc.GenerationStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        list(stub.GenerateStream(request(prompt_logprobs=1), timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompt_logprobs" in (info.value.details() or "")


def test_grpc_and_rest_agree_on_constrained_greedy_tokens(
    stub: pb_grpc.GenerationStub, bundled: ServeProcess
) -> None:
    grpc_out = stub.Generate(
        request(max_new_tokens=40, structured_outputs=constrained(regex=REGEX)), timeout=60
    )
    params = {"max_new_tokens": 40, "details": True, "grammar": {"type": "regex", "value": REGEX}}
    rest = httpx.post(
        bundled.url + "/generate", json={"inputs": PROMPT, "parameters": params}, timeout=60
    )
    assert rest.status_code == 200, rest.text
    assert ids(grpc_out.tokens) == [t["id"] for t in rest.json()["details"]["tokens"]]
    assert re.fullmatch(REGEX, grpc_out.text)

    schema = {"structured_outputs": {"json": PERSON}, "prompt": PROMPT, "temperature": 0}
    body = {**schema, "max_tokens": 150, "logprobs": 0}
    chat = httpx.post(bundled.url + "/v1/completions", json=body, timeout=60)
    assert chat.status_code == 200, chat.text
    so = constrained(json=json.dumps(PERSON))
    by_grpc = stub.Generate(request(max_new_tokens=150, structured_outputs=so), timeout=60)
    assert by_grpc.text == chat.json()["choices"][0]["text"]
