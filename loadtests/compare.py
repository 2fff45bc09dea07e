"""The serving comparison in one command (docs/loadtests.md):

1. a random-weight model of the `bench` shape (hidden 256, 4 layers, 8 heads, 16 experts) is
   saved with a byte-level tokenizer and served by `hagmoe serve` on 127.0.0.1 free ports;
2. bench_serving drives it over HTTP with all requests at once at each --concurrency, then as a
   Poisson process at each --rates;
3. the server is stopped and, on the same requests, the offline engine (run_engine), the naive
   HAG-MoE recompute and Hugging Face transformers Mixtral `generate()` (static batches) run here;
   every system runs each concurrency level --repeats times and its median run is reported;
4. JSON under --results-dir, PNG plots under --img-dir, a markdown table snippet.

    .venv/bin/python loadtests/compare.py            # full run: minutes, needs a quiet machine
    .venv/bin/python loadtests/compare.py --smoke    # harness check: tiny model, well under 1 min
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `loadtests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from hagmoe.bench.offline import BenchResult, median_run
from hagmoe.model import HagMoEModel, Tokenizer, random_model, save_model
from loadtests.baselines import (
    BaselineUnavailable,
    hf_baseline,
    hf_mixtral,
    naive_baseline,
    require_transformers,
)
from loadtests.bench_serving import ServingConfig, run_benchmark
from loadtests.offline_engine import offline_engine
from loadtests.plots import plot_latency, plot_throughput
from loadtests.prompts import Dataset, DatasetSpec, make_dataset
from loadtests.server_process import ServeProcess
from loadtests.tables import latency_table, ratio_lines, throughput_table

BLOCK_SIZE = 16
SMOKE: dict[str, Any] = {
    "config": "tiny",
    "concurrency": [1, 4],
    "requests": 4,
    "rates": [4.0, 16.0],
    "rate_requests": 4,
    "input_len": 16,
    "output_len": 8,
    "threads": 1,  # robust on a shared machine; the full run uses 2 (the anchors' setting)
    "repeats": 1,
    "results_dir": Path("runs/bench-serving-smoke/results"),
    "img_dir": Path("runs/bench-serving-smoke/img"),
}


@dataclass(slots=True)
class Plan:
    """What to run; every size can be set on the command line."""

    config: str = "bench"
    seed: int = 0
    threads: int = 2
    backend: str = "tgi"
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32])
    requests: int | None = None  # per concurrency level; default max(8, 4 x concurrency)
    rates: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0, 16.0])
    rate_requests: int = 64
    input_len: int = 64
    output_len: int = 64
    output_max: int | None = None
    naive_requests: int | None = None  # per level; default one static batch (= concurrency)
    repeats: int = 3  # runs of every system at every concurrency level; the median is reported
    skip_hf: bool = False
    results_dir: Path = Path("docs/results")
    img_dir: Path = Path("docs/img")
    smoke: bool = False

    def requests_at(self, concurrency: int) -> int:
        return self.requests or max(8, 4 * concurrency)

    def num_blocks(self) -> int:
        """KV blocks for the largest concurrency of full sequences, plus slack."""
        longest = self.input_len + (self.output_max or self.output_len) + 1
        return max(self.concurrency) * math.ceil(longest / BLOCK_SIZE) + 16

    def dataset(self, num: int, seed: int) -> Dataset:
        spec = DatasetSpec("random", num, self.input_len, self.output_len, self.output_max)
        return make_dataset(replace(spec, seed=seed))


def log(msg: str, t0: float) -> None:
    print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)


def server_row(report: dict[str, Any], system: str, concurrency: int) -> dict[str, Any]:
    result = BenchResult(
        system,
        concurrency,
        report["completed"],
        report["total_output_tokens"],
        report["duration_s"],
        report["median_ttft_ms"] / 1000.0,
        report["median_e2el_ms"] / 1000.0,
        seconds_all=report.get("duration_s_all", []),
    )
    return result.as_dict()


def serve_phase(
    plan: Plan, model_dir: Path, levels: dict[int, Dataset], rated: dict[float, Dataset], t0: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """bench_serving reports at each concurrency (all at once) and each Poisson rate."""
    top = max(plan.concurrency)
    extra = (
        *("--max-num-seqs", str(top), "--num-blocks", str(plan.num_blocks())),
        *("--max-concurrent-requests", str(max(top, 64)), "--max-queue", "4096"),
    )
    with ServeProcess(model_dir, model_dir.parent / "serve.log", plan.threads, *extra) as server:
        log(f"server ready at {server.url} (gRPC {server.grpc_target})", t0)
        base = ServingConfig(plan.backend, server.url, server.grpc_target, seed=plan.seed)
        by_level = []
        for c, data in levels.items():
            cfg = replace(base, max_concurrency=c)
            runs = [
                _bench(cfg, data, f"concurrency {c} ({i + 1}/{plan.repeats})", t0)
                for i in range(plan.repeats)
            ]
            by_level.append(median_report(runs))
        by_rate = []
        for rate, data in rated.items():
            cfg = replace(base, request_rate=rate, max_concurrency=top)
            by_rate.append(_bench(cfg, data, f"rate {rate:g} req/s", t0))
    return by_level, by_rate


def _bench(cfg: ServingConfig, data: Dataset, label: str, t0: float) -> dict[str, Any]:
    report = asyncio.run(run_benchmark(cfg, data.requests))
    log(
        f"server {label}: {report['completed']} done, {report['failed']} failed, "
        f"{report['output_throughput']:.1f} tok/s, TTFT p50 {report['median_ttft_ms']:.0f} ms",
        t0,
    )
    return report


def median_report(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The report of median duration (the upper middle of an even count), with every run's."""
    report = sorted(reports, key=lambda r: r["duration_s"])[len(reports) // 2]
    return {**report, "duration_s_all": [r["duration_s"] for r in reports]}


def inprocess_phase(
    plan: Plan, model: HagMoEModel, tokenizer: Tokenizer, levels: dict[int, Dataset], t0: float
) -> list[dict[str, Any]]:
    """Offline engine, naive recompute and HF Mixtral on each level's requests."""
    hf = None if plan.skip_hf else hf_mixtral(model.config, plan.seed)
    rows: list[dict[str, Any]] = []
    for c, data in levels.items():
        ids = [tokenizer.encode(r.prompt) for r in data.requests]
        lens = [r.output_len for r in data.requests]
        n = plan.naive_requests or c
        runs: list[Callable[[], BenchResult]] = [
            partial(offline_engine, model, ids, lens, c, plan.num_blocks()),
            partial(naive_baseline, model, ids[:n], lens[:n], c),
        ]
        if hf is not None:
            runs.append(partial(hf_baseline, hf, ids, lens, c))
        results = [median_run([run() for _ in range(plan.repeats)]) for run in runs]
        for r in results:
            log(f"{r.system} at {c}: {r.tokens_per_second:.1f} tok/s ({r.seconds:.1f}s)", t0)
            rows.append(r.as_dict())
    return rows


def run(plan: Plan) -> dict[str, Any]:
    """The whole comparison; returns the JSON-ready result."""
    t0 = time.perf_counter()
    if not plan.skip_hf:
        require_transformers()  # fail before minutes of work, saying how to install it
    torch.set_num_threads(plan.threads)
    model = random_model(plan.config, seed=plan.seed)
    tokenizer = Tokenizer.byte_level(model.config.vocab_size)
    levels = {c: plan.dataset(plan.requests_at(c), plan.seed + c) for c in plan.concurrency}
    rated = {
        rate: plan.dataset(plan.rate_requests, plan.seed + 1000 + i)
        for i, rate in enumerate(plan.rates)
    }
    with tempfile.TemporaryDirectory(prefix="hagmoe-compare-") as tmp:
        model_dir = Path(tmp) / plan.config
        save_model(model, model_dir, tokenizer=tokenizer)
        log(f"model {plan.config} saved; starting hagmoe serve", t0)
        by_level, by_rate = serve_phase(plan, model_dir, levels, rated, t0)
    system = f"hagmoe server ({'gRPC' if plan.backend == 'grpc' else 'HTTP ' + plan.backend})"
    rows = [server_row(r, system, c) for r, c in zip(by_level, plan.concurrency, strict=True)]
    rows += inprocess_phase(plan, model, tokenizer, levels, t0)
    return {
        "meta": meta(plan, model, time.perf_counter() - t0),
        "throughput": rows,
        "server_concurrency": by_level,
        "server_rates": by_rate,
    }


def meta(plan: Plan, model: HagMoEModel, seconds: float) -> dict[str, Any]:
    try:
        import transformers

        hf_version: str | None = transformers.__version__
    except ImportError:
        hf_version = None
    return {
        "plan": {
            **asdict(plan),
            "results_dir": str(plan.results_dir),
            "img_dir": str(plan.img_dir),
        },
        "model": {"name": plan.config, **model.config.to_dict()},
        "torch": torch.__version__,
        "transformers": hf_version,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "threads": plan.threads,
        "wall_seconds": seconds,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def write_outputs(plan: Plan, result: dict[str, Any]) -> dict[str, Path]:
    """JSON, the two PNGs and the markdown snippet; returns their paths."""
    plan.results_dir.mkdir(parents=True, exist_ok=True)
    plan.img_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": plan.results_dir / "serving_comparison.json",
        "table": plan.results_dir / "serving_table.md",
        "throughput_png": plan.img_dir / "serving_throughput.png",
        "latency_png": plan.img_dir / "serving_latency.png",
    }
    paths["json"].write_text(json.dumps(result, indent=2, default=str) + "\n")
    shape = f"{plan.config} model, {plan.input_len}-token prompts, {plan.output_len} new tokens"
    plot_throughput(result["throughput"], paths["throughput_png"], f"Throughput ({shape})")
    plot_latency(result["server_rates"], paths["latency_png"], f"hagmoe serve latency ({shape})")
    paths["table"].write_text(markdown(result, shape) + "\n")
    return paths


def markdown(result: dict[str, Any], shape: str) -> str:
    rows = result["throughput"]
    server = next(r["system"] for r in rows if r["system"].startswith("hagmoe server"))
    others = list(dict.fromkeys(r["system"] for r in rows if r["system"] != server))
    return "\n\n".join(
        [
            f"Throughput, output tokens/s ({shape}; {result['meta']['threads']} threads):",
            throughput_table(rows),
            ratio_lines(rows, server, others),
            "hagmoe serve under Poisson arrivals:",
            latency_table(result["server_rates"]),
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny model and sizes, under runs/")
    p.add_argument("--config", default=None, help="named model config (default bench)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (2; smoke 1)")
    p.add_argument("--backend", choices=("tgi", "openai", "openai-chat", "grpc"), default="tgi")
    p.add_argument("--concurrency", type=int, nargs="+", default=None)
    p.add_argument("--requests", type=int, default=None, help="per level (4 x concurrency)")
    p.add_argument("--rates", type=float, nargs="*", default=None, help="Poisson req/s")
    p.add_argument("--rate-requests", type=int, default=None)
    p.add_argument("--input-len", type=int, default=None)
    p.add_argument("--output-len", type=int, default=None)
    p.add_argument("--output-len-max", type=int, default=None, help="varied output lengths")
    p.add_argument("--naive-requests", type=int, default=None, help="per level (= concurrency)")
    p.add_argument("--repeats", type=int, default=None, help="runs per system and level (3)")
    p.add_argument("--skip-hf", action="store_true", help="no transformers baseline")
    p.add_argument("--results-dir", type=Path, default=None, help="default docs/results")
    p.add_argument("--img-dir", type=Path, default=None, help="default docs/img")
    return p


def plan_from_args(args: argparse.Namespace) -> Plan:
    plan = Plan(**SMOKE, smoke=True) if args.smoke else Plan()
    plan.seed, plan.backend = args.seed, args.backend
    overrides = {
        "config": args.config,
        "threads": args.threads,
        "concurrency": args.concurrency,
        "requests": args.requests,
        "rates": args.rates,
        "rate_requests": args.rate_requests,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "output_max": args.output_len_max,
        "naive_requests": args.naive_requests,
        "repeats": args.repeats,
        "results_dir": args.results_dir,
        "img_dir": args.img_dir,
    }
    for key, value in overrides.items():
        if value is not None:
            setattr(plan, key, value)
    plan.skip_hf = args.skip_hf
    if not plan.rates:
        raise SystemExit("compare: give at least one --rates value")
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    plan = plan_from_args(build_parser().parse_args(argv))
    try:
        result = run(plan)
    except BaselineUnavailable as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    paths = write_outputs(plan, result)
    print(paths["table"].read_text())
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    failed = sum(r["failed"] for r in result["server_concurrency"] + result["server_rates"])
    if failed:
        print(f"compare: {failed} server requests failed (see 'errors' in the JSON)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
