"""Arrival times of bench_serving: all at once, Poisson, gamma with burstiness."""

from __future__ import annotations

import math
import statistics

import pytest

from loadtests.arrivals import arrival_gaps


def test_infinite_rate_sends_everything_at_once() -> None:
    assert arrival_gaps(5, math.inf) == [0.0] * 5
    assert arrival_gaps(0, 3.0) == []


@pytest.mark.parametrize(("burstiness", "cv"), [(1.0, 1.0), (0.25, 2.0), (4.0, 0.5)])
def test_gaps_have_the_rate_and_the_burstiness(burstiness: float, cv: float) -> None:
    gaps = arrival_gaps(4001, rate=8.0, burstiness=burstiness, seed=1)
    assert gaps[0] == 0.0 and all(g > 0 for g in gaps[1:])
    mean = statistics.fmean(gaps[1:])
    assert mean == pytest.approx(1 / 8.0, rel=0.1)
    assert statistics.stdev(gaps[1:]) / mean == pytest.approx(cv, rel=0.15)


def test_seeded_and_validated() -> None:
    assert arrival_gaps(10, 2.0, seed=3) == arrival_gaps(10, 2.0, seed=3)
    assert arrival_gaps(10, 2.0, seed=3) != arrival_gaps(10, 2.0, seed=4)
    for rate, burst in [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0)]:
        with pytest.raises(ValueError):
            arrival_gaps(3, rate, burst)
