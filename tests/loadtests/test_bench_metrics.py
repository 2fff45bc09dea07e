"""The bench_serving summary: throughput, percentiles, TPOT and goodput."""

from __future__ import annotations

import numpy as np
import pytest

from loadtests.metrics import RequestOutput, parse_goodput, percentile, summarize


def out(ttft: float, latency: float, n: int, itl: list[float] | None = None) -> RequestOutput:
    return RequestOutput(True, 10, n, ttft, itl or [], latency)


def test_percentile_matches_numpy() -> None:
    values = [5.0, 1.0, 9.0, 2.5, 7.0, 3.0]
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([], 50) == 0.0


def test_summary_counts_throughput_and_latency() -> None:
    outputs = [
        out(0.1, 1.1, 11, [0.1] * 10),
        out(0.3, 2.3, 5, [0.5] * 4),
        RequestOutput(error="HTTP 429: overloaded"),
    ]
    report = summarize(outputs, duration=2.0)
    assert (report["completed"], report["failed"]) == (2, 1)
    assert report["errors"] == ["HTTP 429: overloaded"]
    assert report["total_input_tokens"] == 20 and report["total_output_tokens"] == 16
    assert report["request_throughput"] == 1.0 and report["output_throughput"] == 8.0
    assert report["total_token_throughput"] == 18.0
    assert report["mean_ttft_ms"] == pytest.approx(200.0)
    assert report["median_tpot_ms"] == pytest.approx(300.0)  # (100 + 500) / 2
    assert report["p99_itl_ms"] == pytest.approx(500.0)
    assert report["median_itl_ms"] == pytest.approx(100.0)
    assert report["median_e2el_ms"] == pytest.approx(1700.0)
    assert report["request_goodput"] is None and report["good_requests"] is None


def test_goodput_counts_requests_within_every_slo() -> None:
    outputs = [out(0.1, 1.1, 11), out(0.3, 2.3, 5), out(0.05, 0.5, 1)]
    report = summarize(outputs, 2.0, parse_goodput(["ttft:200", "tpot:150"]))
    assert report["goodput_slos_ms"] == {"ttft": 200.0, "tpot": 150.0}
    assert report["good_requests"] == 2  # the second misses both SLOs; one token: tpot 0
    assert report["request_goodput"] == 1.0
    assert summarize(outputs, 2.0, {"e2el": 600.0})["good_requests"] == 1


@pytest.mark.parametrize("bad", ["ttft", "itl:5", "ttft:x", "tpot:0"])
def test_goodput_rejects_bad_slos(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_goodput([bad])
