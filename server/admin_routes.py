"""Tokenizer, info, health, readiness and metrics routes."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

import hagmoe
from server.errors import InvalidInput, Unavailable, error_response
from server.server_context import ServerContext
from server.tgi_schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorBody,
    TokenizeRequest,
    TokenizeResponse,
)

UNAVAILABLE: dict[int | str, dict[str, Any]] = {503: {"model": ErrorBody}}


def info_dict(ctx: ServerContext) -> dict[str, Any]:
    """TGI's /info keys plus the model and engine description."""
    s, limits = ctx.settings, ctx.limits
    return {
        **asdict(ctx.info),
        "model_dtype": ctx.info.dtype,
        "model_device_type": ctx.info.device,
        "max_concurrent_requests": s.max_concurrent_requests,
        "max_queue": s.max_queue,
        "max_best_of": 1,
        "max_stop_sequences": 16,
        "max_input_tokens": limits.max_input_tokens,
        "max_total_tokens": limits.max_total_tokens,
        "max_body_bytes": limits.max_body_bytes,
        "chat_template": "fallback" if ctx.chat.is_fallback else "tokenizer",
        "version": hagmoe.__version__,
        "router_name": "hagmoe",
    }


def admin_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter(tags=["Service"])

    @router.post(
        "/tokenize", response_model=TokenizeResponse, responses={422: {"model": ErrorBody}}
    )
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        """Token ids and token strings of a text."""
        ids = await ctx.encode_prompt(body.inputs, "inputs", body.add_special_tokens, bounded=False)
        return {
            "token_ids": ids,
            "tokens": [ctx.view.piece(i) for i in ids],
            "count": len(ids),
            "max_input_tokens": ctx.limits.max_input_tokens,
        }

    @router.post(
        "/detokenize", response_model=DetokenizeResponse, responses={422: {"model": ErrorBody}}
    )
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        """Text of token ids."""
        tokenizer = ctx.engine.tokenizer
        if tokenizer is None:
            raise InvalidInput("the model has no tokenizer", "token_ids")
        return {"text": tokenizer.decode(body.token_ids, body.skip_special_tokens)}

    @router.get("/info")
    async def info() -> dict[str, Any]:
        """The model, the engine and the server's limits."""
        return info_dict(ctx)

    @router.get("/health", responses=UNAVAILABLE)
    async def health() -> Response:
        """Liveness: the process answers and the engine loop runs."""
        if not ctx.engine.is_alive:
            return error_response(Unavailable("the engine loop is not running"), "tgi")
        return JSONResponse({"status": "ok"})

    @router.head("/health", responses=UNAVAILABLE)
    async def health_head() -> Response:
        """Liveness as GET /health, headers only (200 or 503)."""
        return await health()

    @router.get("/ready", responses=UNAVAILABLE)
    async def ready() -> Response:
        """Readiness: the model is loaded, the engine runs and the server is not draining."""
        try:
            ctx.lifecycle.check_accepting()
            if not ctx.engine.is_alive:
                raise Unavailable("the engine loop is not running")
        except Unavailable as err:
            return error_response(err, "tgi")
        return JSONResponse({"status": "ready"})

    @router.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus text exposition."""
        return Response(ctx.metrics.render(), media_type=ctx.metrics.content_type)

    return router
