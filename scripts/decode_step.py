"""Decode-only speed of the engine: ms per step with `batch` requests in flight.

    python scripts/decode_step.py [--batch 1] [--config bench] [--repeats 5] [--steps 20]

Each request has a 64-token prompt; after 5 warm-up steps every step decodes one token per
request. Prints the median and the minimum over the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model import random_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--config", default="bench")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    engine = EngineCore(
        random_model(args.config, seed=0), None, EngineConfig(max_num_seqs=args.batch)
    )
    vocab = engine.model.config.vocab_size
    params = SamplingParams(max_new_tokens=10_000, temperature=0.0, ignore_eos=True)
    for i in range(args.batch):
        engine.add_request(f"r{i}", [(i * 7 + j) % vocab for j in range(64)], params)
    for _ in range(5):
        engine.step()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        times.append((time.perf_counter() - start) / args.steps)
    median = statistics.median(times)
    print(
        f"batch {args.batch}: {median * 1e3:.2f} ms per step (min {min(times) * 1e3:.2f}), "
        f"{args.batch / median:.0f} tok/s"
    )


if __name__ == "__main__":
    main()
