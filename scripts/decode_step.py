"""Decode-only speed of the engine: ms per step with `batch` requests in flight.

    python scripts/decode_step.py [--batch 1] [--config bench] [--quantization none]
                                  [--per-layer | --per-op] [--repeats 5] [--steps 20]
                                  [--profile 15]

The weights are packed in place in the `--quantization` format, as `hagmoe serve` holds them;
`--per-layer` turns off the one-call decode step (one call per layer instead),
`--per-op` its one-call layers too.
Each request has a 64-token prompt; after 5 warm-up steps every step decodes one token per
request. Prints the median and the minimum over the repeats. `--profile K` then profiles
`--steps` more steps with cProfile and prints the K functions with the most own time per
step (Python, torch ops, and the ctypes kernels inside their Python wrappers).
"""

from __future__ import annotations

import hagmoe.huge_pages  # noqa: F401 (before torch, which reads its setting on import)

# isort: split
import argparse
import cProfile
import pstats
import statistics
import time

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model import random_model
from hagmoe.model.layer import DecoderLayer
from hagmoe.quantization.format import QUANTIZATIONS, WeightFormat
from hagmoe.quantization.serving import pack_for_serving


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--config", default="bench")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="none")
    fusion = parser.add_mutually_exclusive_group()
    fusion.add_argument("--per-layer", action="store_true", help="no one-call decode step")
    fusion.add_argument(
        "--per-op", action="store_true", help="no one-call decode step or layers (per op)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--profile", type=int, default=0, help="top ops to print (0: none)")
    args = parser.parse_args()
    model = pack_for_serving(
        random_model(args.config, seed=0), WeightFormat.named(args.quantization)
    )
    if args.per_layer or args.per_op:
        model.decode_kernel = None
    if args.per_op:
        for layer in model.modules():
            if isinstance(layer, DecoderLayer):
                layer.decode_kernel = None
    engine = EngineCore(model, None, EngineConfig(max_num_seqs=args.batch))
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
    if args.profile:
        profile(engine, args.steps, args.profile)


def profile(engine: EngineCore, steps: int, top: int) -> None:
    """cProfile over `steps` steps: the functions (Python, torch ops, the ctypes kernels
    inside their wrappers) with the most own time, per step."""
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(steps):
        engine.step()
    profiler.disable()
    wall_us = (time.perf_counter() - start) / steps * 1e6
    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
    print(f"per step, profiled: {wall_us:.0f} us wall (cProfile adds its own cost)")
    print(f"{'function':<60}{'calls/step':>11}{'us/step':>10}{'share':>8}")
    for (file, line, name), (_, calls, own, _, _) in rows[:top]:
        where = f"{file.rsplit('/', 1)[-1]}:{line} {name}" if line else name
        us = own / steps * 1e6
        print(f"{where[:59]:<60}{calls / steps:>11.1f}{us:>10.0f}{us / wall_us:>8.1%}")


if __name__ == "__main__":
    main()
