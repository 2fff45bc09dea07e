"""loadtests/bench_serving.py against a real server over HTTP (TGI, OpenAI, OpenAI chat) and
gRPC: counts, exact output lengths, throughput, ordered percentiles, goodput and the API key."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from live_server import KEYS

from loadtests.bench_serving import ServingConfig, main, run_benchmark
from loadtests.prompts import DatasetSpec, make_dataset
from loadtests.server_process import ServeProcess

STATS = ("ttft", "tpot", "itl", "e2el")
SPEC = DatasetSpec("random", 6, input_len=12, output_len=2, output_max=6, seed=3)


def bench(server: ServeProcess, backend: str, **overrides: Any) -> dict[str, Any]:
    cfg = replace(ServingConfig(backend, server.url, server.grpc_target), **overrides)
    return asyncio.run(run_benchmark(cfg, make_dataset(SPEC).requests))


@pytest.mark.parametrize("backend", ["tgi", "openai", "openai-chat", "grpc"])
def test_report_fields(server: ServeProcess, backend: str) -> None:
    slos = {"ttft": 60_000.0, "tpot": 60_000.0, "e2el": 60_000.0}
    report = bench(server, backend, request_rate=40.0, max_concurrency=3, goodput=slos)
    requests = make_dataset(SPEC).requests
    assert (report["completed"], report["failed"], report["errors"]) == (6, 0, [])
    assert report["total_output_tokens"] == sum(r.output_len for r in requests)  # ignore_eos
    if backend in ("tgi", "grpc", "openai"):  # byte-level: one token per character
        assert report["total_input_tokens"] == 6 * 12
    for key in ("request_throughput", "output_throughput", "total_token_throughput"):
        assert report[key] > 0
    for name in STATS:
        median, p99 = report[f"median_{name}_ms"], report[f"p99_{name}_ms"]
        assert 0 < median <= p99, (name, median, p99)
    assert report["median_ttft_ms"] <= report["median_e2el_ms"]
    assert report["goodput_slos_ms"] == slos and report["good_requests"] == 6
    assert report["request_goodput"] == pytest.approx(report["request_throughput"])


def test_tight_slo_has_no_goodput(server: ServeProcess) -> None:
    report = bench(server, "grpc", goodput={"ttft": 0.001})
    assert report["completed"] == 6 and report["good_requests"] == 0
    assert report["request_goodput"] == 0.0


@pytest.mark.parametrize("backend", ["tgi", "grpc"])
def test_api_key(strict: ServeProcess, backend: str) -> None:
    spec = DatasetSpec("random", 1, input_len=8, output_len=3)
    ok = ServingConfig(backend, strict.url, strict.grpc_target, api_key=KEYS[0], warmup=0)
    report = asyncio.run(run_benchmark(ok, make_dataset(spec).requests))
    assert (report["completed"], report["total_output_tokens"]) == (1, 3), report["errors"]
    denied = ServingConfig(backend, strict.url, strict.grpc_target, warmup=0)
    report = asyncio.run(run_benchmark(denied, make_dataset(spec).requests))
    assert report["failed"] == 1 and report["completed"] == 0
    assert ("401" if backend == "tgi" else "UNAUTHENTICATED") in report["errors"][0]
    assert report["config"]["api_key"] is None and ok.public()["api_key"] == "***"


def test_cli_writes_json(
    server: ServeProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    argv = [
        "--base-url", server.url, "--backend", "tgi", "--dataset", "shared-prefix",
        "--num-prompts", "4", "--prefix-len", "32", "--input-len", "4", "--output-len", "3",
        "--request-rate", "inf", "--max-concurrency", "2",
        "--goodput", "ttft:60000", "e2el:60000", "--result-file", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["completed"] == 4 and report["total_output_tokens"] == 12
    assert report["dataset"]["source"] == "shared-prefix" and report["good_requests"] == 4
    assert report["config"]["request_rate"] == "inf"
    assert "successful requests" in capsys.readouterr().out
