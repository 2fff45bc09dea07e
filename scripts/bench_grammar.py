"""The per-step cost of an active grammar: decode tok/s with and without a `json_schema`
constraint (structured outputs) at 1 and 32 streams on the bundled model.

    python scripts/bench_grammar.py [--streams 1 32] [--new-tokens 128] [--repeats 7]
                                    [--threads N] [--temperature 0] [--server]

Offline (always): the engine (EngineCore over hagmoe/assets) runs `streams` requests of
`new-tokens` tokens each, every request unconstrained (`ignore_eos`) or every request under
the same JSON schema (a list of at least 200 records, so no request can finish early); the
two modes alternate within each repeat (ABAB, then BABA) and each cell is the median over the
repeats. Decode tok/s counts the tokens of the steps after every request has its first token
(prefill excluded) over their wall time. The grammar is compiled once before the runs (its
one-off cost is printed); each request still makes its own matcher.

With `--server` the same pairs go through a `hagmoe serve` on a free loopback port as
concurrent POST /v1/completions (`response_format: json_schema` against `ignore_eos`);
server tok/s = completion tokens / wall time of the whole batch (prefill and HTTP included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hagmoe
from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.llm import load_engine
from hagmoe.engine.logits_processors import apply_grammars
from hagmoe.engine.request import Request
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.engine.structured_output import GrammarCompiler, StructuredOutputs

FOLDER = Path(hagmoe.__file__).parent / "assets"
MODES = ("free", "json_schema")
RECORD = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["king", "queen", "fool", "soldier", "lady"]},
        "lines": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 3},
    },
    "required": ["name", "age", "role", "lines"],
    "additionalProperties": False,
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"cast": {"type": "array", "items": RECORD, "minItems": 200}},
    "required": ["cast"],
    "additionalProperties": False,
}


def prompts(engine: EngineCore, n: int) -> list[list[int]]:
    tokenizer = engine.tokenizer
    assert tokenizer is not None
    return [tokenizer.encode(f"Scene {i + 1}. The cast of the play, as JSON:\n") for i in range(n)]


def params(mode: str, new_tokens: int, temperature: float, seed: int) -> SamplingParams:
    constraint = StructuredOutputs(json=SCHEMA) if mode == "json_schema" else None
    return SamplingParams(
        max_new_tokens=new_tokens,
        temperature=temperature,
        seed=None if temperature == 0 else seed,
        ignore_eos=constraint is None,  # the grammar allows EOS only once the JSON is complete
        structured_outputs=constraint,
    )


def offline_run(
    engine: EngineCore, batch: list[list[int]], mode: str, new_tokens: int, temperature: float
) -> float:
    """Decode tok/s of one batch run to the end; every request must produce new_tokens."""
    for i, ids in enumerate(batch):
        engine.add_request(f"{mode}-{i}", ids, params(mode, new_tokens, temperature, seed=i))
    started: set[str] = set()
    counts: dict[str, int] = {}
    t0 = None
    decoded = 0
    while engine.has_unfinished_requests():
        outputs = engine.step()
        for out in outputs:
            counts[out.request_id] = counts.get(out.request_id, 0) + len(out.new_token_ids)
            if t0 is not None:
                decoded += len(out.new_token_ids)
            elif out.new_token_ids:
                started.add(out.request_id)
        if t0 is None and len(started) == len(batch):
            t0 = time.perf_counter()
    elapsed = time.perf_counter() - (t0 or 0.0)
    short = {rid: n for rid, n in counts.items() if n != new_tokens}
    if short:
        raise RuntimeError(f"{mode}: requests ended before {new_tokens} tokens: {short}")
    return decoded / elapsed


def alternating(repeats: int) -> list[tuple[str, ...]]:
    """Mode orders per repeat: ABAB, then BABA (no mode always runs first)."""
    return [MODES if r % 2 == 0 else MODES[::-1] for r in range(repeats)]


Results = dict[tuple[int, str], list[float]]


def offline_bench(engine: EngineCore, args: argparse.Namespace) -> Results:
    start = time.perf_counter()
    engine.add_request("compile", [1, 2, 3], params("json_schema", 1, 0.0, 0))
    print(f"grammar compile (first request): {(time.perf_counter() - start) * 1e3:.1f} ms")
    while engine.has_unfinished_requests():
        engine.step()
    results: Results = {}
    for streams in args.streams:
        batch = prompts(engine, streams)
        for mode in MODES:  # warm-up, not counted
            offline_run(engine, batch, mode, args.new_tokens, args.temperature)
        for order in alternating(args.repeats):
            for mode in order:
                rate = offline_run(engine, batch, mode, args.new_tokens, args.temperature)
                results.setdefault((streams, mode), []).append(rate)
                print(f"  offline streams={streams:>2} {mode:<11} {rate:8.1f} tok/s", flush=True)
    return results


def matcher_bench(engine: EngineCore, args: argparse.Namespace) -> dict[int, float]:
    """The grammar's own work per decode step, without the model: for `streams` matchers, the
    sampler's bitmask step (apply_grammars over [streams, V] logits) and each matcher's
    advance, over the tokens of one real constrained output; median ms per step."""
    engine.add_request(
        "tokens", prompts(engine, 1)[0], params("json_schema", args.new_tokens, 0, 0)
    )
    tokens: list[int] = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens += out.new_token_ids
    spec = StructuredOutputs(json=SCHEMA)
    vocab = engine.model.config.vocab_size
    assert engine.tokenizer is not None
    compiler = GrammarCompiler(engine.tokenizer, vocab, engine.eos_token_id)
    found: dict[int, float] = {}
    for streams in args.streams:
        logits = torch.randn(streams, vocab)
        times = []
        for _ in range(args.repeats + 1):  # the first one warms up, not counted
            rows = [SimpleNamespace(grammar=compiler.matcher(spec)) for _ in range(streams)]
            requests = cast("list[Request]", rows)
            start = time.perf_counter()
            for token in tokens:
                apply_grammars(logits, requests)
                for row in rows:
                    row.grammar.consume_token(token)
            times.append((time.perf_counter() - start) / len(tokens))
        found[streams] = statistics.median(times[1:]) * 1e3
        print(f"  matcher streams={streams:>2} {found[streams]:.3f} ms/step", flush=True)
    return found


async def server_run(url: str, streams: int, mode: str, args: argparse.Namespace) -> float:
    import httpx

    body: dict[str, Any] = {
        "max_tokens": args.new_tokens,
        "temperature": args.temperature,
    }
    if mode == "json_schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "cast", "schema": SCHEMA, "strict": True},
        }
    else:
        body["ignore_eos"] = True
    texts = [f"Scene {i + 1}. The cast of the play, as JSON:\n" for i in range(streams)]
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        start = time.perf_counter()
        replies = await asyncio.gather(
            *(
                client.post("/v1/completions", json={**body, "prompt": t, "seed": i})
                for i, t in enumerate(texts)
            )
        )
        elapsed = time.perf_counter() - start
    tokens = 0
    for reply in replies:
        if reply.status_code != 200:
            raise RuntimeError(f"{mode}: HTTP {reply.status_code}: {reply.text}")
        done = reply.json()["usage"]["completion_tokens"]
        if done != args.new_tokens:
            raise RuntimeError(f"{mode}: a request ended after {done} tokens")
        tokens += done
    return tokens / elapsed


def server_bench(args: argparse.Namespace) -> Results:
    from loadtests.server_process import ServeProcess

    results: Results = {}
    threads = args.threads or torch.get_num_threads()
    flags = ("--max-num-seqs", str(max(args.streams)), "--grpc-port", "0")
    with (
        tempfile.TemporaryDirectory() as tmp,
        ServeProcess(FOLDER, Path(tmp) / "serve.log", threads, *flags) as server,
    ):
        for streams in args.streams:
            for mode in MODES:  # warm-up (and the grammar's compilation), not counted
                asyncio.run(server_run(server.url, streams, mode, args))
            for order in alternating(args.repeats):
                for mode in order:
                    rate = asyncio.run(server_run(server.url, streams, mode, args))
                    results.setdefault((streams, mode), []).append(rate)
                    print(
                        f"  server  streams={streams:>2} {mode:<11} {rate:8.1f} tok/s", flush=True
                    )
    return results


def table(title: str, results: dict[tuple[int, str], list[float]], streams: list[int]) -> str:
    """Medians side by side, and the median of each repeat's json_schema / free pair (the
    two runs next to each other, so drift in the machine's speed mostly cancels); ms per step
    = streams / tok/s (one token per stream a step)."""
    lines = [
        f"| {title}: streams | free tok/s | json_schema tok/s | ratio of medians "
        "| median paired ratio | ms/step free | ms/step json_schema |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in streams:
        frees, jsons = results[(n, "free")], results[(n, "json_schema")]
        free, constrained = statistics.median(frees), statistics.median(jsons)
        paired = statistics.median(j / f for f, j in zip(frees, jsons, strict=True))
        lines.append(
            f"| {n} | {free:,.1f} | {constrained:,.1f} | {constrained / free:.2f}x "
            f"| {paired:.2f}x | {1e3 * n / free:.2f} | {1e3 * n / constrained:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--server", action="store_true", help="also through hagmoe serve")
    parser.add_argument("--json", type=Path, default=None, help="write the runs here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = EngineConfig(max_num_seqs=max(args.streams), device=args.device)
    engine = load_engine(FOLDER, config=config)
    offline = offline_bench(engine, args)
    matcher = matcher_bench(engine, args)
    print()
    print(table("offline", offline, args.streams))
    print()
    print("| grammar alone: streams | ms/step | ms/step per stream |")
    print("| ---: | ---: | ---: |")
    for n, ms in matcher.items():
        print(f"| {n} | {ms:.3f} | {ms / n:.3f} |")
    runs: dict[str, Any] = {"offline": {f"{n}/{m}": v for (n, m), v in offline.items()}}
    runs["matcher_ms_per_step"] = matcher
    if args.server:
        server = server_bench(args)
        print()
        print(table("server", server, args.streams))
        runs["server"] = {f"{n}/{m}": v for (n, m), v in server.items()}
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": None}, "runs": runs}))


if __name__ == "__main__":
    main()
