"""`hagmoe serve` as a subprocess on loopback free ports, for the comparison run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_ready(
    proc: subprocess.Popen[bytes], url: str, name: str, log: Callable[[], str], timeout: float
) -> None:
    """Poll `url` until it answers 200; raise with the process log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log()}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{name} not ready after {timeout}s:\n{log()}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited after `timeout` seconds; no-op once exited."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ServeProcess:
    """One `python -m hagmoe.cli serve` on 127.0.0.1; a context manager that always stops it."""

    def __init__(self, model: Path, log: Path, threads: int, *extra: str) -> None:
        self.port, self.grpc_port = free_port(), free_port()
        self.log_path = log
        self.args = [
            sys.executable, "-m", "hagmoe.cli", "serve",
            "--model", str(model),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--grpc-port", str(self.grpc_port),
            "--threads", str(threads),
            "--log-level", "warning",
            *extra,
        ]  # fmt: skip
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 120.0) -> ServeProcess:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=log, stderr=log)
        try:
            wait_until_ready(self.proc, self.url + "/ready", "hagmoe serve", self.log, timeout)
        except RuntimeError:
            self.stop()
            raise
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=30)

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
