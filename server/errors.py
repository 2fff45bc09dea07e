"""Every error the server reports, and its HTTP status, body shapes and gRPC status (one place)."""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar, Literal

import grpc
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from google.protobuf.message import DecodeError
from starlette.exceptions import HTTPException

from hagmoe.engine.errors import EngineDeadError, InvalidRequestError
from hagmoe.errors import TokenizerError

Api = Literal["tgi", "openai"]


class ServiceError(Exception):
    """A typed failure of one request; subclasses fix the statuses and the kind."""

    kind: ClassVar[str] = "generation"
    http_status: ClassVar[int] = 500
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    openai_type: ClassVar[str] = "server_error"
    outcome: ClassVar[str] = "error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        return {}


class InvalidInput(ServiceError):
    """A request field is outside its limit (422 on TGI routes, 400 on /v1)."""

    kind = "validation"
    http_status = 422
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    openai_type = "invalid_request_error"
    outcome = "invalid"


class RequestTimeout(ServiceError):
    """The client did not send its whole request body in time (408; the connection closes)."""

    kind = "request_timeout"
    http_status = 408
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    openai_type = "timeout"
    outcome = "timeout"

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class ModelNotFound(ServiceError):
    kind = "not_found"
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    openai_type = "invalid_request_error"
    outcome = "invalid"


class Unauthorized(ServiceError):
    kind = "unauthorized"
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    openai_type = "authentication_error"
    outcome = "unauthorized"


class PayloadTooLarge(ServiceError):
    kind = "payload_too_large"
    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    openai_type = "invalid_request_error"
    outcome = "too_large"


class Overloaded(ServiceError):
    """Too many requests running and queued; retry after `retry_after` seconds."""

    kind = "overloaded"
    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    openai_type = "rate_limit_error"
    outcome = "overloaded"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class Unavailable(ServiceError):
    """Not ready, draining, or the engine has stopped."""

    kind = "unavailable"
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    openai_type = "service_unavailable"
    outcome = "unavailable"


class DeadlineExceeded(ServiceError):
    kind = "timeout"
    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    openai_type = "timeout"
    outcome = "timeout"


class ClientGone(ServiceError):
    """The client disconnected or cancelled; nobody reads the answer."""

    kind = "cancelled"
    http_status = 499
    grpc_code = grpc.StatusCode.CANCELLED
    openai_type = "cancelled"
    outcome = "cancelled"


class RouteNotFound(ServiceError):
    kind = "not_found"
    http_status = 404
    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    openai_type = "invalid_request_error"
    outcome = "not_found"


class MethodNotAllowed(ServiceError):
    kind = "method_not_allowed"
    http_status = 405
    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    openai_type = "invalid_request_error"
    outcome = "invalid"

    def __init__(self, message: str, allow: str | None = None) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow} if self.allow else {}


class InternalError(ServiceError):
    pass


def to_service_error(exc: BaseException) -> ServiceError:
    """Map any exception (engine, tokenizer, validation, unexpected) to a ServiceError."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, InvalidRequestError):
        return InvalidInput(str(exc), exc.field)
    if isinstance(exc, EngineDeadError):
        return Unavailable(str(exc) or "the engine is not running")
    if isinstance(exc, TokenizerError):
        return InvalidInput(str(exc))
    if isinstance(exc, DecodeError):
        return InvalidInput(f"request: not a valid message of this method ({exc})", "request")
    if isinstance(exc, RequestValidationError):
        return _from_validation(exc)
    if isinstance(exc, HTTPException):
        return _from_http(exc)
    return InternalError(f"internal error: {type(exc).__name__}")


def _from_http(exc: HTTPException) -> ServiceError:
    """Starlette's and FastAPI's own errors: no route (404), wrong method (405), a body that
    cannot be read as UTF-8 JSON (400: invalid input, like any other parse error)."""
    if exc.status_code == 404:
        return RouteNotFound("no such route; see /docs or /openapi.json")
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow")
        return MethodNotAllowed(f"method not allowed; allowed: {allow or 'see /docs'}", allow)
    if exc.status_code == 400:
        return InvalidInput(f"body: cannot be parsed as UTF-8 JSON ({exc.detail})")
    if exc.status_code < 500:
        return InvalidInput(str(exc.detail))
    return InternalError(f"internal error: {exc.detail}")


def _from_validation(exc: RequestValidationError) -> InvalidInput:
    """One message naming every offending field (and its value), the first field as `param`;
    a body that is not JSON says so with the parser's reason."""
    problems: list[str] = []
    first_param: str | None = None
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "JSON decode error")
            problems.append(f"body: invalid JSON ({reason})")
            continue
        loc = [str(part) for part in err.get("loc", ()) if part != "body"]
        where = ".".join(loc) or "body"
        first_param = first_param or (where if loc else None)
        if err.get("type") == "extra_forbidden":
            problems.append(f"{where}: not a field this server implements")
            continue
        problems.append(f"{where}: {err.get('msg', 'invalid')}{_got(err.get('input'))}")
    return InvalidInput("; ".join(problems) or "invalid request body", first_param)


def _got(value: Any) -> str:
    """`, got <value>` for a short scalar input (the value a limit refused)."""
    if isinstance(value, bool | int | float | str) and len(repr(value)) <= 40:
        return f", got {value!r}"
    return ""


def http_status(err: ServiceError, api: Api) -> int:
    if api == "openai" and isinstance(err, InvalidInput):
        return 400
    return err.http_status


def error_body(err: ServiceError, api: Api) -> dict[str, Any]:
    """TGI's `{"error", "error_type"}` or OpenAI's `{"error": {message, type, param, code}}`."""
    if api == "openai":
        return {
            "error": {
                "message": err.message,
                "type": err.openai_type,
                "param": err.param,
                "code": err.kind,
            }
        }
    return {"error": err.message, "error_type": err.kind}


def error_response(err: ServiceError, api: Api, request_id: str | None = None) -> JSONResponse:
    headers = err.headers()
    if request_id:
        headers["X-Request-Id"] = request_id
    return JSONResponse(error_body(err, api), status_code=http_status(err, api), headers=headers)


def sse_error_event(err: ServiceError, api: Api) -> bytes:
    """The last event of a stream that failed after it started."""
    return f"data: {json.dumps(error_body(err, api))}\n\n".encode()


def api_of_path(path: str) -> Api:
    return "openai" if path.startswith("/v1/") else "tgi"


def grpc_status(err: ServiceError) -> tuple[grpc.StatusCode, str]:
    return err.grpc_code, err.message
