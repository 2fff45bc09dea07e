"""bench_serving over HTTP: one streaming request to /generate_stream (TGI), /v1/completions or
/v1/chat/completions, timed at every token message of the SSE stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import aiohttp

from loadtests.metrics import RequestOutput, StreamTimer
from loadtests.prompts import BenchRequest

ROUTES = {
    "tgi": "/generate_stream",
    "openai": "/v1/completions",
    "openai-chat": "/v1/chat/completions",
}


async def sse_data(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The data of each server-sent event in `chunks` (the body as it arrives) as soon as the
    event is complete: one await per network read, not per line (the load generator's CPU
    comes out of the server's on a small machine)."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        if b"\r" in pending:  # a CR LF split between reads joins here
            pending = pending.replace(b"\r\n", b"\n")
        *events, pending = pending.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    yield line[len(b"data:") :].strip()


class StreamError(Exception):
    """The server ended a stream with an error event."""


class HttpBackend:
    """Streams requests to one server over pooled aiohttp connections (a C HTTP parser: the
    load generator shares the machine with the server it measures)."""

    def __init__(
        self,
        kind: str,
        base_url: str,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 600.0,
        max_connections: int = 256,
        keep_alive: bool = True,
    ) -> None:
        if kind not in ROUTES:
            raise ValueError(f"unknown HTTP backend {kind!r}; choose one of {sorted(ROUTES)}")
        self.kind, self.model = kind, model
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = aiohttp.ClientTimeout(total=timeout, connect=30.0)
        self.max_connections, self.keep_alive = max_connections, keep_alive
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the connection pool; learn the served model name from /v1/models when an
        OpenAI route needs it."""
        self.session = aiohttp.ClientSession(
            headers=self.headers,
            timeout=self.timeout,
            connector=aiohttp.TCPConnector(
                limit=self.max_connections, force_close=not self.keep_alive
            ),
        )
        if self.kind != "tgi" and self.model is None:
            async with self.session.get(f"{self.base_url}/v1/models") as response:
                response.raise_for_status()
                self.model = str((await response.json())["data"][0]["id"])

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def body(self, req: BenchRequest) -> dict[str, Any]:
        if self.kind == "tgi":
            params = {"max_new_tokens": req.output_len, "ignore_eos": True, "details": True}
            return {"inputs": req.prompt, "parameters": params}
        common = {
            "model": self.model,
            "max_tokens": req.output_len,
            "temperature": 0.0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.kind == "openai":
            return {**common, "prompt": req.prompt}
        return {**common, "messages": [{"role": "user", "content": req.prompt}]}

    async def send(self, req: BenchRequest) -> RequestOutput:
        assert self.session is not None, "start() first"
        out, timer = RequestOutput(), StreamTimer()
        url = self.base_url + ROUTES[self.kind]
        try:
            async with self.session.post(url, json=self.body(req)) as resp:
                if resp.status != 200:
                    text = (await resp.read()).decode(errors="replace")[:200]
                    out.error = f"HTTP {resp.status}: {text}"
                    return out
                async for payload in sse_data(resp.content.iter_any()):
                    if payload == b"[DONE]":
                        break
                    self.on_event(json.loads(payload), timer, out)
        except (TimeoutError, aiohttp.ClientError, StreamError, ValueError, KeyError) as exc:
            out.error = f"{type(exc).__name__}: {exc}"[:300]
            return out
        timer.finish(out)
        return out

    def on_event(self, event: dict[str, Any], timer: StreamTimer, out: RequestOutput) -> None:
        if "error" in event:
            raise StreamError(json.dumps(event["error"])[:200])
        if self.kind == "tgi":
            self._on_tgi(event, timer, out)
        else:
            self._on_openai(event, timer, out)

    @staticmethod
    def _on_tgi(event: dict[str, Any], timer: StreamTimer, out: RequestOutput) -> None:
        if "token" not in event:
            return
        timer.token()
        out.output_len += 1
        details = event.get("details")
        if details:
            out.prompt_len = int(details["input_length"])
            out.output_len = int(details["generated_tokens"])

    @staticmethod
    def _on_openai(event: dict[str, Any], timer: StreamTimer, out: RequestOutput) -> None:
        usage = event.get("usage")
        if usage:
            out.prompt_len = int(usage["prompt_tokens"])
            out.output_len = int(usage["completion_tokens"])
        choices = event.get("choices") or []
        if choices and "role" not in (choices[0].get("delta") or {}):
            timer.token()  # one chunk per engine step; the chat role chunk carries no token
