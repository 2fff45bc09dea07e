"""Typed engine errors. The server maps each to one HTTP and one gRPC status, in one place."""

from __future__ import annotations

from hagmoe.model.errors import HagMoEError


class InvalidRequestError(HagMoEError, ValueError):
    """A request field is outside its limit; `field` names it and the message gives the limit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class EngineOverloadedError(HagMoEError):
    """Too many requests running or queued; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineDeadError(HagMoEError):
    """The engine loop has stopped (shutdown or a fatal error) and takes no more requests."""
