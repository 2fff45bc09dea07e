"""The tests' served model and `hagmoe serve` settings (loadtests.server_process launches
it), and SSE parsing."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hagmoe.model import Tokenizer, named_config, random_model, save_model
from loadtests.server_process import ServeProcess


def save_tiny_model(folder: Path, vocab: int = 320, eos: int = 257, **overrides: Any) -> Path:
    """The tests' served model: `tiny` (with config overrides), random weights (seed 0), a
    byte-level tokenizer."""
    config = named_config("tiny", vocab_size=vocab, eos_token_id=eos, **overrides)
    save_model(random_model(config, seed=0), folder, tokenizer=Tokenizer.byte_level(vocab))
    return folder


# `tiny` widened so that a 480-token request takes ~0.6 s on one thread (tiny's own: ~0.25 s
# served): the drain tests' in-flight requests outlast the checks made while they run
WIDER = {"hidden_size": 256, "num_layers": 4, "ffn_size": 512}


KEYS = ("key-one", "key-from-file")
TEST_FLAGS = ("--num-blocks", "256", "--max-num-seqs", "8")


def launch_server(model: Path, log: Path, *extra: str) -> ServeProcess:
    """The tests' `hagmoe serve`, started but not yet ready: one thread, a 256-block cache,
    8 sequences, info logs, 60 s to get ready, 15 s from SIGTERM to SIGKILL."""
    return ServeProcess(
        model, log, 1, *TEST_FLAGS, *extra,
        log_level="info", ready_timeout=60.0, stop_timeout=15.0,
    )  # fmt: skip


def sse_events(lines: Iterable[str]) -> list[Any]:
    """The JSON payloads of `data:` lines (the literal [DONE] kept as a string)."""
    events: list[Any] = []
    for line in lines:
        if line.startswith("data:"):
            payload = line[len("data:") :].strip()
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events
