"""Admission control: slots, a bounded FIFO queue, 429 beyond it, deadlines in the queue."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.admission import Admission
from server.errors import DeadlineExceeded, Overloaded


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_slots_then_queue_then_overloaded() -> None:
    async def scenario() -> None:
        gate = Admission(max_concurrent=2, max_queue=1)
        await gate.acquire()
        await gate.acquire()
        assert (gate.running, gate.waiting) == (2, 0)
        queued = asyncio.ensure_future(gate.acquire())
        await asyncio.sleep(0)
        assert gate.waiting == 1 and not queued.done()
        with pytest.raises(Overloaded, match="max_queue=1") as info:
            await gate.acquire()
        assert info.value.retry_after >= 1
        gate.release(0.5)
        await asyncio.wait_for(queued, 1)
        assert (gate.running, gate.waiting) == (2, 0)
        gate.release()
        gate.release()
        assert gate.running == 0

    run(scenario())


def test_waiters_are_served_first_in_first_out() -> None:
    async def scenario() -> None:
        gate = Admission(max_concurrent=1, max_queue=5)
        await gate.acquire()
        order: list[int] = []

        async def wait(i: int) -> None:
            await gate.acquire()
            order.append(i)

        tasks = [asyncio.ensure_future(wait(i)) for i in range(3)]
        await asyncio.sleep(0)
        for _ in range(3):
            gate.release()
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2] and gate.running == 1

    run(scenario())


def test_deadline_in_the_queue_and_cancel_leak_no_slot() -> None:
    async def scenario() -> None:
        gate = Admission(max_concurrent=1, max_queue=2)
        await gate.acquire()
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="in the queue"):
            await gate.acquire(deadline=start + 0.05)
        assert 0.04 < time.monotonic() - start < 1
        cancelled = asyncio.ensure_future(gate.acquire())
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        assert gate.waiting == 0
        gate.release()
        assert gate.running == 0
        await gate.acquire()
        assert gate.running == 1

    run(scenario())
