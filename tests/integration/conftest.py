"""Real `hagmoe serve` processes on loopback ports, over a tiny random model saved here, and one
over the bundled model (its tokenizer is what grammars and lm-eval need)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from live_server import KEYS, WIDER, launch_server, save_tiny_model

import hagmoe
from loadtests.server_process import ServeProcess

BUNDLED_NAME = "bundled"  # the bundled server's --served-model-name


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def wider_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("wider-model"), **WIDER)


@pytest.fixture(scope="session")
def launched(
    model_dir: Path, wider_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServeProcess]]:
    """The shared servers, started together so their start-up overlaps."""
    logs = tmp_path_factory.mktemp("logs")
    key_file = logs / "keys.txt"
    key_file.write_text(f"# keys\n{KEYS[1]}\n")
    servers = {
        "main": launch_server(model_dir, logs / "main.log", "--served-model-name", "tiny"),
        "strict": launch_server(
            model_dir,
            logs / "strict.log",
            *("--api-key", KEYS[0], "--api-key-file", str(key_file)),
            *("--max-concurrent-requests", "1", "--max-queue", "0", "--max-body-bytes", "2048"),
            *("--header-timeout", "1", "--body-timeout", "1"),
        ),
        "drain": launch_server(wider_model_dir, logs / "drain.log", "--drain-timeout", "20"),
        "cut": launch_server(wider_model_dir, logs / "cut.log", "--drain-timeout", "0.1"),
    }
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def server(launched: dict[str, ServeProcess]) -> ServeProcess:
    launched["main"].wait_ready()
    return launched["main"]


@pytest.fixture(scope="session")
def strict(launched: dict[str, ServeProcess]) -> ServeProcess:
    launched["strict"].wait_ready()
    return launched["strict"]


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[0]}"}


@pytest.fixture(scope="session")
def draining(launched: dict[str, ServeProcess]) -> ServeProcess:
    """A server for the one test that sends it SIGTERM."""
    launched["drain"].wait_ready()
    return launched["drain"]


@pytest.fixture(scope="session")
def cut(launched: dict[str, ServeProcess]) -> ServeProcess:
    """A server whose 0.1 s drain timeout expires, for the one test that sends it SIGTERM."""
    launched["cut"].wait_ready()
    return launched["cut"]


@pytest.fixture(scope="session")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """`hagmoe serve` on the bundled model, served as BUNDLED_NAME, Hermes tool calls on."""
    log = tmp_path_factory.mktemp("bundled") / "serve.log"
    folder = Path(hagmoe.__file__).parent / "assets"
    server = launch_server(
        folder, log, "--served-model-name", BUNDLED_NAME, "--tool-call-parser", "hermes"
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
