"""OpenAI-compatible routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from hagmoe.engine.outputs import RequestOutput
from hagmoe.engine.request import TokenLogprob
from server import request_context
from server.errors import (
    InternalError,
    InvalidInput,
    ModelNotFound,
    ServiceError,
    sse_error_event,
)
from server.generation import Finish, GeneratedToken, finish_of, tokens_of
from server.openai_schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelList,
    OpenAIError,
    SamplingFields,
)
from server.params import chat_sampling, completion_prompt, completion_sampling, echo_logprobs
from server.server_context import ServerContext
from server.service import GenerationCall, GenerationStream
from server.sse import EventStream, sse_event, until_disconnect
from server.token_view import routing_json

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

    def _usage_chunk(self, head: dict[str, Any], out: RequestOutput) -> dict[str, Any]:
        """The last streamed chunk when the client asked for usage: no choices, the counts."""
        usage = self._usage(out.num_prompt_tokens, out.num_output_tokens, out.num_cached_tokens)
        return {**head, "choices": [], "usage": usage}

    def _head(self, kind: str, prefix: str) -> dict[str, Any]:
        rid = request_context.current().request_id
        return {
            "id": f"{prefix}-{rid}",
            "object": kind,
            "created": int(time.time()),
            "model": self.ctx.info.model_id,
        }

    # ---- /v1/completions ----------------------------------------------------------------------
    async def completion_call(self, body: CompletionRequest) -> tuple[GenerationCall, str]:
        self._check_model(body)
        prompt = completion_prompt(body.prompt)
        ids = await self.ctx.encode_prompt(prompt, "prompt") if isinstance(prompt, str) else prompt
        text = prompt if isinstance(prompt, str) else self.ctx.decode(ids)
        params = completion_sampling(body, len(ids), self.ctx.limits, self.ctx.encode)
        rid = request_context.current().request_id
        return GenerationCall(ids, params, rid, body.timeout), text

    def completion_logprobs(self, tokens: list[GeneratedToken], offset: int) -> dict[str, Any]:
        view = self.ctx.view
        result: dict[str, Any] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        for t in tokens:
            result["tokens"].append(view.piece(t.id))
            result["token_logprobs"].append(t.logprob.logprob if t.logprob else None)
            top = t.logprob.top if t.logprob else {}
            result["top_logprobs"].append({view.piece(i): lp for i, lp in top.items()})
            result["text_offset"].append(offset)
            offset += len(t.text)
        return result

    def completion_choice(
        self,
        body: CompletionRequest,
        tokens: list[GeneratedToken],
        text: str,
        offset: int,
        echoed: list[GeneratedToken] | None = None,
    ) -> dict[str, Any]:
        """`echoed`: the prompt's tokens, whose logprobs lead (echo with logprobs)."""
        choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
        if body.logprobs is not None:
            choice["logprobs"] = self.completion_logprobs((echoed or []) + tokens, offset)
        if body.return_routing:
            choice["routing"] = [routing_json(t.routing or []) for t in tokens]
        return choice

    async def completion(self, body: CompletionRequest, request: Request) -> Response:
        call, prompt_text = await self.completion_call(body)
        if body.stream:
            stream = await until_disconnect(request, self.ctx.service.open(call))
            chunks = self._completion_chunks(body, call, prompt_text, stream)
            return EventStream(_sse(chunks, body), on_close=stream.close, headers={})
        done = await until_disconnect(request, self.ctx.service.complete(call))
        echo = prompt_text if body.echo else ""
        echoed = self._echoed(body, call, done.prompt_logprobs)
        offset = 0 if echoed else len(echo)
        choice = self.completion_choice(body, done.tokens, echo + done.text, offset, echoed)
        choice["finish_reason"] = openai_finish(done.finish)
        usage = self._usage(done.num_prompt_tokens, len(done.tokens), done.num_cached_tokens)
        head = self._head("text_completion", "cmpl")
        result = {**head, "choices": [choice], "usage": usage}
        return JSONResponse(self._with_prompt_logprobs(body, result, done.prompt_logprobs))

    def _echoed(
        self, body: CompletionRequest, call: GenerationCall, found: list[TokenLogprob | None] | None
    ) -> list[GeneratedToken]:
        if not echo_logprobs(body):
            return []
        return self.ctx.view.prompt_tokens(call.prompt_ids, found, body.logprobs or 0)

    def _with_prompt_logprobs(
        self, body: SamplingFields, result: dict[str, Any], found: list[TokenLogprob | None] | None
    ) -> dict[str, Any]:
        """vLLM's top-level prompt_logprobs, when the request asked for them."""
        if body.prompt_logprobs is not None:
            view = self.ctx.view
            result["prompt_logprobs"] = view.vllm_prompt_logprobs(found, body.prompt_logprobs)
        return result

    async def _completion_chunks(
        self,
        body: CompletionRequest,
        call: GenerationCall,
        prompt_text: str,
        stream: GenerationStream,
    ) -> AsyncIterator[dict[str, Any]]:
        """With echo, the first chunk is the prompt (and its logprobs, from the first output)."""
        head = self._head("text_completion", "cmpl")
        offset, echo = 0, body.echo
        async for out in stream:
            if echo:
                echoed = self._echoed(body, call, out.prompt_logprobs)
                choice = self.completion_choice(body, [], prompt_text, 0, echoed)
                yield {**head, "choices": [choice]}
                offset, echo = len(prompt_text), False
            tokens = tokens_of(out)
            choice = self.completion_choice(body, tokens, out.new_text, offset)
            offset += len(out.new_text)
            if out.finished:
                choice["finish_reason"] = openai_finish(finish_of(out)[0])
            yield {**head, "choices": [choice]}
            if out.finished and _include_usage(body):
                yield self._usage_chunk(head, out)

    # ---- /v1/chat/completions -----------------------------------------------------------------
    async def chat_call(self, body: ChatCompletionRequest) -> GenerationCall:
        self._check_model(body)
        messages = [_message_dict(m.role, m.content) for m in body.messages]
        prompt = self.ctx.chat.render(messages, body.add_generation_prompt)
        ids = await self.ctx.encode_prompt(prompt, "messages")
        params = chat_sampling(body, len(ids), self.ctx.limits, self.ctx.encode)
        return GenerationCall(ids, params, request_context.current().request_id, body.timeout)

    def _chat_logprobs(self, body: ChatCompletionRequest, tokens: list[GeneratedToken]) -> Any:
        if not body.logprobs:
            return None
        return {"content": [self.ctx.view.chat_logprob(t) for t in tokens if t.logprob]}

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        call = await self.chat_call(body)
        if body.stream:
            stream = await until_disconnect(request, self.ctx.service.open(call))
            chunks = self._chat_chunks(body, stream)
            return EventStream(_sse(chunks, body), on_close=stream.close, headers={})
        done = await until_disconnect(request, self.ctx.service.complete(call))
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": done.text},
            "logprobs": self._chat_logprobs(body, done.tokens),
            "finish_reason": openai_finish(done.finish),
        }
        if body.return_routing:
            choice["routing"] = [routing_json(t.routing or []) for t in done.tokens]
        usage = self._usage(done.num_prompt_tokens, len(done.tokens), done.num_cached_tokens)
        head = self._head("chat.completion", "chatcmpl")
        result = {**head, "choices": [choice], "usage": usage}
        return JSONResponse(self._with_prompt_logprobs(body, result, done.prompt_logprobs))

    async def _chat_chunks(
        self, body: ChatCompletionRequest, stream: GenerationStream
    ) -> AsyncIterator[dict[str, Any]]:
        head = self._head("chat.completion.chunk", "chatcmpl")
        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        yield {**head, "choices": [first]}
        async for out in stream:
            tokens = tokens_of(out)
            choice: dict[str, Any] = {
                "index": 0,
                "delta": {"content": out.new_text} if out.new_text else {},
                "logprobs": self._chat_logprobs(body, tokens),
                "finish_reason": None,
            }
            if body.return_routing:
                choice["routing"] = [routing_json(t.routing or []) for t in tokens]
            if out.finished:
                choice["finish_reason"] = openai_finish(finish_of(out)[0])
            yield {**head, "choices": [choice]}
            if out.finished and _include_usage(body):
                yield self._usage_chunk(head, out)


def _include_usage(body: SamplingFields) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


def _message_dict(role: str, content: Any) -> dict[str, Any]:
    if content is None or isinstance(content, str):
        return {"role": role, "content": content or ""}
    texts: list[str] = []
    for part in content:
        if part.type != "text":
            raise InvalidInput(
                f"messages: content parts of type {part.type!r} are not supported; send text",
                "messages",
            )
        texts.append(part.text or "")
    return {"role": role, "content": "".join(texts)}


async def _sse(chunks: AsyncIterator[dict[str, Any]], body: SamplingFields) -> AsyncIterator[bytes]:
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


def openai_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["OpenAI"])
    api = OpenAIFrontend(ctx)

    @router.post(
        "/completions", response_model=CompletionResponse, responses={**ERRORS, **STREAM_DOC}
    )
    async def completions(body: CompletionRequest, request: Request) -> Response:
        """Complete a prompt; `stream: true` gives server-sent chunks ending `data: [DONE]`."""
        return await api.completion(body, request)

    @router.post(
        "/chat/completions",
        response_model=ChatCompletionResponse,
        responses={**ERRORS, **STREAM_DOC},
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """Answer a conversation (rendered with the chat template)."""
        return await api.chat(body, request)

    @router.get("/models", response_model=ModelList, responses=ERRORS)
    async def models() -> dict[str, Any]:
        """The served model."""
        card = {
            "id": ctx.info.model_id,
            "object": "model",
            "created": ctx.created,
            "owned_by": "hagmoe",
            "max_model_len": ctx.info.max_model_len,
        }
        return {"object": "list", "data": [card]}

    return router
