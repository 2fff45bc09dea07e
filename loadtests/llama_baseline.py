"""The llama.cpp rows of loadtests/compare.py: the benchmarked hagmoe model exported to GGUF at
each format, served by llama.cpp's native llama-server, and driven by bench_serving over its
OpenAI-compatible /v1/completions with the same prompts, max_tokens, greedy decoding and
ignore_eos as the hagmoe server (docs/loadtests.md)."""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from hagmoe.model import HagMoEModel, Tokenizer
from loadtests.bench_serving import ServingConfig
from loadtests.gguf_export import FORMATS, export_gguf
from loadtests.llama_server import (
    DEFAULT_BINARY,
    FLASH_ATTN,
    KV_TYPES,
    LlamaServer,
    require_llama_server,
)
from loadtests.prompts import Dataset

# (config for one level, its requests, a label for the log) -> the level's median report
RunLevel = Callable[[ServingConfig, Dataset, str], dict[str, Any]]


def add_llama_arguments(p: argparse.ArgumentParser) -> None:
    """compare.py's --router and --llama-* options."""
    p.add_argument(
        "--router", choices=("attention", "linear"), default=None,
        help="linear: the config as the standard top-k family (default with --llama-cpp)",
    )  # fmt: skip
    p.add_argument(
        "--llama-cpp", nargs="*", choices=sorted(FORMATS), default=None, metavar="FORMAT",
        help="also llama.cpp's llama-server on GGUF files of the model (f32 bf16 q8_0)",
    )  # fmt: skip
    p.add_argument("--llama-server", type=Path, default=None, help=f"default {DEFAULT_BINARY}")
    p.add_argument("--llama-kv-type", choices=KV_TYPES, default=None, help="llama.cpp KV (f32)")
    p.add_argument("--llama-flash-attn", choices=FLASH_ATTN, default=None, help="-fa (auto)")


def system_name(fmt: str) -> str:
    return f"llama.cpp {fmt}"


def llama_version(binary: Path) -> str:
    """`llama-server --version`'s lines (version and build), or why it could not be read."""
    try:
        done = subprocess.run(
            [str(require_llama_server(binary)), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return "; ".join(line.strip() for line in lines if line.startswith(("version", "built")))


def ctx_per_seq(input_tokens: int, output_tokens: int) -> int:
    """KV tokens per slot: the longest prompt and output plus slack, rounded up to 64."""
    need = input_tokens + output_tokens + 16
    return -(-need // 64) * 64


def llama_phase(
    model: HagMoEModel,
    tokenizer: Tokenizer,
    work_dir: Path,
    binary: Path,
    formats: Sequence[str],
    levels: dict[int, Dataset],
    threads: int,
    kv_type: str,
    flash_attn: str,
    run_level: RunLevel,
    seed: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Per format: {"levels": [median report per concurrency], "gguf_bytes": file size}; every
    llama-server is stopped before the next starts (and on error)."""
    require_llama_server(binary)
    top = max(levels)
    longest_prompt = max(
        len(tokenizer.encode(r.prompt)) for data in levels.values() for r in data.requests
    )
    longest_output = max(r.output_len for data in levels.values() for r in data.requests)
    ctx = ctx_per_seq(longest_prompt, longest_output)
    out: dict[str, Any] = {}
    for fmt in formats:
        path = export_gguf(model, tokenizer, work_dir / f"model-{fmt}.gguf", fmt)
        log(f"{system_name(fmt)}: {path.name} ({path.stat().st_size / 2**20:.1f} MiB) written")
        server_log = work_dir / f"llama-server-{fmt}.log"
        server = LlamaServer(binary, path, server_log, threads, top, ctx, kv_type, flash_attn)
        with server:
            log(f"{system_name(fmt)}: ready at {server.url} (-np {top}, -c {top * ctx})")
            # llama-server's cpp-httplib closes keep-alive connections idle for 5 s; a pooled
            # one reused after that fails ("Can not write request body"): no reuse.
            base = ServingConfig("openai", server.url, seed=seed, model=path.stem, keep_alive=False)
            reports = [
                run_level(replace(base, max_concurrency=c), data, f"{system_name(fmt)} c={c}")
                for c, data in levels.items()
            ]
        out[fmt] = {"levels": reports, "gguf_bytes": path.stat().st_size}
    return out


def prompt_token_mismatches(
    hagmoe_reports: Sequence[dict[str, Any]], llama: dict[str, Any]
) -> list[str]:
    """Levels where llama.cpp counted other prompt or output token totals than hagmoe serve
    (a tokenizer mismatch would make the rows incomparable)."""
    problems = []
    for fmt, data in llama.items():
        for ours, theirs in zip(hagmoe_reports, data["levels"], strict=True):
            for key in ("total_input_tokens", "total_output_tokens"):
                if ours[key] != theirs[key]:
                    problems.append(
                        f"{system_name(fmt)} at concurrency {theirs['config']['max_concurrency']}: "
                        f"{key} {theirs[key]} vs hagmoe's {ours[key]}"
                    )
    return problems
