"""What the OpenAI-compatible routes share: error docs, finish reasons, usage, SSE framing."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from hagmoe.engine.outputs import RequestOutput
from hagmoe.engine.request import TokenLogprob
from server import request_context
from server.errors import InternalError, ModelNotFound, ServiceError, sse_error_event
from server.generation import Finish
from server.openai_schemas import OpenAIError, SamplingFields
from server.server_context import ServerContext
from server.service import GenerationStream
from server.sse import sse_event

logger = logging.getLogger("hagmoe.server")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIError, "description": why}
    for code, why in (
        (400, "Invalid request (the message names the field and the limit)"),
        (401, "Missing or wrong API key"),
        (404, "Unknown model"),
        (413, "Body too large"),
        (429, "Overloaded; see Retry-After"),
        (503, "Not ready or shutting down"),
        (504, "Deadline (timeout) expired"),
    )
}

STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The answer (JSON), or with `stream: true` server-sent events: "
        "`data: <chunk JSON>` lines, a failure as one OpenAIError event, then `data: [DONE]`.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def openai_finish(reason: Finish | None) -> str | None:
    """OpenAI's finish reason: length, or stop (end-of-sequence or a stop string)."""
    return None if reason is None else "length" if reason == "length" else "stop"


class OpenAIFrontend:
    """What both OpenAI routes share: the model check, usage, ids and prompt logprobs."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def _check_model(self, body: SamplingFields) -> None:
        if body.model is not None and body.model != self.ctx.info.model_id:
            raise ModelNotFound(
                f"the model `{body.model}` does not exist; this server serves "
                f"`{self.ctx.info.model_id}`",
                "model",
            )

    def _usage(self, prompt: int, completion: int, cached: int) -> dict[str, Any]:
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    def _usage_chunk(
        self, head: dict[str, Any], outs: list[RequestOutput], n: int
    ) -> dict[str, Any]:
        """The last streamed chunk when the client asked for usage: no choices, the counts of
        the finished outputs (n per prompt: its prompt counts once)."""
        leaders = outs[::n]
        usage = self._usage(
            sum(o.num_prompt_tokens for o in leaders),
            sum(o.num_output_tokens for o in outs),
            sum(o.num_cached_tokens for o in leaders),
        )
        return {**head, "choices": [], "usage": usage}

    def _head(self, kind: str, prefix: str) -> dict[str, Any]:
        rid = request_context.current().request_id
        return {
            "id": f"{prefix}-{rid}",
            "object": kind,
            "created": int(time.time()),
            "model": self.ctx.info.model_id,
        }

    def _with_prompt_logprobs(
        self, body: SamplingFields, result: dict[str, Any], found: list[TokenLogprob | None] | None
    ) -> dict[str, Any]:
        """vLLM's prompt_logprobs (per choice in completions, top-level in chat), when asked."""
        if body.prompt_logprobs is not None:
            view = self.ctx.view
            result["prompt_logprobs"] = view.vllm_prompt_logprobs(found, body.prompt_logprobs)
        return result


def close_all(streams: list[GenerationStream]) -> Callable[[], None]:
    """A streamed answer's on_close: every stream of it closed."""

    def close() -> None:
        for stream in streams:
            stream.close()

    return close


def include_usage(body: SamplingFields) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


async def openai_sse(
    chunks: AsyncIterator[dict[str, Any]], body: SamplingFields
) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield sse_event(chunk)
    except Exception as exc:
        if not isinstance(exc, ServiceError):
            logger.exception("stream failed", exc_info=exc)
            exc = InternalError(f"internal error: {type(exc).__name__}")
        request_context.set_outcome(exc.outcome)
        yield sse_error_event(exc, "openai")
    yield sse_event("[DONE]")
