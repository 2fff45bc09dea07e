"""Per-machine crossovers between the float32 linear kernel and torch's own path (MKL), measured
once for each kernel library and thread count and cached beside the library
(`cpu_kernels-<digest>.tuning-<threads>t.json`), so that the choice follows the CPU at hand.

The kernel wins at the few rows of decode steps and loses to MKL's GEMMs at prefill sizes; where
the two cross depends on the CPU (AVX-512 or not, core count, cache sizes). `crossover` times
both on a [1024, 1024] weight at row counts ROW_STEPS and keeps the largest count up to which the
kernel never lost; it is never below MIN_ROWS (decode batches keep their one-call path).

Legend: m rows.
"""

from __future__ import annotations

import functools
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from hagmoe.kernels import cpu

logger = logging.getLogger(__name__)

ROW_STEPS = (16, 32, 64, 128, 256, 512)
MIN_ROWS = ROW_STEPS[0]
DEFAULT_ROWS = 128  # where the library cannot be had (then nothing asks)
SHAPE = (1024, 1024)  # [n, k] of the timed weight


@dataclass(frozen=True, slots=True)
class Tuning:
    """Rows up to which the float32 linear kernel runs: against MKL over its own panels (a
    weight packed in place) and against F.linear on the plain weight (a parameter)."""

    panel_rows: int
    plain_rows: int


def median_seconds(fn: Callable[[], object], repeats: int = 3, calls: int = 3) -> float:
    """The median over `repeats` of fn's mean time over `calls` calls, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def panels_matmul(x: torch.Tensor, panels: torch.Tensor, n: int) -> torch.Tensor:
    """x [m, k] @ weight^T by MKL over the kernel's panels [P, k, 32] in place -> [m, n]."""
    return torch.matmul(x, panels).permute(1, 0, 2).reshape(x.shape[0], -1)[:, :n]


def crossover(kernel: Callable[[int], float], torch_path: Callable[[int], float]) -> int:
    """The largest of ROW_STEPS up to which kernel(m) <= torch_path(m) (seconds), MIN_ROWS at
    least."""
    best = MIN_ROWS
    for m in ROW_STEPS:
        if kernel(m) > torch_path(m):
            break
        best = m
    return best


def measure() -> Tuning:
    """Time the kernel against both torch paths on this machine, at torch's thread count."""
    n, k = SHAPE
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(n, k, generator=g)
    panels = cpu.pack_linear(weight)
    x = {m: torch.randn(m, k, generator=g) for m in ROW_STEPS}

    def kernel(m: int) -> float:
        return median_seconds(lambda: cpu.linear(x[m], panels, n))

    with torch.inference_mode():
        return Tuning(
            panel_rows=crossover(
                kernel, lambda m: median_seconds(lambda: panels_matmul(x[m], panels, n))
            ),
            plain_rows=crossover(kernel, lambda m: median_seconds(lambda: F.linear(x[m], weight))),
        )


def _path(library: Path, threads: int) -> Path:
    return library.with_name(f"{library.stem}.tuning-{threads}t.json")


@functools.cache
def _tuning(threads: int) -> Tuning:
    lib = cpu.library()
    if lib is None:
        return Tuning(DEFAULT_ROWS, DEFAULT_ROWS)
    path = _path(Path(lib._name), threads)
    try:
        return Tuning(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    found = measure()
    try:
        path.write_text(json.dumps(asdict(found)))
    except OSError as exc:
        logger.warning("cannot cache the kernel tuning at %s: %s", path, exc)
    logger.info("kernel tuning measured", extra={"tuning": asdict(found), "threads": threads})
    return found


def tuning() -> Tuning:
    """This machine's crossovers at torch's current thread count (measured on first use)."""
    return _tuning(torch.get_num_threads())
