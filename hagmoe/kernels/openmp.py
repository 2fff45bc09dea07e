"""The OpenMP runtime torch runs on (libgomp on Linux), as far as the engine thread needs it.

libgomp throttles its workers' spin-wait to almost nothing once it manages more threads than
there are CPUs, and every thread that ever ran a parallel region keeps its own team. A process
that loads the model on the main thread and then steps the engine on another thread has two
teams, so on a 2-CPU machine each parallel region of the engine pays a futex wake-up (about
50 us): small ops ran 2-8x slower and the whole engine 26% slower. Releasing the loading
thread's team before the engine thread starts keeps one team, spinning as intended.
"""

from __future__ import annotations

import ctypes
import functools
import logging

logger = logging.getLogger(__name__)

OMP_PAUSE_SOFT = 1


@functools.cache
def _libgomp() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libgomp.so.1")  # the copy torch loaded, found by its soname
    except OSError:
        return None


def release_thread_team() -> bool:
    """Let the calling thread's OpenMP workers exit (omp_pause_resource_all, soft); the next
    parallel region on this thread starts a new team. False where there is no libgomp."""
    lib = _libgomp()
    if lib is None or not hasattr(lib, "omp_pause_resource_all"):
        return False
    if lib.omp_pause_resource_all(OMP_PAUSE_SOFT) != 0:
        logger.debug("omp_pause_resource_all refused")
        return False
    return True
