"""EventLoopPolicy: the event loop thread's CPU scheduling policy, set from the engine's batch.

When the engine's OpenMP team holds every CPU, the event loop, woken once a step to stream the
step's tokens, preempts a thread of the team mid-kernel and the whole step waits for it. As
SCHED_BATCH the loop is not run on wake-up: it takes the CPU the team leaves between kernels
(one stream of S on 2 vCPUs: 5-11% more tokens a second). With many streams the loop's work a
step outgrows those gaps and waiting for them costs more (16 and 32 streams: 11-12% fewer), so
the policy holds only while few requests run (docs/benchmarks.md, "The event loop's policy")."""

from __future__ import annotations

import logging
import os
import threading

import torch

from hagmoe.engine.engine_core import StepStats

logger = logging.getLogger(__name__)

MAX_BATCH_RUNNING = 8  # running requests up to which the loop yields (crossover 8-16 on S)


class EventLoopPolicy:
    """Step listener (engine thread) that switches the calling thread's policy at construction
    between SCHED_BATCH (at most max_running requests running) and SCHED_OTHER."""

    def __init__(self, max_running: int = MAX_BATCH_RUNNING) -> None:
        self.thread_id = threading.get_native_id()
        self.max_running = max_running
        self.policy = os.sched_getscheduler(self.thread_id)

    @staticmethod
    def wanted() -> bool:
        """The engine's threads take every CPU this process may run on (Linux only)."""
        if not hasattr(os, "SCHED_BATCH"):
            return False
        return torch.get_num_threads() >= len(os.sched_getaffinity(0))

    def on_step(self, stats: StepStats) -> None:
        """Set the policy for the number of requests the step left running."""
        want = os.SCHED_BATCH if stats.num_running <= self.max_running else os.SCHED_OTHER
        if want == self.policy:
            return
        try:
            os.sched_setscheduler(self.thread_id, want, os.sched_param(0))
        except OSError as exc:  # a sandbox that forbids it: tried once a switch
            logger.debug("sched_setscheduler refused: %s", exc)
        self.policy = want
