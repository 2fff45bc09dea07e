"""uvicorn's HTTP protocol with a request-head timeout: uvicorn has none of its own, so a client
that opens a connection (or starts a request) and never finishes its headers would hold it for
good. The body has its own timeout in HttpGuard; idle keep-alive connections have uvicorn's."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("hagmoe.server")


class HeadTimeout(asyncio.Protocol):
    """Mixed in before a uvicorn HTTP protocol: the transport closes unless a full request
    head arrives within `head_timeout` s of the connection opening, or of the first byte of a
    later request on it. A new request head shows as a new `cycle` of the protocol."""

    head_timeout: ClassVar[float] = 10.0
    _head_timer: asyncio.TimerHandle | None = None
    _cycle_before: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self._between_requests():
            self._arm()
        super().data_received(data)
        if self._head_timer is not None and getattr(self, "cycle", None) is not self._cycle_before:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        cycle = getattr(self, "cycle", None)
        return cycle is None or bool(cycle.response_complete)

    def _arm(self) -> None:
        self._cycle_before = getattr(self, "cycle", None)
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self.head_timeout, self._expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expired(self) -> None:
        self._head_timer = None
        transport: asyncio.Transport | None = getattr(self, "transport", None)
        if transport is not None and not transport.is_closing():
            peer = transport.get_extra_info("peername")
            logger.info(
                "closed a connection without a full request head",
                extra={"client": str(peer), "header_timeout": self.head_timeout},
            )
            transport.close()


def http_protocol(head_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's fastest HTTP protocol (httptools when installed, else h11) with HeadTimeout."""
    base: type[asyncio.Protocol]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    except ImportError:  # pragma: no cover (httptools is a dependency)
        base = H11Protocol

    return type("HeadTimeoutProtocol", (HeadTimeout, base), {"head_timeout": head_timeout})
