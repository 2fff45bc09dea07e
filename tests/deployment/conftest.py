"""A real `hagmoe serve` (tiny random model, loopback ports) configured the way the deployment
artefacts configure it, with a little traffic already served, for the tests that read /metrics
directly or through a real Prometheus."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from deploy_support import KUBERNETES, ROOT, load_yaml

sys.path.insert(0, str(ROOT / "tests" / "integration"))
from live_server import launch_server, save_tiny_model

from loadtests.server_process import ServeProcess

MODEL_NAME = "tiny"
# What the Kubernetes ConfigMap sets, except where the server must listen (the test's
# loopback ports) and what it serves (the tiny model): the server must accept all of it.
OVERRIDDEN = {"HAGMOE_HOST", "HAGMOE_PORT", "HAGMOE_GRPC_PORT", "HAGMOE_MODEL"}


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def send_traffic(server: ServeProcess) -> None:
    """A few requests of each kind, so every request metric has samples."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for prompt in ("Hello", "Hello there"):
            body = {"inputs": prompt, "parameters": {"max_new_tokens": 4, "ignore_eos": True}}
            client.post("/generate", json=body).raise_for_status()
        stream_body = {"inputs": "Stream", "parameters": {"max_new_tokens": 4, "ignore_eos": True}}
        with client.stream("POST", "/generate_stream", json=stream_body) as response:
            response.raise_for_status()
            for _ in response.iter_lines():
                pass
        completion = {"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 3, "ignore_eos": True}
        client.post("/v1/completions", json=completion).raise_for_status()
        invalid = client.post(
            "/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 0}}
        )
        assert invalid.status_code == 422


@pytest.fixture(scope="session")
def deploy_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("deploy-tiny-model"))


@pytest.fixture(scope="session")
def configmap_env() -> dict[str, str]:
    data: dict[str, str] = load_yaml(KUBERNETES / "configmap.yaml")["data"]
    return {key: value for key, value in data.items() if key not in OVERRIDDEN}


@pytest.fixture(scope="session")
def live_server(
    deploy_model_dir: Path,
    configmap_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServeProcess]:
    """One server for the deployment tests, started under the ConfigMap's settings."""
    log = tmp_path_factory.mktemp("deploy-logs") / "server.log"
    with environment(configmap_env):
        server = launch_server(deploy_model_dir, log, "--served-model-name", MODEL_NAME)
    try:
        server.wait_ready()
        send_traffic(server)
        yield server
    finally:
        server.stop()
