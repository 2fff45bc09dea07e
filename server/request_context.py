"""The current request's id and outcome, visible to handlers, streams and log lines."""

from __future__ import annotations

import contextvars
import re
import uuid
from dataclasses import dataclass

from server.logs import request_id_var

_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


@dataclass(slots=True)
class RequestContext:
    request_id: str
    outcome: str | None = None  # set by a handler when the status code does not tell


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "hagmoe_request", default=None
)


def new_request_id(incoming: str | None = None) -> str:
    """The caller's X-Request-Id when it is sane, else a fresh one."""
    if incoming and _VALID_ID.match(incoming):
        return incoming
    return uuid.uuid4().hex


def begin(request_id: str) -> RequestContext:
    ctx = RequestContext(request_id)
    _current.set(ctx)
    request_id_var.set(request_id)
    return ctx


def current() -> RequestContext:
    ctx = _current.get()
    return ctx if ctx is not None else begin(new_request_id())


def set_outcome(outcome: str) -> None:
    current().outcome = outcome
