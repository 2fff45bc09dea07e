"""Hostile input on REST: text that is not valid Unicode, a prompt far past the token limit,
and clients that send their request head or body too slowly."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from loadtests.server_process import ServeProcess

SURROGATE = "a\\ud800b"  # JSON for a lone UTF-16 surrogate between two letters
CASES = [
    ("/generate", '{"inputs": "%s"}', "inputs", "tgi"),
    ("/generate_stream", '{"inputs": "%s"}', "inputs", "tgi"),
    ("/tokenize", '{"inputs": "%s"}', "inputs", "tgi"),
    ("/v1/completions", '{"model": "tiny", "prompt": "%s"}', "prompt", "openai"),
    (
        "/v1/chat/completions",
        '{"model": "tiny", "messages": [{"role": "user", "content": "%s"}]}',
        "messages[0].content",
        "openai",
    ),
]


@pytest.mark.parametrize(("path", "body", "field", "api"), CASES)
def test_lone_surrogate_is_a_validation_error(
    server: ServeProcess, path: str, body: str, field: str, api: str
) -> None:
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        r = client.post(path, content=(body % SURROGATE).encode(), headers=headers)
        if api == "tgi":
            assert r.status_code == 422, r.text
            assert r.json()["error_type"] == "validation" and field in r.json()["error"]
        else:
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["type"] == "invalid_request_error"
            assert (error["param"] or "").startswith(field)  # pydantic may add a union branch
        assert client.get("/health").status_code == 200  # the same keep-alive connection


def test_huge_prompt_is_refused_without_stalling_others(server: ServeProcess) -> None:
    body = {"inputs": "a" * 2_000_000, "parameters": {"max_new_tokens": 1}}
    result: dict[str, httpx.Response] = {}
    worker = threading.Thread(
        target=lambda: result.setdefault(
            "big", httpx.post(server.url + "/generate", json=body, timeout=60)
        )
    )
    worker.start()
    slowest = 0.0
    while worker.is_alive():
        start = time.monotonic()
        assert httpx.post(server.url + "/tokenize", json={"inputs": "ab"}, timeout=10).is_success
        slowest = max(slowest, time.monotonic() - start)
    worker.join()
    big = result["big"]
    assert big.status_code == 422 and "max_input_tokens" in big.json()["error"], big.text
    assert slowest < 1.0


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes the connection (EOF or reset) within `seconds`."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_half_a_request_head_is_closed_after_the_header_timeout(strict: ServeProcess) -> None:
    address = ("127.0.0.1", strict.port)
    with socket.create_connection(address) as silent, socket.create_connection(address) as slow:
        slow.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Le")
        start = time.monotonic()
        assert _closed_within(slow, 5.0) and _closed_within(silent, 5.0)
        assert 0.5 < time.monotonic() - start < 4.0
    assert httpx.get(strict.url + "/health", timeout=5).status_code == 200


def test_slow_body_is_408_after_the_body_timeout(strict: ServeProcess) -> None:
    head = (
        "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Authorization: Bearer key-one\r\nContent-Length: 100\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", strict.port)) as sock:
        sock.sendall(head.encode() + b'{"inputs": ')
        sock.settimeout(5.0)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(4096)
            assert chunk, reply
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b"request_timeout" in reply or b"content-length" in reply.lower()
