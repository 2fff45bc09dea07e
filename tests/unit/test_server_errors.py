"""The one error mapping: exception -> HTTP status, TGI and OpenAI bodies, gRPC status."""

from __future__ import annotations

import json

import grpc
import pytest
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from hagmoe.engine.errors import EngineDeadError, InvalidRequestError
from hagmoe.errors import TokenizerError
from server.errors import (
    ClientGone,
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    Unavailable,
    api_of_path,
    error_body,
    error_response,
    grpc_status,
    http_status,
    sse_error_event,
    to_service_error,
)

TABLE = [
    (InvalidInput("x"), 422, 400, grpc.StatusCode.INVALID_ARGUMENT, "validation"),
    (Unauthorized("x"), 401, 401, grpc.StatusCode.UNAUTHENTICATED, "unauthorized"),
    (PayloadTooLarge("x"), 413, 413, grpc.StatusCode.RESOURCE_EXHAUSTED, "payload_too_large"),
    (Overloaded("x"), 429, 429, grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded"),
    (Unavailable("x"), 503, 503, grpc.StatusCode.UNAVAILABLE, "unavailable"),
    (DeadlineExceeded("x"), 504, 504, grpc.StatusCode.DEADLINE_EXCEEDED, "timeout"),
    (ClientGone("x"), 499, 499, grpc.StatusCode.CANCELLED, "cancelled"),
    (ModelNotFound("x"), 404, 404, grpc.StatusCode.NOT_FOUND, "not_found"),
    (InternalError("x"), 500, 500, grpc.StatusCode.INTERNAL, "generation"),
]


@pytest.mark.parametrize(("err", "tgi", "openai", "code", "kind"), TABLE)
def test_statuses_and_kinds(
    err: ServiceError, tgi: int, openai: int, code: grpc.StatusCode, kind: str
) -> None:
    assert http_status(err, "tgi") == tgi and http_status(err, "openai") == openai
    assert grpc_status(err) == (code, "x")
    assert error_body(err, "tgi") == {"error": "x", "error_type": kind}
    body = error_body(err, "openai")["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["code"] == kind


def test_engine_errors_map_to_service_errors() -> None:
    invalid = to_service_error(InvalidRequestError("top_p", "must lie in (0, 1], got 2"))
    assert isinstance(invalid, InvalidInput) and invalid.param == "top_p"
    assert invalid.message == "top_p: must lie in (0, 1], got 2"
    overloaded = to_service_error(Overloaded("busy", retry_after=2.2))
    assert isinstance(overloaded, Overloaded) and overloaded.headers() == {"Retry-After": "3"}
    assert isinstance(to_service_error(EngineDeadError("gone")), Unavailable)
    assert isinstance(to_service_error(TokenizerError("bad id")), InvalidInput)
    internal = to_service_error(RuntimeError("secret detail"))
    assert isinstance(internal, InternalError) and "secret" not in internal.message


def test_validation_errors_name_the_field() -> None:
    exc = RequestValidationError(
        [{"loc": ("body", "parameters", "top_k"), "msg": "Input should be a valid integer"}]
    )
    err = to_service_error(exc)
    assert isinstance(err, InvalidInput) and err.param == "parameters.top_k"
    assert "parameters.top_k: Input should be a valid integer" in err.message


def test_parse_errors_and_refused_values_are_named() -> None:
    bad_json = RequestValidationError(
        [
            {
                "type": "json_invalid",
                "loc": ("body", 1),
                "msg": "JSON decode error",
                "ctx": {"error": "Expecting value"},
            }
        ]
    )
    err = to_service_error(bad_json)
    assert isinstance(err, InvalidInput) and err.param is None
    assert err.message == "body: invalid JSON (Expecting value)"
    typed = RequestValidationError(
        [{"loc": ("body", "n"), "msg": "Input should be a valid integer", "input": "4"}]
    )
    assert to_service_error(typed).message == "n: Input should be a valid integer, got '4'"


def test_starlette_http_errors_map_to_service_errors() -> None:
    assert isinstance(to_service_error(HTTPException(400, "bad body")), InvalidInput)
    assert to_service_error(HTTPException(404)).http_status == 404
    wrong = to_service_error(HTTPException(405, headers={"Allow": "POST"}))
    assert wrong.http_status == 405 and wrong.headers() == {"Allow": "POST"}
    assert error_body(wrong, "tgi")["error_type"] == "method_not_allowed"


def test_responses_carry_retry_after_and_request_id() -> None:
    response = error_response(Overloaded("busy", 0.2), "openai", request_id="r1")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1" and response.headers["x-request-id"] == "r1"
    assert json.loads(bytes(response.body))["error"]["type"] == "rate_limit_error"


def test_stream_error_event_and_route_shapes() -> None:
    event = sse_error_event(DeadlineExceeded("late"), "tgi")
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert json.loads(event[6:]) == {"error": "late", "error_type": "timeout"}
    assert api_of_path("/v1/completions") == "openai" and api_of_path("/generate") == "tgi"
