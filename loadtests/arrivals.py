"""When requests arrive: a Poisson process, a gamma process with a burstiness factor, or all at
once (rate inf), as in vLLM's benchmark_serving."""

from __future__ import annotations

import math
import random


def arrival_gaps(num: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Seconds to wait before each of `num` requests; the first is sent at once.

    Gaps are gamma distributed with shape `burstiness` and mean 1/rate: burstiness 1 is a
    Poisson process, below 1 is burstier, above 1 is more regular. rate inf: no gaps."""
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    if math.isinf(rate):
        return [0.0] * num
    if rate <= 0 or burstiness <= 0:
        raise ValueError(f"rate and burstiness must be > 0, got {rate} and {burstiness}")
    rng = random.Random(seed)
    scale = 1.0 / (rate * burstiness)
    return [0.0 if i == 0 else rng.gammavariate(burstiness, scale) for i in range(num)]
