"""A real `hagmoe serve` subprocess on loopback ports, and SSE parsing for the tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from hagmoe.model import Tokenizer, named_config, random_model, save_model
from loadtests.server_process import free_port, stop_process, wait_until_ready

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0


def save_tiny_model(folder: Path, vocab: int = 320, eos: int = 257) -> Path:
    """The tests' served model: `tiny`, random weights (seed 0), a byte-level tokenizer."""
    config = named_config("tiny", vocab_size=vocab, eos_token_id=eos)
    save_model(random_model(config, seed=0), folder, tokenizer=Tokenizer.byte_level(vocab))
    return folder


KEYS = ("key-one", "key-from-file")


class ServerProcess:
    """One `python -m hagmoe.cli serve` subprocess; stop() terminates it and waits."""

    def __init__(self, model: Path, log: Path, *extra: str) -> None:
        self.port, self.grpc_port = free_port(), free_port()
        self.log_path = log
        args = [
            sys.executable, "-m", "hagmoe.cli", "serve",
            "--model", str(model),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--grpc-port", str(self.grpc_port),
            "--threads", "1",
            "--num-blocks", "256",
            "--max-num-seqs", "8",
            "--log-level", "info",
            *extra,
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self._log = log.open("wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log, stderr=self._log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self) -> None:
        wait_until_ready(self.proc, self.url + "/ready", "server", self.log, START_TIMEOUT)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        stop_process(self.proc, timeout=15)
        self._log.close()
        return self.proc.returncode

    def metric(self, name: str, labels: str = "") -> float:
        """A sample's value from /metrics (0 when absent); labels as in the exposition."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        pattern = re.escape(name + ("{" + labels + "}" if labels else "")) + r" (\S+)"
        match = re.search(r"^" + pattern + r"$", text, flags=re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def wait_metric(
        self, name: str, target: float, labels: str = "", timeout: float = 5.0
    ) -> float:
        """The sample's value once it equals target, or its last value after timeout."""
        deadline = time.monotonic() + timeout
        value = self.metric(name, labels)
        while value != target and time.monotonic() < deadline:
            time.sleep(0.05)
            value = self.metric(name, labels)
        return value


def sse_events(lines: Iterable[str]) -> list[Any]:
    """The JSON payloads of `data:` lines (the literal [DONE] kept as a string)."""
    events: list[Any] = []
    for line in lines:
        if line.startswith("data:"):
            payload = line[len("data:") :].strip()
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events
