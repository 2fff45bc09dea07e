"""Does llama.cpp run the exported GGUF as hagmoe runs the model? (needs `make llama-cpp`)

A random standard top-k model of the bench shape is exported at each format, served by
llama-server, and asked for `steps` greedy tokens (ignore_eos) from a prompt given as token ids,
with the top `n_probs` log-probabilities of every step (llama.cpp's softmax of its raw logits).
hagmoe's full forward over prompt + those tokens then gives, at every step, its greedy token
(EOS masked, as ignore_eos does) and its log-softmax at llama.cpp's top ids, and hagmoe's engine
(the serving decode path) generates its own greedy tokens. f32 must agree: every greedy token
(both), the tokenizer on a few texts, and log-probabilities within --tolerance relative to the
step's logit scale.
llama.cpp's flash attention is off by default here (--flash-attn): on this CPU build it moves
the f32 log-probabilities by ~3e-4 relative, against ~1e-6 or less without it.

    .venv/bin/python loadtests/gguf_check.py                 # f32 (strict), bf16, q8_0 (shown)
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `loadtests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import torch

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model import HagMoEModel, Tokenizer, named_config, random_model
from loadtests.gguf_export import FORMATS, TOPK_OVERRIDES, export_gguf
from loadtests.llama_server import DEFAULT_BINARY, FLASH_ATTN, LlamaServer

MIN_LOGPROB = -80.0  # exp(-80) ~ 1.8e-35, above float32's smallest normal number


@dataclass(slots=True)
class Agreement:
    """How one format's llama.cpp run compares with hagmoe's."""

    fmt: str
    steps: int
    greedy_agree: int  # steps whose llama.cpp token is hagmoe's greedy token
    first_disagreement: int | None
    probed: int  # steps with llama.cpp log-probabilities
    compared: int  # top ids compared (log-probability above MIN_LOGPROB)
    max_abs_logprob: float  # max |hagmoe - llama.cpp| log-probability over the top ids
    max_rel_logprob: float  # the same over the step's logit scale (max |hagmoe logit|)
    same_tokens: bool = True  # llama-server's /tokenize gave hagmoe's ids
    engine_agree: int = 0  # steps whose llama.cpp token is the hagmoe engine's (decode path)

    def line(self) -> str:
        first = "-" if self.first_disagreement is None else str(self.first_disagreement)
        return (
            f"{self.fmt:>5}: greedy {self.greedy_agree}/{self.steps} agree with the forward, "
            f"{self.engine_agree}/{self.steps} with the engine (first mismatch "
            f"{first}); {self.compared} top log-probs of {self.probed} steps: "
            f"max |d| {self.max_abs_logprob:.3g} "
            f"(relative {self.max_rel_logprob:.3g})"
        )


def _complete(url: str, prompt: list[int], steps: int, n_probs: int) -> dict[str, Any]:
    body = {
        "prompt": prompt,
        "n_predict": steps,
        "temperature": 0.0,
        "ignore_eos": True,
        "n_probs": n_probs,
        "return_tokens": True,
        "cache_prompt": False,
        "stream": False,
    }
    response = httpx.post(url + "/completion", json=body, timeout=120.0)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def llama_greedy(
    url: str, prompt: list[int], steps: int, n_probs: int
) -> tuple[list[int], list[list[dict[str, Any]] | None]]:
    """llama-server's greedy tokens, and each step's top log-probabilities [{"id", "logprob"}]
    (None where llama.cpp reports none). llama-server drops the probabilities of a token that
    leaves its text ending inside a UTF-8 character, so each step is asked on its own: the
    prompt and the tokens before it, one token to generate."""
    tokens = [int(t) for t in _complete(url, prompt, steps, 0)["tokens"]]
    if len(tokens) != steps:
        raise RuntimeError(f"llama-server generated {len(tokens)} tokens, asked for {steps}")
    per_step: list[list[dict[str, Any]] | None] = []
    for i, token in enumerate(tokens):
        one = _complete(url, prompt + tokens[:i], 1, n_probs)
        if [int(t) for t in one["tokens"]] != [token]:
            raise RuntimeError(f"step {i}: llama-server gave {one['tokens']}, before {token}")
        probs = one.get("completion_probabilities") or []
        per_step.append(list(probs[0]["top_logprobs"]) if probs else None)
    return tokens, per_step


TEXTS = ("Hello, world! 0123 ;:?'-", "  two  spaces\tand a tab\n", "caf\u00e9 \u2014 \u00fcber 42")


def same_tokens(url: str, tokenizer: Tokenizer) -> bool:
    """Whether llama-server's /tokenize gives hagmoe's ids for TEXTS (plain text and UTF-8)."""
    for text in TEXTS:
        body = {"content": text, "add_special": False}
        ids = httpx.post(url + "/tokenize", json=body, timeout=30.0).json()["tokens"]
        if ids != tokenizer.encode(text):
            print(f"tokenizer: {text!r} -> llama.cpp {ids} vs hagmoe {tokenizer.encode(text)}")
            return False
    return True


def engine_greedy(model: HagMoEModel, prompt: list[int], steps: int) -> list[int]:
    """hagmoe's engine (its serving decode path, paged KV cache) greedy with ignore_eos."""
    engine = EngineCore(model, None, EngineConfig(max_num_seqs=1, num_blocks=64))
    params = SamplingParams(max_new_tokens=steps, temperature=0.0, ignore_eos=True)
    engine.add_request("gguf-check", prompt, params)
    tokens: list[int] = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens += out.new_token_ids
    return tokens


def compare(
    model: HagMoEModel,
    prompt: list[int],
    tokens: list[int],
    probs: list[list[dict[str, Any]] | None],
    eos: int | None,
    fmt: str,
    same_tokens: bool = True,
) -> Agreement:
    ids = torch.tensor([prompt + tokens[:-1]])
    with torch.inference_mode():
        logits = model.forward_full(ids).logits[0, len(prompt) - 1 :].double()  # [steps, V]
    logprobs = torch.log_softmax(logits, dim=-1)
    masked = logits.clone()
    if eos is not None:
        masked[:, eos] = float("-inf")
    greedy = masked.argmax(-1).tolist()
    agree = [g == t for g, t in zip(greedy, tokens, strict=True)]
    max_abs = max_rel = 0.0
    compared = 0
    for step, tops in enumerate(probs):
        scale = float(logits[step].abs().max())
        for top in tops or []:
            if float(top["logprob"]) < MIN_LOGPROB:
                continue  # the float32 probability underflowed: its log carries no digits
            diff = abs(float(logprobs[step, int(top["id"])]) - float(top["logprob"]))
            compared += 1
            max_abs, max_rel = max(max_abs, diff), max(max_rel, diff / scale)
    first = next((i for i, ok in enumerate(agree) if not ok), None)
    engine = engine_greedy(model, prompt, len(tokens))
    engine_agree = sum(a == b for a, b in zip(engine, tokens, strict=True))
    probed = sum(p is not None for p in probs)
    return Agreement(
        fmt,
        len(tokens),
        sum(agree),
        first,
        probed,
        compared,
        max_abs,
        max_rel,
        same_tokens,
        engine_agree,
    )


def run_check(
    binary: Path,
    formats: Sequence[str],
    config: str,
    steps: int,
    prompt_len: int,
    n_probs: int,
    threads: int,
    seed: int,
    flash_attn: str = "off",
) -> list[Agreement]:
    torch.set_num_threads(threads)
    model = random_model(named_config(config, **TOPK_OVERRIDES), seed=seed)
    tokenizer = Tokenizer.byte_level(model.config.vocab_size)
    rng = random.Random(seed)
    prompt = [rng.randrange(256) for _ in range(prompt_len)]  # byte tokens
    results = []
    with tempfile.TemporaryDirectory(prefix="hagmoe-gguf-check-") as tmp:
        for fmt in formats:
            path = export_gguf(model, tokenizer, Path(tmp) / f"{config}-{fmt}.gguf", fmt)
            log = Path(tmp) / f"llama-server-{fmt}.log"
            ctx = prompt_len + steps + 16
            with LlamaServer(binary, path, log, threads, 1, ctx, flash_attn=flash_attn) as server:
                tokens, probs = llama_greedy(server.url, prompt, steps, n_probs)
                same = same_tokens(server.url, tokenizer)
            print(f"{fmt:>5}: tokenizer {'agrees' if same else 'DISAGREES'} on {len(TEXTS)} texts")
            results.append(compare(model, prompt, tokens, probs, tokenizer.eos_token_id, fmt, same))
            print(results[-1].line(), flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--llama-server", type=Path, default=DEFAULT_BINARY)
    p.add_argument("--formats", nargs="+", choices=sorted(FORMATS), default=list(FORMATS))
    p.add_argument("--config", default="bench", help="named config, made standard top-k")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--n-probs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flash-attn", choices=FLASH_ATTN, default="off", help="llama.cpp -fa")
    p.add_argument("--tolerance", type=float, default=1e-4, help="f32 relative log-prob error")
    args = p.parse_args(argv)
    results = run_check(
        args.llama_server,
        args.formats,
        args.config,
        args.steps,
        args.prompt_len,
        args.n_probs,
        args.threads,
        args.seed,
        args.flash_attn,
    )
    strict = [r for r in results if r.fmt == "f32"]
    ok = all(
        r.greedy_agree == r.engine_agree == r.steps
        and r.compared > 0
        and r.max_rel_logprob <= args.tolerance
        and r.same_tokens
        for r in strict
    )
    print("gguf_check: " + ("f32 agrees" if ok else "f32 DISAGREES") if strict else "no f32 run")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
