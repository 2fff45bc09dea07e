"""The REST contract of docs/api.md on a real server: strict request types, parse and
validation errors in each route family's shape, HEAD /health, and the OpenAPI schema's
bearer scheme and documented error responses."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from loadtests.server_process import ServeProcess

MODEL = "tiny"
JSON = {"content-type": "application/json"}


def assert_tgi_validation(r: httpx.Response, needle: str) -> None:
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == "validation"
    assert needle in body["error"]


def assert_openai_validation(r: httpx.Response, needle: str) -> None:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["code"] == "validation"
    assert needle in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": "4"}}, "max_new_tokens"),
        ("/generate", {"inputs": "Hi", "parameters": {"details": "yes"}}, "details"),
        ("/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": 4.0}}, "max_new_tokens"),
        ("/generate_stream", {"inputs": 5}, "inputs"),
        ("/", {"inputs": "Hi", "stream": "true"}, "stream"),
        ("/generate", {"inputs": ""}, "inputs"),
        ("/generate", {"inputs": "Hi", "parameters": {"stop": [""]}}, "stop"),
        ("/tokenize", {"inputs": "Hi", "add_special_tokens": 1}, "add_special_tokens"),
        ("/detokenize", {"token_ids": [1], "skip_special_tokens": "yes"}, "skip_special_tokens"),
        ("/detokenize", {"token_ids": ["1"]}, "token_ids"),
        ("/detokenize", {"token_ids": [-1]}, "token_ids"),
    ],
)
def test_tgi_routes_refuse_coercion(
    server: ServeProcess, path: str, body: dict[str, Any], needle: str
) -> None:
    assert_tgi_validation(httpx.post(server.url + path, json=body), needle)


@pytest.mark.parametrize(
    ("path", "extra", "needle"),
    [
        ("/v1/completions", {"max_tokens": "4"}, "max_tokens"),
        ("/v1/completions", {"echo": "yes"}, "echo"),
        ("/v1/completions", {"prompt": ""}, "prompt"),
        ("/v1/completions", {"prompt": [-3]}, "prompt"),
        ("/v1/chat/completions", {"stream": "true"}, "stream"),
        ("/v1/chat/completions", {"max_tokens": 0}, "max_tokens"),
        ("/v1/chat/completions", {"stream_options": {"include_usage": "no"}}, "include_usage"),
    ],
)
def test_openai_routes_refuse_coercion(
    server: ServeProcess, path: str, extra: dict[str, Any], needle: str
) -> None:
    body: dict[str, Any] = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    if path.endswith("chat/completions"):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert_openai_validation(httpx.post(server.url + path, json={**body, **extra}), needle)


def test_ints_are_still_floats(server: ServeProcess) -> None:
    params = {"max_new_tokens": 2, "temperature": 1, "top_p": 1, "repetition_penalty": 1}
    r = httpx.post(
        server.url + "/generate", json={"inputs": "Hi", "parameters": params}, timeout=30
    )
    assert r.status_code == 200, r.text
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "temperature": 0, "timeout": 30}
    assert httpx.post(server.url + "/v1/completions", json=body, timeout=30).status_code == 200


@pytest.mark.parametrize(
    "content", [b"{not json", b"\xff\xfe{", b'{"inputs": "Hi", "parameters": {"temperature": NaN}}']
)
def test_parse_errors_in_route_shapes(server: ServeProcess, content: bytes) -> None:
    tgi = httpx.post(server.url + "/generate", content=content, headers=JSON)
    assert_tgi_validation(tgi, "")
    v1 = httpx.post(server.url + "/v1/chat/completions", content=content, headers=JSON)
    assert_openai_validation(v1, "")
    assert "detail" not in tgi.json() and "detail" not in v1.json()


def test_unknown_route_and_method_in_route_shapes(server: ServeProcess) -> None:
    tgi = httpx.get(server.url + "/nowhere")
    assert tgi.status_code == 404 and tgi.json()["error_type"] == "not_found"
    v1 = httpx.get(server.url + "/v1/nowhere")
    assert v1.status_code == 404 and v1.json()["error"]["code"] == "not_found"
    wrong = httpx.get(server.url + "/generate")
    assert wrong.status_code == 405 and wrong.json()["error_type"] == "method_not_allowed"
    assert "POST" in wrong.headers["allow"]


def test_head_health(server: ServeProcess, strict: ServeProcess) -> None:
    for s in (server, strict):
        r = httpx.head(s.url + "/health")
        assert r.status_code == 200 and r.content == b""


def test_openapi_security_and_error_responses(strict: ServeProcess, auth: dict[str, str]) -> None:
    assert httpx.get(strict.url + "/openapi.json").status_code == 401
    schema = httpx.get(strict.url + "/openapi.json", headers=auth).json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path, item in schema["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            if path in ("/health", "/ready", "/metrics"):
                assert "security" not in op and "401" not in codes, (path, method)
                continue
            assert op["security"] == [{"bearerAuth": []}], (path, method)
            assert {"401", "503"} <= codes, (path, method)
            ref = op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"]
            family = "OpenAIError" if path.startswith("/v1/") else "ErrorBody"
            assert ref.endswith("/" + family), (path, method)
            if "requestBody" in op:
                validation = "400" if path.startswith("/v1/") else "422"
                assert {"413", validation} <= codes and not ({"400", "422"} - {validation}) & codes
    generate = schema["paths"]["/generate"]["post"]["responses"]
    assert {"429", "504"} <= set(generate)
    assert (
        "text/event-stream"
        in schema["paths"]["/v1/completions"]["post"]["responses"]["200"]["content"]
    )


def test_openapi_without_keys_allows_anonymous(server: ServeProcess) -> None:
    schema = httpx.get(server.url + "/openapi.json").json()
    assert schema["paths"]["/generate"]["post"]["security"] == [{"bearerAuth": []}, {}]
