"""Locust load test of `hagmoe serve`: POST /generate, POST /generate_stream, streaming
POST /v1/chat/completions and gRPC GenerateStream, one user class each (pick classes by name on
the command line). Headless, with CSV output (docs/loadtests.md):

    locust -f loadtests/locustfile.py --headless -u 8 -r 8 -t 60s \\
        --host http://127.0.0.1:8000 --grpc-target 127.0.0.1:50051 --csv results/locust

A streamed request is one entry timed to its last token, plus an entry "TTFT <route>" timed to its
first token. Options (each also read from its environment variable): --prompt-len
[HAGMOE_PROMPT_LEN], --max-new-tokens [HAGMOE_MAX_NEW_TOKENS], --grpc-target [HAGMOE_GRPC_TARGET],
--grpc-tls, --model-name [HAGMOE_MODEL_NAME], --think-time [HAGMOE_THINK_TIME],
--request-timeout [HAGMOE_REQUEST_TIMEOUT]; the API key is HAGMOE_API_KEY.
"""

from __future__ import annotations

import json
import os
import random
import string
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import HttpUser, User, events, task

from server._generated import generation_pb2 as pb
from server._generated import generation_pb2_grpc as pb_grpc

grpc_gevent.init_gevent()  # before any gRPC object: gRPC waits must yield to gevent
ALPHABET = string.ascii_letters + string.digits + " .,;:!?'-"


class StreamFailure(Exception):
    """The stream ended with an error event or without tokens."""


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    add = parser.add_argument
    add("--prompt-len", type=int, env_var="HAGMOE_PROMPT_LEN", default=32, help="characters")
    add("--max-new-tokens", type=int, env_var="HAGMOE_MAX_NEW_TOKENS", default=32)
    add("--grpc-target", env_var="HAGMOE_GRPC_TARGET", default="", help="default HOST:50051")
    add("--grpc-tls", action="store_true", default=False, help="TLS for the gRPC channel")
    add("--model-name", env_var="HAGMOE_MODEL_NAME", default="", help="default: /v1/models")
    add("--think-time", type=float, env_var="HAGMOE_THINK_TIME", default=0.0, help="seconds")
    add("--request-timeout", type=float, env_var="HAGMOE_REQUEST_TIMEOUT", default=120.0)


def random_prompt(length: int) -> str:
    return "".join(random.choices(ALPHABET, k=length))


def auth_pairs() -> list[tuple[str, str]]:
    key = os.environ.get("HAGMOE_API_KEY", "").split(",")[0].strip()
    return [("authorization", f"Bearer {key}")] if key else []


def fire_ttft(user: User, request_type: str, route: str, seconds: float) -> None:
    user.environment.events.request.fire(
        request_type=request_type,
        name=f"TTFT {route}",
        response_time=seconds * 1000.0,
        response_length=0,
        exception=None,
        context={},
    )


class HagmoeHttpUser(HttpUser):
    """Shared set-up of the HTTP users: API key header, options, SSE streaming."""

    abstract = True

    def wait_time(self) -> float:
        return float(self.environment.parsed_options.think_time)

    def on_start(self) -> None:
        self.opts = self.environment.parsed_options
        self.client.headers.update({k.title(): v for k, v in auth_pairs()})

    def tgi_body(self) -> dict[str, Any]:
        params = {"max_new_tokens": self.opts.max_new_tokens, "ignore_eos": True}
        return {"inputs": random_prompt(self.opts.prompt_len), "parameters": params}

    def stream(self, route: str, body: dict[str, Any], is_token: Callable[[Any], bool]) -> None:
        """POST an SSE request; the route's entry is timed to the end of the stream."""
        start, first = time.perf_counter(), 0.0
        timeout = self.opts.request_timeout
        with self.client.post(
            route, json=body, stream=True, catch_response=True, timeout=timeout
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            try:
                first = read_sse(response.iter_lines(decode_unicode=True), is_token)
            except (StreamFailure, ValueError, OSError) as exc:
                response.failure(f"{type(exc).__name__}: {exc}")
                return
            response.request_meta["response_time"] = (time.perf_counter() - start) * 1000.0
            response.success()
        fire_ttft(self, "POST", route, first - start)


def read_sse(lines: Any, is_token: Callable[[Any], bool]) -> float:
    """Consume an SSE stream; returns when its first token arrived (perf_counter)."""
    first = 0.0
    for line in lines:
        if not line or not line.startswith("data:"):
            continue
        payload = line[len("data:") :].strip()
        if payload == "[DONE]":
            break
        event = json.loads(payload)
        if "error" in event:
            raise StreamFailure(json.dumps(event["error"])[:200])
        if is_token(event) and not first:
            first = time.perf_counter()
    if not first:
        raise StreamFailure("the stream ended without a token")
    return first


class GenerateUser(HagmoeHttpUser):
    """TGI POST /generate: one entry per request, no TTFT (not streamed)."""

    @task
    def generate(self) -> None:
        timeout = self.opts.request_timeout
        with self.client.post(
            "/generate", json=self.tgi_body(), catch_response=True, timeout=timeout
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif "generated_text" not in response.json():
                response.failure("no generated_text in the answer")


class GenerateStreamUser(HagmoeHttpUser):
    """TGI POST /generate_stream (SSE, one event per token)."""

    @task
    def generate_stream(self) -> None:
        self.stream("/generate_stream", self.tgi_body(), lambda e: "token" in e)


class ChatStreamUser(HagmoeHttpUser):
    """OpenAI POST /v1/chat/completions with stream: true (the role chunk is not a token)."""

    def on_start(self) -> None:
        super().on_start()
        self.model = self.opts.model_name or self.served_model()

    def served_model(self) -> str:
        response = self.client.get("/v1/models", name="/v1/models", timeout=30)
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])

    @task
    def chat_stream(self) -> None:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": random_prompt(self.opts.prompt_len)}],
            "max_tokens": self.opts.max_new_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            "stream": True,
        }
        self.stream("/v1/chat/completions", body, is_chat_token)


def is_chat_token(event: Any) -> bool:
    choices = event.get("choices") or []
    return bool(choices) and "role" not in (choices[0].get("delta") or {})


class GrpcStreamUser(User):
    """gRPC hagmoe.v1.Generation/GenerateStream; entries "GenerateStream" and its TTFT."""

    def wait_time(self) -> float:
        return float(self.environment.parsed_options.think_time)

    def on_start(self) -> None:
        self.opts = self.environment.parsed_options
        target = self.opts.grpc_target or f"{urlparse(self.host or '').hostname}:50051"
        if self.opts.grpc_tls:
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials())
        else:
            self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.GenerationStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def generate_stream(self) -> None:
        params = pb.SamplingParameters(max_new_tokens=self.opts.max_new_tokens, ignore_eos=True)
        request = pb.GenerateRequest(text=random_prompt(self.opts.prompt_len), parameters=params)
        start, first, size = time.perf_counter(), 0.0, 0
        error: Exception | None = None
        try:
            for message in self.stub.GenerateStream(
                request, metadata=auth_pairs(), timeout=self.opts.request_timeout
            ):
                size += message.ByteSize()
                if message.tokens and not first:
                    first = time.perf_counter()
            if not first:
                error = StreamFailure("the stream ended without a token")
        except grpc.RpcError as exc:
            error = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name="GenerateStream",
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=size,
            exception=error,
            context={},
        )
        if error is None:
            fire_ttft(self, "grpc", "GenerateStream", first - start)
