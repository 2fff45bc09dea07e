"""Per-request timings and the run's summary: throughput, TTFT / TPOT / ITL / E2EL statistics and
goodput under SLOs (the fields and definitions of vLLM's benchmark_serving)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SLO_METRICS = ("ttft", "tpot", "e2el")


@dataclass(slots=True)
class RequestOutput:
    """What one request measured (seconds). `itl`: gaps between successive token messages."""

    success: bool = False
    prompt_len: int = 0
    output_len: int = 0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0
    error: str = ""

    @property
    def tpot(self) -> float:
        """Time per output token after the first (0 for a single-token output)."""
        if self.output_len <= 1:
            return 0.0
        return (self.latency - self.ttft) / (self.output_len - 1)


class StreamTimer:
    """Times one streamed request: call `token()` as each token message arrives, then `finish`."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.stamps: list[float] = []

    def token(self) -> None:
        self.stamps.append(time.perf_counter())

    def finish(self, out: RequestOutput) -> None:
        """Fill out's ttft, itl and latency (ttft stays 0 when no token arrived), and mark it a
        success when the stream ended with tokens."""
        out.latency = time.perf_counter() - self.start
        if self.stamps:
            out.ttft = self.stamps[0] - self.start
            out.itl = [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]
        out.success = out.output_len > 0
        if not out.success:
            out.error = "stream ended without tokens"


def parse_goodput(items: Sequence[str]) -> dict[str, float]:
    """["ttft:500", "tpot:50"] -> {"ttft": 500.0, "tpot": 50.0} (milliseconds)."""
    slos: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or name not in SLO_METRICS:
            raise ValueError(f"goodput SLO {item!r}: use NAME:MS with NAME in {SLO_METRICS}")
        ms = float(value)
        if ms <= 0:
            raise ValueError(f"goodput SLO {item!r}: milliseconds must be > 0")
        slos[name] = ms
    return slos


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation, as numpy's default."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def describe(name: str, seconds: Sequence[float]) -> dict[str, float]:
    """mean / median / p99 of `name` in milliseconds (0 when there are no values)."""
    ms = [s * 1000.0 for s in seconds]
    return {
        f"mean_{name}_ms": statistics.fmean(ms) if ms else 0.0,
        f"median_{name}_ms": percentile(ms, 50),
        f"p99_{name}_ms": percentile(ms, 99),
    }


def is_good(out: RequestOutput, slos: dict[str, float]) -> bool:
    values = {"ttft": out.ttft, "tpot": out.tpot, "e2el": out.latency}
    return all(values[name] * 1000.0 <= ms for name, ms in slos.items())


def summarize(
    outputs: Sequence[RequestOutput], duration: float, slos: dict[str, float] | None = None
) -> dict[str, Any]:
    """The run's report (JSON-ready). Failed requests count only in `failed` and `errors`."""
    done = [o for o in outputs if o.success]
    slos = slos or {}
    input_tokens = sum(o.prompt_len for o in done)
    output_tokens = sum(o.output_len for o in done)
    good = sum(is_good(o, slos) for o in done) if slos else None
    report: dict[str, Any] = {
        "completed": len(done),
        "failed": len(outputs) - len(done),
        "errors": sorted({o.error for o in outputs if not o.success})[:10],
        "duration_s": duration,
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": len(done) / duration,
        "output_throughput": output_tokens / duration,
        "total_token_throughput": (input_tokens + output_tokens) / duration,
        "goodput_slos_ms": slos,
        "good_requests": good,
        "request_goodput": None if good is None else good / duration,
    }
    report |= describe("ttft", [o.ttft for o in done])
    report |= describe("tpot", [o.tpot for o in done if o.output_len > 1])
    report |= describe("itl", [gap for o in done for gap in o.itl])
    report |= describe("e2el", [o.latency for o in done])
    return report
