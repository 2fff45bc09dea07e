"""OpenAI-compatible routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.openai_chat import ChatFrontend
from server.openai_completions import CompletionsFrontend
from server.openai_frontend import ERRORS, STREAM_DOC
from server.openai_schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelList,
)
from server.server_context import ServerContext


def openai_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["OpenAI"])
    completions_api, chat_api = CompletionsFrontend(ctx), ChatFrontend(ctx)

    @router.post(
        "/completions", response_model=CompletionResponse, responses={**ERRORS, **STREAM_DOC}
    )
    async def completions(body: CompletionRequest, request: Request) -> Response:
        """Complete a prompt; `stream: true` gives server-sent chunks ending `data: [DONE]`."""
        return await completions_api.completion(body, request)

    @router.post(
        "/chat/completions",
        response_model=ChatCompletionResponse,
        responses={**ERRORS, **STREAM_DOC},
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """Answer a conversation (rendered with the chat template)."""
        return await chat_api.chat(body, request)

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
