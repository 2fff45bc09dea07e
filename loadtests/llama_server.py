"""llama.cpp's native `llama-server` as a subprocess on a free loopback port, for the llama.cpp
rows of loadtests/compare.py and loadtests/gguf_check.py (`make llama-cpp` builds it).

It decodes up to `parallel` sequences together (`-np`: one slot each, continuous batching), each
slot with its own `ctx_per_seq` tokens of KV cache, and serves the OpenAI-compatible
/v1/completions (with `ignore_eos`) and the native /completion (prompt as token ids, n_probs).
"""

from __future__ import annotations

import os
from pathlib import Path

from loadtests.server_process import ROOT, LoopbackProcess

DEFAULT_BINARY = ROOT / ".bench/llama.cpp/build/bin/llama-server"
KV_TYPES = ("f32", "f16", "bf16", "q8_0")
FLASH_ATTN = ("auto", "on", "off")  # llama.cpp's -fa (its default: auto)


class LlamaServerUnavailable(RuntimeError):
    """No llama-server binary where it was looked for."""


def require_llama_server(binary: Path) -> Path:
    """The binary, or LlamaServerUnavailable saying how to build it."""
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise LlamaServerUnavailable(
            f"no llama-server at {binary}: build it with `make llama-cpp` (llama.cpp from the "
            "llama-cpp-python source distribution) or pass --llama-server PATH"
        )
    return binary


class LlamaServer(LoopbackProcess):
    """One `llama-server -m MODEL.gguf` on 127.0.0.1, a LoopbackProcess ready once /health
    answers."""

    NAME = "llama-server"

    def __init__(
        self,
        binary: Path,
        model: Path,
        log: Path,
        threads: int,
        parallel: int,
        ctx_per_seq: int,
        kv_type: str = "f32",
        flash_attn: str = "auto",
        extra: tuple[str, ...] = (),
        ready_timeout: float = 120.0,
        stop_timeout: float = 30.0,
    ) -> None:
        if kv_type not in KV_TYPES:
            raise ValueError(f"llama.cpp KV cache type {kv_type!r}: choose one of {KV_TYPES}")
        if flash_attn not in FLASH_ATTN:
            raise ValueError(f"llama.cpp flash attention {flash_attn!r}: one of {FLASH_ATTN}")
        super().__init__(log, ready_timeout, stop_timeout)
        args = [
            str(require_llama_server(binary)),
            "-m", str(model),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "-t", str(threads),
            "-tb", str(threads),
            "-np", str(parallel),
            "-c", str(parallel * ctx_per_seq),  # split evenly over the slots (no unified KV)
            "-ctk", kv_type,
            "-ctv", kv_type,
            "-fa", flash_attn,
            "--cache-ram", "0",  # no host prompt cache: every request computes its prompt
            "--no-webui",
            "--alias", model.stem,
            *extra,
        ]  # fmt: skip
        self.start(args, {**os.environ, "OMP_NUM_THREADS": str(threads)})
