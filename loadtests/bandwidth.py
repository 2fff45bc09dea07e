"""The bandwidth floor of a decode step at one stream: how fast a system could generate if it
only had to read, once per token, the weights the token uses (docs/loadtests.md).

    floor tok/s = measured read bandwidth (bytes/s) / bytes one batch-1 decode step reads
    fraction    = measured tok/s at 1 stream / floor tok/s

Bytes per token count attention (q, k, v, o), the router gate, the top_k experts' three
matrices and the output head, in the format's bytes per weight; norms, the embedding row and the
KV cache are left out (negligible at the benchmark's sizes). The router gate counts 4 bytes a
weight in every format: GGUF files and hagmoe's packed formats both keep it float32.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from hagmoe.model import ModelConfig

BYTES_PER_WEIGHT: dict[str, float] = {
    "f32": 4.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,  # a block of 32 int8 weights and one float16 scale
    "int8": 1 + 4 / 32,  # hagmoe's int8, group size 32, float32 scales
}


def weights_per_token(config: ModelConfig) -> dict[str, int]:
    """Weights one decode step reads per token, by part (attention over all layers, router,
    the top_k experts, the head)."""
    d, hd = config.hidden_size, config.hd
    q_out, kv_out = config.num_heads * hd, config.kv_heads * hd
    attention = d * q_out + 2 * d * kv_out + q_out * d
    router = d * config.num_experts
    experts = config.max_experts_per_token * 3 * d * config.ffn_size
    layers = config.num_layers
    return {
        "attention": layers * attention,
        "router": layers * router,
        "experts": layers * experts,
        "head": config.vocab_size * d,
    }


def decode_bytes_per_token(config: ModelConfig, fmt: str) -> float:
    """Bytes one batch-1 decode step reads in format `fmt` (f32, bf16, q8_0, int8); the router
    gate at 4 bytes per weight (both systems keep it float32 in every format)."""
    if fmt not in BYTES_PER_WEIGHT:
        raise ValueError(f"unknown weight format {fmt!r}; choose one of {sorted(BYTES_PER_WEIGHT)}")
    parts = weights_per_token(config)
    weights = parts["attention"] + parts["experts"] + parts["head"]
    return weights * BYTES_PER_WEIGHT[fmt] + parts["router"] * 4.0


def read_bandwidth(threads: int, gib: float = 2.0, passes: int = 5) -> float:
    """The machine's read bandwidth in bytes/s: the median of `passes` torch.dot(x, x) passes
    (one read stream, MKL's) over a `gib` GiB float32 tensor with `threads` threads; torch's
    thread count is restored. Make the tensor larger than the last-level cache."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
        torch.dot(x, x)  # fault the pages in and warm the threads
        seconds = []
        for _ in range(passes):
            start = time.perf_counter()
            torch.dot(x, x)
            seconds.append(time.perf_counter() - start)
        return x.numel() * 4 / statistics.median(seconds)
    finally:
        torch.set_num_threads(before)


def floor_tokens_per_second(bandwidth: float, config: ModelConfig, fmt: str) -> float:
    """Tokens/s at one stream if each step only read its weights once at `bandwidth` bytes/s."""
    return bandwidth / decode_bytes_per_token(config, fmt)


def decode_tokens_per_second(row: dict[str, Any]) -> float | None:
    """A one-stream row's decode rate from its medians: (tokens a request - 1) / (latency -
    first-token latency); None where they were not measured."""
    ttft, latency = row.get("ttft_median"), row.get("latency_median")
    per_request = int(row["output_tokens"]) / int(row["num_requests"])
    if ttft is None or latency is None or per_request < 2 or latency <= ttft:
        return None
    return (per_request - 1) / (float(latency) - float(ttft))


def add_floor(
    rows: list[dict[str, Any]], config: ModelConfig, bandwidth: float, threads: int
) -> dict[str, Any]:
    """Give every row its weight format (hagmoe's and the baselines' float32 unless set) and
    the rows at one stream their fraction of the bandwidth floor: end to end (output tokens
    over the run's time, prefill included) and, where first-token and request latencies were
    measured, of the decode alone (llama-bench's tg: a request's later tokens over the time
    after its first); returns the floor's numbers."""
    formats = sorted({str(r.setdefault("format", "f32")) for r in rows})
    per_token = {fmt: decode_bytes_per_token(config, fmt) for fmt in formats}
    floor_tps = {fmt: bandwidth / per_token[fmt] for fmt in formats}
    for r in rows:
        if int(r["concurrency"]) != 1:
            continue
        floor = floor_tps[r["format"]]
        r["floor_fraction"] = float(r["tokens_per_second"]) / floor
        decode = decode_tokens_per_second(r)
        if decode is not None:
            r["decode_floor_fraction"] = decode / floor
    return {
        "bandwidth_gbs": bandwidth / 1e9,
        "threads": threads,
        "bytes_per_token": per_token,
        "floor_tps": floor_tps,
    }
