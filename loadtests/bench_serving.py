"""Serving benchmark of a running hagmoe server, after vLLM's benchmarks/benchmark_serving.py.

Requests arrive as a Poisson process (or gamma, with --burstiness) at --request-rate, or all at
once (inf), at most --max-concurrency in flight; each streams over HTTP (TGI or OpenAI routes) or
gRPC GenerateStream with ignore_eos, so output lengths are exact. Example:

    python loadtests/bench_serving.py --base-url http://127.0.0.1:8000 --backend tgi \\
        --num-prompts 64 --request-rate 4 --max-concurrency 16 \\
        --goodput ttft:500 tpot:100 --result-file bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

if __package__ in (None, ""):  # run as a script: make `loadtests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtests.arrivals import arrival_gaps
from loadtests.metrics import RequestOutput, parse_goodput, summarize
from loadtests.prompts import DATASETS, BenchRequest, DatasetSpec, make_dataset

BACKENDS = ("tgi", "openai", "openai-chat", "grpc")


class Backend(Protocol):
    async def start(self) -> None: ...
    async def send(self, req: BenchRequest) -> RequestOutput: ...
    async def close(self) -> None: ...


@dataclass(slots=True)
class ServingConfig:
    """Where and how to send the requests (the workload itself is a list of BenchRequest)."""

    backend: str = "tgi"
    base_url: str = "http://127.0.0.1:8000"
    grpc_target: str = "127.0.0.1:50051"
    grpc_tls: bool = False
    api_key: str | None = None
    model: str | None = None
    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    goodput: dict[str, float] = field(default_factory=dict)
    warmup: int = 1
    timeout: float = 600.0
    seed: int = 0
    keep_alive: bool = True  # reuse HTTP connections (False: one connection per request)

    def public(self) -> dict[str, Any]:
        """The config for the report, without the API key."""
        data = asdict(self)
        data["api_key"] = "***" if self.api_key else None
        data["request_rate"] = "inf" if math.isinf(self.request_rate) else self.request_rate
        return data


def make_backend(cfg: ServingConfig) -> Backend:
    if cfg.backend == "grpc":
        from loadtests.grpc_backend import GrpcBackend

        return GrpcBackend(cfg.grpc_target, cfg.api_key, cfg.timeout, cfg.grpc_tls)
    from loadtests.http_backend import HttpBackend

    connections = cfg.max_concurrency or 256
    return HttpBackend(
        cfg.backend, cfg.base_url, cfg.api_key, cfg.model, cfg.timeout, connections + 4,
        cfg.keep_alive,
    )  # fmt: skip


async def run_benchmark(cfg: ServingConfig, requests: Sequence[BenchRequest]) -> dict[str, Any]:
    """Warm up, send every request on schedule, and summarize (see metrics.summarize)."""
    backend = make_backend(cfg)
    try:
        await backend.start()
        for req in requests[: cfg.warmup]:  # reversed prompt: warms the server, not its cache
            await backend.send(BenchRequest(req.prompt[::-1], min(req.output_len, 4)))
        outputs, duration = await drive(backend, cfg, requests)
    finally:
        await backend.close()
    report = summarize(outputs, duration, cfg.goodput)
    report["config"] = {**cfg.public(), "num_requests": len(requests)}
    return report


async def drive(
    backend: Backend, cfg: ServingConfig, requests: Sequence[BenchRequest]
) -> tuple[list[RequestOutput], float]:
    """Send each request at its arrival time (at most max_concurrency in flight); returns the
    outputs in request order and the wall time from the first arrival to the last answer."""
    gaps = arrival_gaps(len(requests), cfg.request_rate, cfg.burstiness, cfg.seed)
    limit = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None

    async def one(req: BenchRequest) -> RequestOutput:
        try:
            if limit is None:
                return await backend.send(req)
            async with limit:
                return await backend.send(req)
        except Exception as exc:  # a bug in a backend must not hide the other requests
            return RequestOutput(error=f"{type(exc).__name__}: {exc}"[:300])

    start = time.perf_counter()
    tasks: list[asyncio.Task[RequestOutput]] = []
    for gap, req in zip(gaps, requests, strict=True):
        if gap > 0:
            await asyncio.sleep(gap)
        tasks.append(asyncio.create_task(one(req)))
    outputs = await asyncio.gather(*tasks)
    return list(outputs), time.perf_counter() - start


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{'successful requests':<32}{report['completed']}",
        f"{'failed requests':<32}{report['failed']}",
        f"{'duration (s)':<32}{report['duration_s']:.2f}",
        f"{'input / output tokens':<32}{report['total_input_tokens']} / "
        f"{report['total_output_tokens']}",
        f"{'request throughput (req/s)':<32}{report['request_throughput']:.2f}",
        f"{'output throughput (tok/s)':<32}{report['output_throughput']:.1f}",
        f"{'total token throughput (tok/s)':<32}{report['total_token_throughput']:.1f}",
    ]
    if report["request_goodput"] is not None:
        lines.append(f"{'request goodput (req/s)':<32}{report['request_goodput']:.2f}")
    for name in ("ttft", "tpot", "itl", "e2el"):
        stats = [report[f"{s}_{name}_ms"] for s in ("mean", "median", "p99")]
        label = f"{name.upper()} mean/median/p99 (ms)"
        lines.append(f"{label:<32}" + " / ".join(f"{v:.1f}" for v in stats))
    lines += [f"error: {e}" for e in report["errors"]]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=BACKENDS, default="tgi")
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="REST server")
    p.add_argument("--grpc-target", default="127.0.0.1:50051", help="gRPC host:port")
    p.add_argument("--grpc-tls", action="store_true", help="TLS channel for --grpc-target")
    p.add_argument("--api-key", default=os.environ.get("HAGMOE_API_KEY"), help="[HAGMOE_API_KEY]")
    p.add_argument("--model", default=None, help="served model name (default: /v1/models)")
    p.add_argument("--dataset", choices=DATASETS, default="random")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=64, help="prompt (suffix) characters")
    p.add_argument("--output-len", type=int, default=64, help="tokens to generate")
    p.add_argument("--output-len-max", type=int, default=None, help="varied: uniform to this")
    p.add_argument("--prefix-len", type=int, default=256, help="shared-prefix characters")
    p.add_argument("--num-prefixes", type=int, default=1, help="distinct shared prefixes")
    p.add_argument("--request-rate", type=float, default=math.inf, help="req/s (inf: at once)")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape (1: Poisson)")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--goodput", nargs="*", default=[], help="SLOs: ttft:MS tpot:MS e2el:MS")
    p.add_argument("--warmup", type=int, default=1, help="requests sent before measuring")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--result-file", default=None, help="write the JSON report here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = DatasetSpec(
        args.dataset,
        args.num_prompts,
        args.input_len,
        args.output_len,
        args.output_len_max,
        args.prefix_len,
        args.num_prefixes,
        args.seed,
    )
    dataset = make_dataset(spec)
    cfg = ServingConfig(
        args.backend,
        args.base_url,
        args.grpc_target,
        args.grpc_tls,
        args.api_key,
        args.model,
        args.request_rate,
        args.burstiness,
        args.max_concurrency,
        parse_goodput(args.goodput),
        args.warmup,
        args.timeout,
        args.seed,
    )
    report = asyncio.run(run_benchmark(cfg, dataset.requests))
    report["dataset"] = {**asdict(spec), "source": dataset.source}
    print(format_report(report))
    if args.result_file:
        Path(args.result_file).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
