"""The server's event-loop thread gives up wake-up preemption (SCHED_BATCH) once the engine
thread exists: the engine thread keeps its policy, threads the frontend starts later inherit."""

from __future__ import annotations

import os
import threading

import pytest

from server.serve import frontend_without_wakeup_preemption

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="no SCHED_BATCH here")


def test_frontend_thread_is_batch_and_the_engine_thread_is_not() -> None:
    policies: dict[str, int] = {}
    go = threading.Event()

    def record(name: str) -> None:
        policies[name] = os.sched_getscheduler(threading.get_native_id())

    def engine() -> None:
        go.wait()
        record("engine")

    def frontend() -> None:  # in its own thread: the test process keeps its policy
        started = threading.Thread(target=engine)
        started.start()
        assert frontend_without_wakeup_preemption()
        record("frontend")
        later = threading.Thread(target=record, args=("later",))
        later.start()
        later.join()
        go.set()
        started.join()

    thread = threading.Thread(target=frontend)
    thread.start()
    thread.join()
    assert policies == {
        "frontend": os.SCHED_BATCH,
        "later": os.SCHED_BATCH,
        "engine": os.sched_getscheduler(0),
    }
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
