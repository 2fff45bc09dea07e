"""Offline throughput and latency of the engine against its two baselines, in one process."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from hagmoe.bench.baselines import naive_generate, static_batch_generate
from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model.model import HagMoEModel


@dataclass(slots=True)
class Workload:
    prompts: list[list[int]]
    output_lens: list[int]

    @classmethod
    def random(
        cls,
        num_requests: int,
        input_len: int,
        output_min: int,
        output_max: int,
        vocab_size: int,
        seed: int,
    ) -> Workload:
        rng = random.Random(seed)
        prompts = [
            [rng.randrange(vocab_size) for _ in range(input_len)] for _ in range(num_requests)
        ]
        return cls(prompts, [rng.randint(output_min, output_max) for _ in range(num_requests)])

    def head(self, n: int) -> Workload:
        return Workload(self.prompts[:n], self.output_lens[:n])


@dataclass(slots=True)
class BenchResult:
    system: str
    concurrency: int
    num_requests: int
    output_tokens: int
    seconds: float
    ttft_median: float | None = None
    latency_median: float | None = None
    extra: dict[str, float] = field(default_factory=dict)
    seconds_all: list[float] = field(default_factory=list)  # every repeat; `seconds` the median

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "tokens_per_second": self.tokens_per_second}


def run_engine(engine: EngineCore, work: Workload, concurrency: int) -> BenchResult:
    """All requests queued at once, `concurrency` (max_num_seqs) in flight, greedy, no EOS."""
    ttft, latency, tokens = [], [], 0
    start = time.perf_counter()
    for i, (prompt, n) in enumerate(zip(work.prompts, work.output_lens, strict=True)):
        engine.add_request(
            f"bench-{i}", prompt, SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True)
        )
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens += len(out.new_token_ids)
            if out.finished and out.first_token_time and out.finished_time:
                ttft.append(out.first_token_time - out.arrival_time)
                latency.append(out.finished_time - out.arrival_time)
    seconds = time.perf_counter() - start
    return BenchResult(
        "hagmoe engine",
        concurrency,
        len(work.prompts),
        tokens,
        seconds,
        statistics.median(ttft),
        statistics.median(latency),
    )


def _timed(
    system: str, concurrency: int, work: Workload, fn: Callable[[], list[list[int]]]
) -> BenchResult:
    start = time.perf_counter()
    outs = fn()
    seconds = time.perf_counter() - start
    return BenchResult(system, concurrency, len(work.prompts), sum(map(len, outs)), seconds)


def bench(
    model: HagMoEModel,
    work: Workload,
    concurrency: int,
    config: EngineConfig,
    naive_requests: int | None = None,
    baselines: bool = True,
    repeats: int = 1,
) -> list[BenchResult]:
    """The engine and static batching, alternating `repeats` times (each reported by its median
    run), then the naive recompute once, on the same requests."""
    config.max_num_seqs = concurrency
    engine_runs, static_runs = [], []
    for _ in range(repeats):
        engine_runs.append(run_engine(_fresh_engine(model, config), work, concurrency))
        if baselines:
            static_runs.append(_run_static(_fresh_engine(model, config), work, concurrency))
    results = [median_run(runs) for runs in (engine_runs, static_runs) if runs]
    if baselines:
        naive = work.head(naive_requests or concurrency)
        with torch.inference_mode():
            results.append(
                _timed(
                    "naive recompute",
                    concurrency,
                    naive,
                    lambda: naive_generate(model, naive.prompts, naive.output_lens, concurrency),
                )
            )
    return results


def _run_static(engine: EngineCore, work: Workload, concurrency: int) -> BenchResult:
    return _timed(
        "static batching",
        concurrency,
        work,
        lambda: static_batch_generate(engine, work.prompts, work.output_lens, concurrency),
    )


def median_run(runs: list[BenchResult]) -> BenchResult:
    """The run of median time (the upper middle of an even count), with every run's seconds."""
    result = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]
    result.seconds_all = [r.seconds for r in runs]
    return result


def _fresh_engine(model: HagMoEModel, config: EngineConfig) -> EngineCore:
    """A new engine (empty prefix cache), warmed up on a prompt no request shares."""
    engine = EngineCore(model, None, config)
    prompt = list(range(1, 33))
    engine.add_request("warmup", prompt, SamplingParams(max_new_tokens=4, temperature=0.0))
    while engine.has_unfinished_requests():
        engine.step()
    return engine
