"""TGI-compatible routes: POST /generate, POST /generate_stream and POST / (TGI's compat route)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server import request_context
from server.errors import InternalError, ServiceError, sse_error_event
from server.generation import GeneratedToken, Generation, finish_of, tokens_of
from server.params import tgi_sampling, truncate_prompt
from server.server_context import ServerContext
from server.service import GenerationCall, GenerationStream
from server.sse import EventStream, sse_event, until_disconnect
from server.tgi_schemas import ErrorBody, TgiRequest, TgiResponse, TgiStreamEvent

logger = logging.getLogger("hagmoe.server")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": why}
    for code, why in (
        (401, "Missing or wrong API key"),
        (413, "Body too large"),
        (422, "Invalid input (the message names the field and the limit)"),
        (429, "Overloaded; see Retry-After"),
        (503, "Not ready or shutting down"),
        (504, "Deadline (timeout) expired"),
    )
}
STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-sent events, one TgiStreamEvent per token; the last carries "
        "generated_text and details; a failure ends the stream with an ErrorBody event.",
        "content": {"text/event-stream": {"schema": TgiStreamEvent.model_json_schema()}},
    }
}


class TgiFrontend:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def _call(self, body: TgiRequest, stream: bool = False) -> GenerationCall:
        p = body.parameters
        prompt = await self.ctx.encode_prompt(body.inputs, "inputs", bounded=p.truncate is None)
        ids = truncate_prompt(prompt, p.truncate)
        params = tgi_sampling(p, len(ids), self.ctx.limits, stream)
        rid = request_context.current().request_id
        return GenerationCall(ids, params, rid, p.timeout, n=p.best_of or 1)

    async def unary(self, body: TgiRequest, request: Request) -> dict[str, Any]:
        call = await self._call(body)
        done = await until_disconnect(request, self.ctx.service.complete_all([call]))
        best, *others = sorted(done, key=lambda g: g.cumulative_logprob, reverse=True)
        result = self._result(body, best, call)
        if others and "details" in result:
            result["details"]["best_of_sequences"] = [
                {"generated_text": _text(body, g), **self._details(body, g, call)} for g in others
            ]
        return result

    def _result(self, body: TgiRequest, done: Generation, call: GenerationCall) -> dict[str, Any]:
        p = body.parameters
        result: dict[str, Any] = {"generated_text": _text(body, done)}
        if p.details or p.return_routing:
            result["details"] = self._details(body, done, call)
        return result

    def _details(self, body: TgiRequest, done: Generation, call: GenerationCall) -> dict[str, Any]:
        p, view = body.parameters, self.ctx.view
        return {
            "finish_reason": done.finish,
            "generated_tokens": len(done.tokens),
            "seed": call.params.seed,
            "prefill": view.tgi_prefill(call.prompt_ids, done.prompt_logprobs)
            if p.decoder_input_details
            else [],
            "tokens": [view.tgi_token(t) for t in done.tokens],
            "top_tokens": [view.tgi_top_tokens(t) for t in done.tokens] if p.top_n_tokens else None,
            "input_length": done.num_prompt_tokens,
            "cached_tokens": done.num_cached_tokens,
        }

    async def stream(self, body: TgiRequest, request: Request) -> EventStream:
        call = await self._call(body, stream=True)
        stream = await until_disconnect(request, self.ctx.service.open(call))
        events = self._events(body, stream)
        return EventStream(events, on_close=stream.close, headers={})

    async def _events(self, body: TgiRequest, stream: GenerationStream) -> AsyncIterator[bytes]:
        text, index = "", 0
        try:
            async for out in stream:
                text += out.new_text
                tokens = tokens_of(out)
                for i, token in enumerate(tokens):
                    index += 1
                    event = self._event(body, token, index)
                    if out.finished and i == len(tokens) - 1:
                        reason, _ = finish_of(out)
                        full = body.inputs + text if body.parameters.return_full_text else text
                        event["generated_text"] = full
                        event["details"] = {
                            "finish_reason": reason,
                            "generated_tokens": out.num_output_tokens,
                            "input_length": out.num_prompt_tokens,
                            "seed": stream.request.sampling_params.seed,
                        }
                    yield sse_event(event)
        except Exception as exc:
            yield _stream_failure(exc)

    def _event(self, body: TgiRequest, token: GeneratedToken, index: int) -> dict[str, Any]:
        top = self.ctx.view.tgi_top_tokens(token) if body.parameters.top_n_tokens else None
        return {
            "index": index,
            "token": self.ctx.view.tgi_token(token),
            "top_tokens": top,
            "generated_text": None,
            "details": None,
        }


def _stream_failure(exc: Exception) -> bytes:
    if not isinstance(exc, ServiceError):
        logger.exception("stream failed", exc_info=exc)
        exc = InternalError(f"internal error: {type(exc).__name__}")
    request_context.set_outcome(exc.outcome)
    return sse_error_event(exc, "tgi")


def tgi_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter(tags=["TGI"])
    tgi = TgiFrontend(ctx)

    @router.post("/generate", response_model=TgiResponse, responses=ERRORS)
    async def generate(body: TgiRequest, request: Request) -> JSONResponse:
        """Generate a completion (TGI)."""
        return JSONResponse(await tgi.unary(body, request))

    @router.post("/generate_stream", responses={**STREAM_DOC, **ERRORS})
    async def generate_stream(body: TgiRequest, request: Request) -> Response:
        """Stream a completion as server-sent events (TGI)."""
        return await tgi.stream(body, request)

    @router.post(
        "/",
        response_model=list[TgiResponse],
        responses={
            **ERRORS,
            200: {
                "description": "A list of one TgiResponse, or SSE (as /generate_stream) with stream",
                "content": STREAM_DOC[200]["content"],
            },
        },
    )
    async def compat(body: TgiRequest, request: Request) -> Response:
        """TGI's compatibility route: a list of one result, or events when `stream` is true."""
        if body.stream:
            return await tgi.stream(body, request)
        return JSONResponse([await tgi.unary(body, request)])

    return router


def _text(body: TgiRequest, done: Generation) -> str:
    return body.inputs + done.text if body.parameters.return_full_text else done.text
