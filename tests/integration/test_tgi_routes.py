"""TGI routes over a real server: raw httpx and huggingface_hub's InferenceClient, unchanged."""

from __future__ import annotations

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError
from live_server import sse_events

from loadtests.server_process import ServeProcess

GREEDY = {"max_new_tokens": 6, "ignore_eos": True}


def post(server: ServeProcess, path: str, body: dict[str, object], **kw: object) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30, **kw)  # type: ignore[arg-type]


def test_generate_details_routing_and_request_id(server: ServeProcess) -> None:
    params = {**GREEDY, "details": True, "top_n_tokens": 2, "return_routing": True}
    r = post(server, "/generate", {"inputs": "Hello", "parameters": params},
             headers={"X-Request-Id": "abc-123"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "abc-123"
    body = r.json()
    details = body["details"]
    assert details["finish_reason"] == "length"
    assert details["generated_tokens"] == len(details["tokens"]) == 6
    assert details["input_length"] == 5
    assert body["generated_text"] == "".join(t["text"] for t in details["tokens"])
    assert all(len(top) == 2 for top in details["top_tokens"])
    for token in details["tokens"]:
        assert token["logprob"] <= 0
        assert [layer["layer"] for layer in token["routing"]] == [0, 1]
        for layer in token["routing"]:
            assert layer["k"] == len(layer["experts"]) == len(layer["scores"])
            assert 0 <= layer["group"] < 2 and 0.0 <= layer["entropy"] <= 1.0


def test_generate_is_deterministic_when_greedy(server: ServeProcess) -> None:
    body = {"inputs": "abc", "parameters": GREEDY}
    first, second = post(server, "/generate", body).json(), post(server, "/generate", body).json()
    assert first == second and "details" not in first


def test_generate_stream_events(server: ServeProcess) -> None:
    body = {"inputs": "Hello", "parameters": {**GREEDY, "return_full_text": True}}
    with httpx.stream("POST", server.url + "/generate_stream", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.iter_lines())
    assert [e["index"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert all(e["generated_text"] is None for e in events[:-1])
    last = events[-1]
    assert last["details"]["finish_reason"] == "length"
    assert last["details"]["generated_tokens"] == 6
    assert last["generated_text"] == "Hello" + "".join(e["token"]["text"] for e in events)


def test_compat_route_unary_and_stream(server: ServeProcess) -> None:
    unary = post(server, "/", {"inputs": "abc", "parameters": GREEDY})
    assert unary.status_code == 200 and isinstance(unary.json(), list) and len(unary.json()) == 1
    with httpx.stream(
        "POST", server.url + "/", json={"inputs": "abc", "parameters": GREEDY, "stream": True}
    ) as r:
        events = sse_events(r.iter_lines())
    assert events[-1]["generated_text"] == unary.json()[0]["generated_text"]


def test_huggingface_inference_client(server: ServeProcess) -> None:
    client = InferenceClient(base_url=server.url)
    text = client.text_generation("Hello", max_new_tokens=5, seed=3, do_sample=True)
    assert isinstance(text, str)
    detailed = client.text_generation("Hello", max_new_tokens=5, details=True, top_n_tokens=1)
    assert detailed.details is not None and detailed.details.generated_tokens >= 1
    assert detailed.details.finish_reason in ("length", "eos_token")
    pieces = list(client.text_generation("Hello", max_new_tokens=5, stream=True))
    assert "".join(pieces) == detailed.generated_text
    events = list(client.text_generation("Hello", max_new_tokens=5, stream=True, details=True))
    assert events[-1].generated_text == detailed.generated_text
    assert events[-1].details is not None and events[-1].details.input_length == 5


def test_huggingface_client_sees_validation_errors(server: ServeProcess) -> None:
    client = InferenceClient(base_url=server.url)
    with pytest.raises(ValidationError, match="temperature"):
        client.text_generation("Hello", max_new_tokens=5, temperature=-1.0)


@pytest.mark.parametrize(
    ("parameters", "needle"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"watermark": True}, "watermark"),
        ({"best_of": 2}, "best_of"),
        ({"no_such_parameter": 1}, "no_such_parameter"),
        ({"max_new_tokens": "many"}, "max_new_tokens"),
    ],
)
def test_invalid_parameters_are_422(
    server: ServeProcess, parameters: dict[str, object], needle: str
) -> None:
    r = post(server, "/generate", {"inputs": "Hello", "parameters": parameters})
    assert r.status_code == 422
    assert r.json()["error_type"] == "validation" and needle in r.json()["error"]


def test_decoder_input_details_match_v1_prompt_logprobs(server: ServeProcess) -> None:
    params = {"max_new_tokens": 1, "details": True, "decoder_input_details": True}
    r = post(server, "/generate", {"inputs": "Hello world", "parameters": params})
    assert r.status_code == 200, r.text
    prefill = r.json()["details"]["prefill"]
    assert [t["id"] for t in prefill] == list(b"Hello world")
    assert prefill[0]["logprob"] is None and prefill[0]["text"] == "H"
    body = {"model": "tiny", "prompt": "Hello world", "max_tokens": 1, "prompt_logprobs": 0}
    v1 = post(server, "/v1/completions", body).json()["choices"][0]["prompt_logprobs"]
    assert v1[0] is None and len(v1) == len(prefill)
    for token, entry in zip(prefill[1:], v1[1:], strict=True):
        chosen = entry[str(token["id"])]
        assert abs(chosen["logprob"] - token["logprob"]) < 1e-4
        assert chosen["decoded_token"] == token["text"]
    r = post(server, "/generate_stream", {"inputs": "Hello", "parameters": params})
    assert r.status_code == 422 and "decoder_input_details" in r.json()["error"]


def test_token_limits_name_the_numbers(server: ServeProcess) -> None:
    r = post(server, "/generate", {"inputs": "x" * 600, "parameters": {"max_new_tokens": 1}})
    assert r.status_code == 422 and "600" in r.json()["error"] and "511" in r.json()["error"]
    r = post(server, "/generate", {"inputs": "x" * 100, "parameters": {"max_new_tokens": 500}})
    assert r.status_code == 422
    assert all(n in r.json()["error"] for n in ("512", "100", "500"))
    r = post(
        server, "/generate_stream", {"inputs": "x" * 100, "parameters": {"max_new_tokens": 500}}
    )
    assert r.status_code == 422 and r.json()["error_type"] == "validation"


def test_malformed_json_is_422(server: ServeProcess) -> None:
    r = httpx.post(
        server.url + "/generate", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["error_type"] == "validation"


def test_timeout_gives_504_unary_and_error_event_in_stream(server: ServeProcess) -> None:
    long = {"max_new_tokens": 480, "ignore_eos": True, "timeout": 0.02}  # 480 tokens: ~0.24 s
    r = post(server, "/generate", {"inputs": "Hello", "parameters": long})
    assert r.status_code == 504 and r.json()["error_type"] == "timeout"
    with httpx.stream(
        "POST", server.url + "/generate_stream", json={"inputs": "Hello", "parameters": long}
    ) as stream:
        events = sse_events(stream.iter_lines())
    assert events and events[-1]["error_type"] == "timeout"
    assert all("token" in e for e in events[:-1])
    assert server.wait_metric("hagmoe_kv_cache_usage_ratio", 0.0) == 0.0
    assert server.metric("hagmoe_requests_total", 'outcome="timeout",route="/generate"') >= 1
