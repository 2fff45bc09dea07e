"""Admission control: at most N requests generate at once, at most Q wait; beyond that, 429.
The one count of the server's in-flight and queued requests: draining and the gauges read it."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from server.errors import DeadlineExceeded, Overloaded


class Admission:
    """A FIFO semaphore with a bounded queue and a retry hint from recent request durations."""

    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        assert max_concurrent >= 1 and max_queue >= 0
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._free = max_concurrent
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._mean_duration = 1.0

    @property
    def running(self) -> int:
        return self.max_concurrent - self._free

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    @property
    def idle(self) -> bool:
        return self.running == 0 and self.waiting == 0

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` s until no request runs or waits; True if that happened."""
        if self.idle:
            return True
        idle: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle_waiters.append(idle)
        try:
            await asyncio.wait_for(asyncio.shield(idle), timeout)
        except TimeoutError:
            return self.idle
        finally:
            if idle in self._idle_waiters:
                self._idle_waiters.remove(idle)
        return True

    def _notify_if_idle(self) -> None:
        if not self.idle:
            return
        for idle in self._idle_waiters:
            if not idle.done():
                idle.set_result(None)
        self._idle_waiters.clear()

    def retry_after(self) -> float:
        backlog = self.waiting + 1
        return min(60.0, max(1.0, backlog * self._mean_duration / self.max_concurrent))

    async def acquire(self, deadline: float | None = None) -> None:
        """Take a slot, waiting in the queue until `deadline` (time.monotonic) at most."""
        if self._free > 0 and not self.waiting:
            self._free -= 1
            return
        if self.waiting >= self.max_queue:
            raise Overloaded(
                f"server overloaded: {self.running} requests running and {self.waiting} queued "
                f"(max_concurrent_requests={self.max_concurrent}, max_queue={self.max_queue}); "
                "retry later",
                self.retry_after(),
            )
        await self._wait(deadline)

    async def _wait(self, deadline: float | None) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        start = time.monotonic()
        timeout = None if deadline is None else max(0.0, deadline - start)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            self._give_back(waiter)
            raise DeadlineExceeded(
                f"deadline expired after {time.monotonic() - start:.2f}s in the queue"
            ) from None
        except BaseException:
            self._give_back(waiter)
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            self._notify_if_idle()

    def _give_back(self, waiter: asyncio.Future[None]) -> None:
        """Release the slot a waiter was handed (not one refused by fail_waiting)."""
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self.release()

    def fail_waiting(self, error: Exception) -> None:
        """Refuse every queued request with `error` (the drain deadline has passed)."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(error)

    def release(self, duration: float | None = None) -> None:
        """Free a slot (handing it to the first waiter); `duration` feeds the retry hint."""
        if duration is not None:
            self._mean_duration = 0.8 * self._mean_duration + 0.2 * duration
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
        assert self._free <= self.max_concurrent
        self._notify_if_idle()
