"""The serving comparison in one command (docs/loadtests.md):

1. a random-weight model of the `bench` shape (hidden 256, 4 layers, 8 heads, 16 experts) is
   saved with a byte-level tokenizer and served by `hagmoe serve` on 127.0.0.1 free ports;
2. bench_serving drives it over HTTP with all requests at once at each --concurrency, then as a
   Poisson process at each --rates;
3. with --llama-cpp FORMAT..., the same model is exported to GGUF at each format (f32, bf16,
   q8_0; it must be a standard top-k model: --router linear, the default with --llama-cpp) and
   served by llama.cpp's llama-server (`make llama-cpp`), driven the same way at each
   concurrency over /v1/completions;
4. the server is stopped and, on the same requests, the offline engine (run_engine), the naive
   HAG-MoE recompute and Hugging Face transformers Mixtral `generate()` (static batches) run here;
   every system runs each concurrency level --repeats times and its median run is reported;
5. each system's tok/s at one stream as a fraction of the bandwidth floor (loadtests/bandwidth.py);
6. JSON under --results-dir, PNG plots under --img-dir, a markdown table snippet.

    .venv/bin/python loadtests/compare.py            # full run: minutes, needs a quiet machine
    .venv/bin/python loadtests/compare.py --smoke    # harness check: tiny model, well under 1 min
    .venv/bin/python loadtests/compare.py --llama-cpp f32 bf16 q8_0   # with llama.cpp's rows
"""

from __future__ import annotations

import hagmoe.huge_pages  # noqa: F401 (before torch, which reads its setting on import)

# isort: split
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
from hagmoe.model import HagMoEModel, ModelConfig, Tokenizer, named_config, random_model, save_model
from loadtests.bandwidth import add_floor, read_bandwidth
from loadtests.baselines import (
    BaselineUnavailable,
    hf_baseline,
    hf_mixtral,
    naive_baseline,
    require_transformers,
)
from loadtests.bench_serving import ServingConfig, run_benchmark
from loadtests.gguf_export import TOPK_OVERRIDES, GGUFExportError, check_exportable
from loadtests.llama_baseline import (
    add_llama_arguments,
    llama_phase,
    llama_version,
    prompt_token_mismatches,
    system_name,
)
from loadtests.llama_server import DEFAULT_BINARY, LlamaServerUnavailable
from loadtests.offline_engine import offline_engine
from loadtests.plots import plot_latency, plot_throughput
from loadtests.prompts import Dataset, DatasetSpec, make_dataset
from loadtests.server_process import ServeProcess
from loadtests.tables import floor_table, latency_table, ratio_lines, throughput_table

BLOCK_SIZE = 16
HAGMOE_FORMATS = {"none": "f32", "bf16": "bf16", "int8": "int8"}  # --quantization -> floor format
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
    "bandwidth_gib": 0.25,
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
    quantization: list[str] = field(default_factory=lambda: ["none"])  # hagmoe serve's formats
    router: str | None = None  # "linear": the config as the standard top-k family (Mixtral's)
    llama_cpp: list[str] = field(default_factory=list)  # GGUF formats served by llama-server
    llama_server: Path = DEFAULT_BINARY
    llama_kv_type: str = "f32"  # llama.cpp's KV cache type (hagmoe's cache is float32)
    llama_flash_attn: str = "auto"  # llama.cpp's -fa, its own default
    bandwidth_gib: float = 2.0  # the read-bandwidth probe's tensor (past the L3: 480 MB seen)
    results_dir: Path = Path("docs/results")
    img_dir: Path = Path("docs/img")
    smoke: bool = False

    def model_config(self) -> ModelConfig:
        """The named config, made standard top-k with router = "linear" (the default when
        llama.cpp runs, whose rows need a model that maps to GGUF)."""
        router = self.router or ("linear" if self.llama_cpp else None)
        if router == "linear":
            return named_config(self.config, **TOPK_OVERRIDES)
        cfg = named_config(self.config)
        if router is not None and cfg.router != router:
            raise SystemExit(f"compare: --router {router} needs a config with that router")
        return cfg

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
    plan: Plan,
    model_dir: Path,
    levels: dict[int, Dataset],
    rated: dict[float, Dataset],
    t0: float,
    quantization: str = "none",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """bench_serving reports at each concurrency (all at once) and each Poisson rate, of
    `hagmoe serve --quantization quantization`."""
    top = max(plan.concurrency)
    extra = (
        *("--max-num-seqs", str(top), "--num-blocks", str(plan.num_blocks())),
        *("--max-concurrent-requests", str(max(top, 64)), "--max-queue", "4096"),
        *("--quantization", quantization),
    )
    with ServeProcess(model_dir, model_dir.parent / "serve.log", plan.threads, *extra) as server:
        log(f"server ready at {server.url} (gRPC {server.grpc_target})", t0)
        base = ServingConfig(plan.backend, server.url, server.grpc_target, seed=plan.seed)
        by_level = [
            level_report(plan, replace(base, max_concurrency=c), data, f"concurrency {c}", t0)
            for c, data in levels.items()
        ]
        by_rate = []
        for rate, data in rated.items():
            cfg = replace(base, request_rate=rate, max_concurrency=top)
            by_rate.append(_bench(cfg, data, f"rate {rate:g} req/s", t0))
    return by_level, by_rate


def level_report(
    plan: Plan, cfg: ServingConfig, data: Dataset, label: str, t0: float
) -> dict[str, Any]:
    """One concurrency level run --repeats times; the median report (median_report)."""
    runs = [_bench(cfg, data, f"{label} ({i + 1}/{plan.repeats})", t0) for i in range(plan.repeats)]
    return median_report(runs)


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
    config = plan.model_config()
    if plan.llama_cpp:
        check_exportable(config)  # GGUFExportError naming the key
        version = llama_version(plan.llama_server)  # LlamaServerUnavailable: how to build it
    torch.set_num_threads(plan.threads)
    bandwidth = read_bandwidth(plan.threads, plan.bandwidth_gib)
    log(f"read bandwidth {bandwidth / 1e9:.1f} GB/s ({plan.threads} threads)", t0)
    model = random_model(config, seed=plan.seed)
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
        quantized = {  # the other formats: concurrency levels only
            q: serve_phase(plan, model_dir, levels, {}, t0, q)[0] for q in plan.quantization[1:]
        }
        llama = {}
        if plan.llama_cpp:
            llama = llama_phase(
                model, tokenizer, Path(tmp), plan.llama_server, plan.llama_cpp, levels,
                plan.threads, plan.llama_kv_type, plan.llama_flash_attn,
                partial(level_report, plan, t0=t0), plan.seed, partial(log, t0=t0),
            )  # fmt: skip
    system = f"hagmoe server ({'gRPC' if plan.backend == 'grpc' else 'HTTP ' + plan.backend})"
    rows = [server_row(r, system, c) for r, c in zip(by_level, plan.concurrency, strict=True)]
    for q, quantized_levels in quantized.items():
        fmt = HAGMOE_FORMATS[q]
        pairs = zip(quantized_levels, plan.concurrency, strict=True)
        rows += [{**server_row(r, f"{system} {fmt}", c), "format": fmt} for r, c in pairs]
    for fmt, data in llama.items():
        reports = zip(data["levels"], plan.concurrency, strict=True)
        rows += [{**server_row(r, system_name(fmt), c), "format": fmt} for r, c in reports]
    rows += inprocess_phase(plan, model, tokenizer, levels, t0)
    result = {
        "meta": meta(plan, model, time.perf_counter() - t0),
        "throughput": rows,
        "floor": add_floor(rows, model.config, bandwidth, plan.threads),
        "server_concurrency": by_level,
        "server_quantized": quantized,
        "server_rates": by_rate,
    }
    if plan.llama_cpp:
        result["llama_cpp"] = {
            "version": version,
            "kv_type": plan.llama_kv_type,
            "flash_attn": plan.llama_flash_attn,
            "formats": llama,
            "token_mismatches": prompt_token_mismatches(by_level, llama),
        }
    return result


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
    router = result["meta"]["model"]["router"]
    shape = (
        f"{plan.config} model ({router} router), {plan.input_len}-token prompts, "
        f"{plan.output_len} new tokens"
    )
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
            floor_table(rows, result["floor"]),
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
    p.add_argument(
        "--quantization", nargs="+", choices=list(HAGMOE_FORMATS), default=None,
        help="hagmoe serve's weight formats, the first also for the rates (default none)",
    )  # fmt: skip
    add_llama_arguments(p)
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
        "router": args.router,
        "quantization": args.quantization,
        "llama_cpp": args.llama_cpp,
        "llama_server": args.llama_server,
        "llama_kv_type": args.llama_kv_type,
        "llama_flash_attn": args.llama_flash_attn,
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
    except (BaselineUnavailable, GGUFExportError, LlamaServerUnavailable) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    paths = write_outputs(plan, result)
    print(paths["table"].read_text())
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    reports = result["server_concurrency"] + result["server_rates"]
    reports += [r for levels in result["server_quantized"].values() for r in levels]
    llama = result.get("llama_cpp", {})
    reports += [r for data in llama.get("formats", {}).values() for r in data["levels"]]
    failed = sum(r["failed"] for r in reports)
    if failed:
        print(f"compare: {failed} server requests failed (see 'errors' in the JSON)")
    for problem in llama.get("token_mismatches", []):
        print(f"compare: token counts differ: {problem}")
    return 1 if failed or llama.get("token_mismatches") else 0


if __name__ == "__main__":
    sys.exit(main())
