"""Real `hagmoe serve` processes on loopback ports, over a tiny random model saved here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from live_server import KEYS, ServerProcess, save_tiny_model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def launched(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    """The shared servers, started together so their start-up overlaps."""
    logs = tmp_path_factory.mktemp("logs")
    key_file = logs / "keys.txt"
    key_file.write_text(f"# keys\n{KEYS[1]}\n")
    servers = {
        "main": ServerProcess(model_dir, logs / "main.log", "--served-model-name", "tiny"),
        "strict": ServerProcess(
            model_dir,
            logs / "strict.log",
            *("--api-key", KEYS[0], "--api-key-file", str(key_file)),
            *("--max-concurrent-requests", "1", "--max-queue", "0", "--max-body-bytes", "2048"),
        ),
        "drain": ServerProcess(model_dir, logs / "drain.log", "--drain-timeout", "20"),
    }
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def server(launched: dict[str, ServerProcess]) -> ServerProcess:
    launched["main"].wait_ready()
    return launched["main"]


@pytest.fixture(scope="session")
def strict(launched: dict[str, ServerProcess]) -> ServerProcess:
    launched["strict"].wait_ready()
    return launched["strict"]


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[0]}"}


@pytest.fixture(scope="session")
def draining(launched: dict[str, ServerProcess]) -> ServerProcess:
    """A server for the one test that sends it SIGTERM."""
    launched["drain"].wait_ready()
    return launched["drain"]
