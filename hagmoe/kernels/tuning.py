"""Per-machine crossovers between the float32 kernels and torch's own path (MKL), measured once
for each kernel library and thread count and cached beside the library
(`cpu_kernels-<digest>.tuning-<threads>t.json`), so that the choice follows the CPU at hand.

The kernels win at the few rows of decode steps and lose to MKL's GEMMs at prefill sizes; where
the two cross depends on the CPU (AVX-512 or not, core count, cache sizes). `crossover` times
both at increasing sizes and keeps the largest up to which the kernel never lost, never below
the first: the linear on a [1024, 1024] weight at row counts ROW_STEPS (decode batches keep
their one-call path), the experts of a MOE_SHAPE layer at routed pairs per expert PAIR_STEPS.

Legend: m rows, E experts, d hidden size, F expert FFN size.
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
from hagmoe.kernels.torch_experts import grouped_swiglu

logger = logging.getLogger(__name__)

ROW_STEPS = (16, 32, 64, 128, 256, 512)
PAIR_STEPS = (32, 64, 128, 256, 512, 1024)
DEFAULT = (128, 128, 512)  # where the library cannot be had (then nothing asks)
SHAPE = (1024, 1024)  # [n, k] of the timed weight
MOE_SHAPE = (4, 256, 512)  # E, d, F of the timed experts; two experts a token


@dataclass(frozen=True, slots=True)
class Tuning:
    """Rows up to which the float32 linear kernel runs: against MKL over its own panels (a
    weight packed in place) and against F.linear on the plain weight (a parameter); routed
    pairs per expert on average up to which the float32 MoE kernel runs."""

    panel_rows: int
    plain_rows: int
    moe_pairs: int


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


def crossover(
    kernel: Callable[[int], float], torch_path: Callable[[int], float], steps: tuple[int, ...]
) -> int:
    """The largest of steps up to which kernel(m) <= torch_path(m) (seconds), steps[0] at
    least. A loss is timed once more before it counts: on a loaded machine one noisy timing
    would otherwise fix a small crossover for good (it is cached)."""
    best = steps[0]
    for m in steps:
        if kernel(m) > torch_path(m) and kernel(m) > torch_path(m):
            break
        best = m
    return best


def measure() -> Tuning:
    """Time the kernels against torch's paths on this machine, at torch's thread count."""
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
                kernel,
                lambda m: median_seconds(lambda: panels_matmul(x[m], panels, n)),
                ROW_STEPS,
            ),
            plain_rows=crossover(
                kernel, lambda m: median_seconds(lambda: F.linear(x[m], weight)), ROW_STEPS
            ),
            moe_pairs=_moe_crossover(g),
        )


def _moe_crossover(g: torch.Generator) -> int:
    """PAIR_STEPS crossover of the MoE kernel against the experts' torch path (grouped_swiglu)
    on MOE_SHAPE experts, each token routed to two."""
    e, d, f = MOE_SHAPE
    w1, w2 = torch.randn(2, e, f, d, generator=g) * d**-0.5
    w3 = torch.randn(e, d, f, generator=g) * f**-0.5
    gate_up, down = cpu.pack_experts(w1, w2, w3)

    def routed(pairs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens = pairs * e // 2
        first = torch.arange(tokens) % e
        chosen = torch.stack((first, (first + 1) % e), dim=1)  # [T, 2]: `pairs` an expert
        return torch.randn(tokens, d, generator=g), chosen, torch.full((tokens, 2), 0.5)

    calls = {p: routed(p) for p in PAIR_STEPS}
    return crossover(  # one call a repeat: the largest steps take milliseconds
        lambda p: median_seconds(lambda: cpu.moe_swiglu(*calls[p], gate_up, down), calls=1),
        lambda p: median_seconds(lambda: grouped_swiglu(*calls[p], w1, w2, w3), calls=1),
        PAIR_STEPS,
    )


def moe_kernel_wins(experts: torch.Tensor, num_experts: int) -> bool:
    """Whether the float32 MoE kernel serves a call routing `experts` [T, K] (-1: none) over
    num_experts: while the routed pairs per expert on average stay within moe_pairs."""
    return int((experts >= 0).sum()) <= tuning().moe_pairs * num_experts


def _path(library: Path, threads: int) -> Path:
    return library.with_name(f"{library.stem}.tuning-{threads}t.json")


@functools.cache
def _tuning(threads: int) -> Tuning:
    lib = cpu.library()
    if lib is None:
        return Tuning(*DEFAULT)
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
