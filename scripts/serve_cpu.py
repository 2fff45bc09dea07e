"""One `hagmoe serve` of a random model at one concurrency: tok/s of each run and the CPU time a
token of each of the server's threads and of this client, for paired runs of server-path changes
(docs/benchmarks.md, "CPU serving, third pass"). Linux (/proc).

    python scripts/serve_cpu.py [--config topk-s] [--concurrency 1] [--runs 2] [--threads 2]
        [--quantization none] [-- extra hagmoe serve flags]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hagmoe.model import random_model
from hagmoe.model.checkpoint import save_model
from hagmoe.model.tokenizer import Tokenizer
from loadtests.bench_serving import ServingConfig, run_benchmark
from loadtests.compare import Plan
from loadtests.server_process import ServeProcess


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of `pid`, by "name:tid", and "client" (this
    process)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[f"{name}:{tid}"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    me = os.times()
    out["client"] = me.user + me.system
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="topk-s")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("extra", nargs="*", help="more hagmoe serve flags (after --)")
    args = parser.parse_args()
    c = args.concurrency
    plan = Plan(config=args.config, router="linear", concurrency=[c], output_len=args.output_len)
    cfg = plan.model_config()
    torch.set_num_threads(args.threads)
    tokenizer = Tokenizer.byte_level(cfg.vocab_size)
    data = plan.dataset(max(8, 4 * c), 1)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        save_model(random_model(cfg, seed=0), model_dir, tokenizer=tokenizer)
        flags = ("--max-num-seqs", str(c), "--num-blocks", str(plan.num_blocks()))
        flags += ("--quantization", args.quantization, *args.extra)
        with ServeProcess(model_dir, Path(tmp) / "serve.log", args.threads, *flags) as server:
            bench = ServingConfig(plan.backend, server.url, server.grpc_target, max_concurrency=c)
            asyncio.run(run_benchmark(bench, data.requests))  # warm-up
            for run in range(args.runs):
                before, start = thread_cpu(server.proc.pid), time.perf_counter()
                report = asyncio.run(run_benchmark(bench, data.requests))
                wall, after = time.perf_counter() - start, thread_cpu(server.proc.pid)
                tokens = report["total_output_tokens"]
                print(
                    f"run {run + 1}: {report['output_throughput']:.1f} tok/s, TTFT p50 "
                    f"{report['median_ttft_ms']:.0f} ms, {wall / tokens * 1e6:.0f} us a token"
                )
                for name, seconds in after.items():
                    used = seconds - before.get(name, 0.0)
                    if used > 0.01:
                        print(f"  cpu a token {name:28s} {used / tokens * 1e6:8.1f} us")


if __name__ == "__main__":
    main()
