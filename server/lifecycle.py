"""The server's readiness and draining state, and the count of generations in flight."""

from __future__ import annotations

import asyncio
import time

from server.errors import Unavailable


class Lifecycle:
    """Loading -> ready -> draining; new requests are refused unless ready."""

    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self.in_flight = 0
        self._idle: asyncio.Event | None = None

    def check_accepting(self) -> None:
        if self.draining:
            raise Unavailable("the server is shutting down and takes no new requests")
        if not self.ready:
            raise Unavailable("the server is not ready yet")

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        assert self.in_flight > 0
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests and wait up to `timeout` s for in-flight ones; True if all ended."""
        self.draining = True
        deadline = time.monotonic() + timeout
        while self.in_flight > 0:
            self._idle = asyncio.Event()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._idle.wait(), remaining)
            except TimeoutError:
                return self.in_flight == 0
        return True
