"""`hagmoe serve` as a subprocess on free loopback ports: the one launcher that the comparison
run (loadtests/compare.py) and the integration and deployment tests share."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

ROOT = Path(__file__).resolve().parents[1]
LOG_TAIL = 4000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free when asked."""
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


def read_metric(url: str, name: str, labels: str = "") -> float:
    """A sample's value from the Prometheus exposition at `url` (0 when absent); `labels` as
    the exposition writes them, e.g. 'route="/generate",status="200"'."""
    text = httpx.get(url, timeout=5).text
    pattern = re.escape(name + ("{" + labels + "}" if labels else "")) + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", text, flags=re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class LoopbackProcess:
    """A server subprocess on 127.0.0.1:`port`, its output in a log file, started by the
    constructor (`start`) without waiting; `wait_ready()` polls READY_PATH. As a context manager
    it waits on entry and stops on exit, also when start-up fails."""

    NAME = "server"
    READY_PATH = "/health"

    def __init__(self, log: Path, ready_timeout: float, stop_timeout: float) -> None:
        self.port = free_port()
        self.log_path = log
        self.ready_timeout, self.stop_timeout = ready_timeout, stop_timeout

    def start(self, args: list[str], env: dict[str, str]) -> None:
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=out)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        """Return once READY_PATH answers 200; raise RuntimeError, with the log's tail, if the
        process exits first or `ready_timeout` passes."""
        wait_until_ready(
            self.proc, self.url + self.READY_PATH, self.NAME, self.log_tail, self.ready_timeout
        )

    def log(self) -> str:
        """Everything the process has written to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def log_tail(self) -> str:
        """The log's last LOG_TAIL characters."""
        return self.log()[-LOG_TAIL:]

    def stop(self) -> int:
        """SIGTERM, SIGKILL after `stop_timeout`; the exit status (no-op once exited)."""
        stop_process(self.proc, timeout=self.stop_timeout)
        return self.proc.returncode

    def __enter__(self) -> Self:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ServeProcess(LoopbackProcess):
    """One `python -m hagmoe.cli serve` on 127.0.0.1 (HTTP and gRPC), a LoopbackProcess ready
    once /ready answers."""

    NAME = "hagmoe serve"
    READY_PATH = "/ready"

    def __init__(
        self,
        model: Path,
        log: Path,
        threads: int,
        *extra: str,
        log_level: str = "warning",
        ready_timeout: float = 120.0,
        stop_timeout: float = 30.0,
    ) -> None:
        super().__init__(log, ready_timeout, stop_timeout)
        self.grpc_port = free_port()
        args = [
            sys.executable, "-m", "hagmoe.cli", "serve",
            "--model", str(model),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--grpc-port", str(self.grpc_port),
            "--threads", str(threads),
            "--log-level", log_level,
            *extra,
        ]  # fmt: skip
        self.start(args, {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"})

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def metric(self, name: str, labels: str = "") -> float:
        """A sample's value from /metrics (0 when absent); see read_metric."""
        return read_metric(self.url + "/metrics", name, labels)

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
