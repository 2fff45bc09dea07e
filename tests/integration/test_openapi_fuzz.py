"""Schemathesis against real servers on loopback: every documented operation, positive and
negative examples (bounded, derandomized), on a server without keys and on one with keys.
Fails on a 5xx, an undocumented status or content type, a body that does not match its
documented schema (not for server-sent events, which schemathesis cannot parse: their
status and content type are still checked), and on a protected route that answers a call
without a key when the server has keys."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_server import KEYS, launch_server
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from loadtests.server_process import ServeProcess

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
GENERATION_OPERATIONS = (
    "POST /generate",
    "POST /generate_stream",
    "POST /",
    "POST /v1/completions",
    "POST /v1/chat/completions",
)
EXPECTED_OPERATIONS = {
    *GENERATION_OPERATIONS,
    *("GET /v1/models", "POST /tokenize", "POST /detokenize", "GET /info"),
    *("GET /health", "HEAD /health", "GET /ready", "GET /metrics"),
}
EXAMPLES = 30  # per operation (both generation modes together)
BUDGET_S = 80.0  # both servers together; operations past it are left out (and fail the test)
MODEL = "tiny"
# Every request ends within 3 s (504 after that), so one slow example cannot eat the budget.
FLAGS = ("--served-model-name", MODEL, "--request-timeout", "3")
BASE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def fuzz_servers(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One server without keys and one with KEYS[0], started together."""
    logs = tmp_path_factory.mktemp("fuzz-logs")
    servers = {
        "open": launch_server(model_dir, logs / "open.log", *FLAGS),
        "keyed": launch_server(model_dir, logs / "keyed.log", *FLAGS, "--api-key", KEYS[0]),
    }
    try:
        for server in servers.values():
            server.wait_ready()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def operations(server: ServeProcess, headers: dict[str, str]) -> list[Any]:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", headers=headers)
    return [result.ok() for result in schema.get_all_operations()]


def is_stream(response: Any) -> bool:
    return "text/event-stream" in response.headers.get("content-type", [""])[0]


def served_model(mode: GenerationMode, case: Any) -> Any:
    """Positive /v1 examples name the served model, so they reach the engine (not a 404)."""
    if mode == GenerationMode.POSITIVE and isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = MODEL
    return case


def own_deadline(case: Any, response: Any) -> bool:
    """A 504 that answers the request's own `timeout` (fuzzed down to ~0 s): the documented
    outcome, not a server error."""
    asked = isinstance(case.body, dict) and isinstance(case.body.get("timeout"), int | float)
    return asked and response.status_code == 504 and "deadline expired" in response.text


def fuzz_operation(operation: Any, server: ServeProcess, headers: dict[str, str]) -> Counter[int]:
    """Run bounded examples of one operation in both generation modes; raise on a failure;
    the status codes seen."""
    modes = st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
    strategy = modes.flatmap(
        lambda mode: operation.as_strategy(generation_mode=mode).map(
            lambda case: served_model(mode, case)
        )
    )
    seen: Counter[int] = Counter()

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(base_url=server.url, headers=headers, timeout=10)
        seen[response.status_code] += 1
        checks = BASE_CHECKS if is_stream(response) else [*BASE_CHECKS, response_schema_conformance]
        if own_deadline(case, response):
            checks = [check for check in checks if check is not not_a_server_error]
        case.validate_response(response, checks=checks, headers=headers)

    run()
    return seen


def fuzz_all(
    server: ServeProcess, headers: dict[str, str], budget: float
) -> dict[str, Counter[int]]:
    """Fuzz every operation; the status codes per operation done (stops early when the budget
    is spent)."""
    deadline = time.monotonic() + budget
    done: dict[str, Counter[int]] = {}
    for operation in operations(server, headers):
        if time.monotonic() > deadline:
            break
        done[operation.label] = fuzz_operation(operation, server, headers)
    return done


def assert_coverage(done: dict[str, Counter[int]]) -> None:
    """Every operation ran, every generation route answered 4xx, and the fuzzer reached the
    success path of most of them (how many of 30 examples are valid depends on the generator's
    version: a chat body is rarely valid at random)."""
    assert set(done) >= EXPECTED_OPERATIONS, sorted(done)
    for label in GENERATION_OPERATIONS:
        assert any(400 <= c < 500 for c in done[label]), (label, done[label])
    succeeded = [label for label in GENERATION_OPERATIONS if done[label][200] > 0]
    assert len(succeeded) >= len(GENERATION_OPERATIONS) - 1, done


def test_fuzz_without_keys(fuzz_servers: dict[str, ServeProcess]) -> None:
    assert_coverage(fuzz_all(fuzz_servers["open"], {}, BUDGET_S * 0.55))


def test_fuzz_with_keys(fuzz_servers: dict[str, ServeProcess]) -> None:
    server = fuzz_servers["keyed"]
    auth = {"Authorization": f"Bearer {KEYS[0]}"}
    assert_coverage(fuzz_all(server, auth, BUDGET_S * 0.45))
    for operation in operations(server, auth):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            case = operation.Case()
            response = case.call(base_url=server.url, headers=headers, timeout=10)
            expected = 200 if operation.path in OPEN_PATHS else 401
            assert response.status_code == expected, (operation.label, headers)
            if operation.path not in OPEN_PATHS:
                case.validate_response(response, checks=[*BASE_CHECKS, response_schema_conformance])
