"""The FastAPI application: routes, the HTTP guard middleware and the error handlers."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

import hagmoe
from hagmoe.errors import HagMoEError
from server import request_context
from server.admin_routes import admin_router
from server.errors import ServiceError, api_of_path, error_response, to_service_error
from server.http_guard import HttpGuard
from server.openai_routes import openai_router
from server.openapi_docs import install_docs
from server.server_context import ServerContext
from server.tgi_routes import tgi_router

logger = logging.getLogger("hagmoe.server")

DESCRIPTION = (
    "REST API of the hagmoe inference server: TGI-compatible generation, OpenAI-compatible "
    "completions and chat, tokenizer, info, health and Prometheus metrics. Send "
    "`Authorization: Bearer <key>` when the server has API keys. Errors come in the route "
    "family's shape: `{error, error_type}` on TGI and tokenizer routes, OpenAI's "
    "`{error: {message, type, param, code}}` on /v1. See docs/api.md."
)


def build_app(ctx: ServerContext) -> FastAPI:
    app = FastAPI(
        title="hagmoe",
        version=hagmoe.__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app, ctx.keys.enabled)
    app.include_router(tgi_router(ctx))
    app.include_router(openai_router(ctx))
    app.include_router(admin_router(ctx))
    for kind in (ServiceError, HagMoEError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(kind, _on_error)
    app.add_middleware(
        HttpGuard,
        keys=ctx.keys,
        lifecycle=ctx.lifecycle,
        metrics=ctx.metrics,
        max_body=ctx.limits.max_body_bytes,
        body_timeout=ctx.limits.body_timeout,
    )
    return app


async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    """Every failure of a handler, mapped once (server/errors.py) to the route's shape."""
    err = to_service_error(exc)
    if err.http_status >= 500 and err.kind == "generation":
        logger.error("request failed", exc_info=exc)
    ctx = request_context.current()
    ctx.outcome = err.outcome
    return error_response(err, api_of_path(request.url.path), ctx.request_id)
