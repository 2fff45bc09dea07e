"""Typed engine errors. The server maps each to one HTTP and one gRPC status, in one place."""

from __future__ import annotations

from hagmoe.errors import HagMoEError


class InvalidRequestError(HagMoEError, ValueError):
    """A request field is outside its limit; `field` names it and the message gives the limit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class EngineDeadError(HagMoEError):
    """The engine loop has stopped (shutdown or a fatal error) and takes no more requests."""
