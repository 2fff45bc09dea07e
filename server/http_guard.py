"""The ASGI middleware in front of every REST route: request id, draining, API key, body size,
the access log line and hagmoe_requests_total (a pure ASGI middleware, so disconnects reach
the handlers)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import request_context
from server.auth import OPEN_HTTP_PATHS, KeyRing
from server.errors import (
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    api_of_path,
    error_response,
)
from server.lifecycle import Lifecycle
from server.metrics import Metrics

access_log = logging.getLogger("hagmoe.access")

ROUTES = frozenset(
    {
        "/",
        "/generate",
        "/generate_stream",
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/models",
        "/tokenize",
        "/detokenize",
        "/info",
        "/health",
        "/ready",
        "/metrics",
    }
)
OUTCOME_OF_STATUS = {
    400: "invalid",
    401: "unauthorized",
    404: "not_found",
    408: "timeout",
    413: "too_large",
    422: "invalid",
    429: "overloaded",
    499: "cancelled",
    503: "unavailable",
    504: "timeout",
}
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def outcome_of(status: int) -> str:
    if status < 400:
        return "success"
    return OUTCOME_OF_STATUS.get(status, "error" if status >= 500 else "invalid")


class HttpGuard:
    def __init__(
        self,
        app: ASGIApp,
        keys: KeyRing,
        lifecycle: Lifecycle,
        metrics: Metrics,
        max_body: int,
        body_timeout: float | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.max_body = max_body
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        headers = Headers(scope=scope)
        ctx = request_context.begin(request_context.new_request_id(headers.get("x-request-id")))
        status = {"code": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                MutableHeaders(scope=message)["X-Request-Id"] = ctx.request_id
            await send(message)

        try:
            await self._handle(scope, receive, send_with_id, headers)
        finally:
            self._record(scope, status["code"], ctx.outcome, start)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        path: str = scope["path"]
        try:
            if path not in OPEN_HTTP_PATHS:
                self.lifecycle.check_accepting()
                self.keys.check(headers.get("authorization"))
            if scope["method"] in BODY_METHODS:
                receive = await self._buffer_body(receive, headers)
        except ServiceError as err:
            response = error_response(err, api_of_path(path))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _buffer_body(self, receive: Receive, headers: Headers) -> Receive:
        """Read the whole body (413 past max_body, 408 past body_timeout) and replay it."""
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise _too_large(int(declared), self.max_body)
        try:
            async with asyncio.timeout(self.body_timeout):
                return await self._read_body(receive)
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within body_timeout={self.body_timeout}s"
            ) from None

    async def _read_body(self, receive: Receive) -> Receive:
        chunks: list[bytes] = []
        size = 0
        pending: list[Message] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                pending.append(message)
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _too_large(size, self.max_body)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        pending.insert(0, {"type": "http.request", "body": b"".join(chunks), "more_body": False})
        return _replay(pending, receive)

    def _record(self, scope: Scope, status: int, outcome: str | None, start: float) -> None:
        path: str = scope["path"]
        route = path if path in ROUTES else "other"
        self.metrics.requests.labels(route=route, outcome=outcome or outcome_of(status)).inc()
        if path not in OPEN_HTTP_PATHS or status >= 400:
            access_log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "outcome": outcome or outcome_of(status),
                    "duration_ms": round((time.monotonic() - start) * 1e3, 1),
                },
            )


def _too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body of {size} bytes exceeds max_body_bytes={limit}")


def _replay(pending: list[Message], receive: Receive) -> Callable[[], Awaitable[Message]]:
    async def replay() -> MutableMapping[str, Any]:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
