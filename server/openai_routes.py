"""OpenAI-compatible routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
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
from server.generation import Finish, GeneratedToken, Generation, finish_of, tokens_of
from server.openai_schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelList,
    OpenAIError,
    SamplingFields,
)
from server.params import (
    chat_sampling,
    completion_prompts,
    completion_sampling,
    echo_logprobs,
    num_sequences,
    truncate_prompt,
)
from server.server_context import ServerContext
from server.service import GenerationCall, GenerationStream, interleave
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

    # ---- /v1/completions ----------------------------------------------------------------------
    async def completion_calls(self, body: CompletionRequest) -> list[tuple[GenerationCall, str]]:
        """One call per prompt of the batch, with the prompt's text (for echo)."""
        self._check_model(body)
        rid = request_context.current().request_id
        n = num_sequences(body, body.best_of)
        calls: list[tuple[GenerationCall, str]] = []
        for prompt in completion_prompts(body.prompt):
            ids = (
                await self.ctx.encode_prompt(prompt, "prompt")
                if isinstance(prompt, str)
                else prompt
            )
            kept = truncate_prompt(ids, body.truncate_prompt_tokens, "truncate_prompt_tokens")
            text = prompt if isinstance(prompt, str) and kept is ids else self.ctx.decode(kept)
            params = completion_sampling(body, len(kept), self.ctx.limits, self.ctx.encode)
            call = GenerationCall(kept, params, rid, body.timeout, n, body.priority)
            calls.append((call, text))
        return calls

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
        index: int,
        tokens: list[GeneratedToken],
        text: str,
        offset: int,
        echoed: list[GeneratedToken] | None = None,
    ) -> dict[str, Any]:
        """`echoed`: the prompt's tokens, whose logprobs lead (echo with logprobs)."""
        choice: dict[str, Any] = {
            "index": index,
            "text": text,
            "logprobs": None,
            "finish_reason": None,
        }
        if body.logprobs is not None:
            choice["logprobs"] = self.completion_logprobs((echoed or []) + tokens, offset)
        if body.return_routing:
            choice["routing"] = [routing_json(t.routing or []) for t in tokens]
        return choice

    async def completion(self, body: CompletionRequest, request: Request) -> Response:
        calls = await self.completion_calls(body)
        generation_calls = [call for call, _ in calls]
        if body.stream:
            streams = await until_disconnect(request, self.ctx.service.open_all(generation_calls))
            chunks = self._completion_chunks(body, calls, streams)
            return EventStream(_sse(chunks, body), on_close=_closer(streams), headers={})
        done = await until_disconnect(request, self.ctx.service.complete_all(generation_calls))
        if body.max_tokens == 0:
            done = [_scored_only(g) for g in done]
        k, choices = len(done) // len(calls), []
        for p, (call, text) in enumerate(calls):
            group = done[p * k : (p + 1) * k]
            for j, g in enumerate(_best(group, body.n)):
                choices.append(self._completion_result(body, p * body.n + j, call, text, g))
        usage = self._usage(
            sum(len(call.prompt_ids) for call in generation_calls),
            sum(len(g.tokens) for g in done),
            sum(g.num_cached_tokens for g in done[::k]),
        )
        head = self._head("text_completion", "cmpl")
        return JSONResponse({**head, "choices": choices, "usage": usage})

    def _completion_result(
        self, body: CompletionRequest, index: int, call: GenerationCall, text: str, g: Generation
    ) -> dict[str, Any]:
        echo = text if body.echo else ""
        echoed = self._echoed(body, call, g.prompt_logprobs)
        offset = 0 if echoed else len(echo)
        choice = self.completion_choice(body, index, g.tokens, echo + g.text, offset, echoed)
        choice["finish_reason"] = openai_finish(g.finish)
        return self._with_prompt_logprobs(body, choice, g.prompt_logprobs)

    def _echoed(
        self, body: CompletionRequest, call: GenerationCall, found: list[TokenLogprob | None] | None
    ) -> list[GeneratedToken]:
        if not echo_logprobs(body):
            return []
        return self.ctx.view.prompt_tokens(call.prompt_ids, found, body.logprobs or 0)

    def _with_prompt_logprobs(
        self, body: SamplingFields, result: dict[str, Any], found: list[TokenLogprob | None] | None
    ) -> dict[str, Any]:
        """vLLM's prompt_logprobs (per choice in completions, top-level in chat), when asked."""
        if body.prompt_logprobs is not None:
            view = self.ctx.view
            result["prompt_logprobs"] = view.vllm_prompt_logprobs(found, body.prompt_logprobs)
        return result

    async def _completion_chunks(
        self,
        body: CompletionRequest,
        calls: list[tuple[GenerationCall, str]],
        streams: list[GenerationStream],
    ) -> AsyncIterator[dict[str, Any]]:
        """Chunks of every choice as they come; with echo, a choice's first chunk is its prompt
        (and its logprobs, from the first output)."""
        head = self._head("text_completion", "cmpl")
        offsets, echo = [0] * len(streams), [body.echo] * len(streams)
        last: dict[int, RequestOutput] = {}
        async for i, out in interleave(streams):
            call, text = calls[i // body.n]
            if echo[i]:
                echoed = self._echoed(body, call, out.prompt_logprobs)
                yield {**head, "choices": [self.completion_choice(body, i, [], text, 0, echoed)]}
                offsets[i], echo[i] = len(text), False
            if body.max_tokens == 0:
                out = _without_tokens(out)
            choice = self.completion_choice(body, i, tokens_of(out), out.new_text, offsets[i])
            offsets[i] += len(out.new_text)
            if out.finished:
                choice["finish_reason"] = openai_finish(finish_of(out)[0])
                last[i] = out
            yield {**head, "choices": [choice]}
        if _include_usage(body):
            yield self._usage_chunk(head, [last[i] for i in sorted(last)], body.n)

    # ---- /v1/chat/completions -----------------------------------------------------------------
    async def chat_call(self, body: ChatCompletionRequest) -> GenerationCall:
        self._check_model(body)
        messages = [_message_dict(m.role, m.content) for m in body.messages]
        prompt = self.ctx.chat.render(
            messages, body.add_generation_prompt, body.continue_final_message,
            body.chat_template_kwargs,
        )  # fmt: skip
        ids = await self.ctx.encode_prompt(prompt, "messages")
        ids = truncate_prompt(ids, body.truncate_prompt_tokens, "truncate_prompt_tokens")
        params = chat_sampling(body, len(ids), self.ctx.limits, self.ctx.encode)
        rid = request_context.current().request_id
        return GenerationCall(ids, params, rid, body.timeout, body.n, body.priority)

    def _chat_logprobs(self, body: ChatCompletionRequest, tokens: list[GeneratedToken]) -> Any:
        if not body.logprobs:
            return None
        return {"content": [self.ctx.view.chat_logprob(t) for t in tokens if t.logprob]}

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        call = await self.chat_call(body)
        if body.stream:
            streams = await until_disconnect(request, self.ctx.service.open_all([call]))
            chunks = self._chat_chunks(body, streams)
            return EventStream(_sse(chunks, body), on_close=_closer(streams), headers={})
        done = await until_disconnect(request, self.ctx.service.complete_all([call]))
        choices = [self._chat_choice(body, j, g) for j, g in enumerate(done)]
        usage = self._usage(
            len(call.prompt_ids), sum(len(g.tokens) for g in done), done[0].num_cached_tokens
        )
        head = self._head("chat.completion", "chatcmpl")
        result = {**head, "choices": choices, "usage": usage}
        return JSONResponse(self._with_prompt_logprobs(body, result, done[0].prompt_logprobs))

    def _chat_choice(
        self, body: ChatCompletionRequest, index: int, g: Generation
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": index,
            "message": {"role": "assistant", "content": g.text},
            "logprobs": self._chat_logprobs(body, g.tokens),
            "finish_reason": openai_finish(g.finish),
        }
        if body.return_routing:
            choice["routing"] = [routing_json(t.routing or []) for t in g.tokens]
        return choice

    async def _chat_chunks(
        self, body: ChatCompletionRequest, streams: list[GenerationStream]
    ) -> AsyncIterator[dict[str, Any]]:
        head = self._head("chat.completion.chunk", "chatcmpl")
        for j in range(len(streams)):
            first = {
                "index": j,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": None,
            }
            yield {**head, "choices": [first]}
        last: dict[int, RequestOutput] = {}
        async for j, out in interleave(streams):
            tokens = tokens_of(out)
            choice: dict[str, Any] = {
                "index": j,
                "delta": {"content": out.new_text} if out.new_text else {},
                "logprobs": self._chat_logprobs(body, tokens),
                "finish_reason": None,
            }
            if body.return_routing:
                choice["routing"] = [routing_json(t.routing or []) for t in tokens]
            if out.finished:
                choice["finish_reason"] = openai_finish(finish_of(out)[0])
                last[j] = out
            yield {**head, "choices": [choice]}
        if _include_usage(body):
            yield self._usage_chunk(head, [last[j] for j in sorted(last)], len(streams))


def _closer(streams: list[GenerationStream]) -> Callable[[], None]:
    def close() -> None:
        for stream in streams:
            stream.close()

    return close


def _best(group: list[Generation], n: int) -> list[Generation]:
    """best_of: the n sequences with the highest cumulative logprob (all when as many)."""
    if len(group) == n:
        return group
    return sorted(group, key=lambda g: g.cumulative_logprob, reverse=True)[:n]


def _scored_only(g: Generation) -> Generation:
    """max_tokens 0: the one token generated to score the prompt is dropped."""
    g.tokens, g.text, g.finish = [], "", "length"
    return g


def _without_tokens(out: RequestOutput) -> RequestOutput:
    """max_tokens 0, streaming: an output with its generated token dropped."""
    return dataclasses.replace(
        out, new_token_ids=[], new_text="", logprobs=[], routing=[], num_output_tokens=0
    )


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
