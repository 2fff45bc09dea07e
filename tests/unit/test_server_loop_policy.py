"""The event loop's scheduling policy follows the number of running requests."""

from __future__ import annotations

import os
import threading

import pytest

from hagmoe.engine.engine_core import StepStats
from server.loop_policy import EventLoopPolicy

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux policies")


def _policies_seen(running: list[int]) -> list[int]:
    """Step a policy built on a thread of its own through `running`; that thread's policy
    after each step."""
    seen: list[int] = []

    def work() -> None:
        policy = EventLoopPolicy(max_running=8)
        for n in running:
            policy.on_step(StepStats(num_running=n))
            seen.append(os.sched_getscheduler(0))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return seen


def test_batch_while_few_run_other_beyond() -> None:
    batch, other = os.SCHED_BATCH, os.SCHED_OTHER
    assert _policies_seen([1, 8, 9, 32, 3, 0]) == [batch, batch, other, other, batch, batch]


def test_the_callers_thread_is_left_alone() -> None:
    before = os.sched_getscheduler(0)
    _policies_seen([1])
    assert os.sched_getscheduler(0) == before
