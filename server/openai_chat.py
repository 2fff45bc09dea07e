"""POST /v1/chat/completions: the chat template, tool calls, n choices."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from hagmoe.engine.outputs import RequestOutput
from server import request_context
from server.generation import GeneratedToken, Generation, finish_of, tokens_of
from server.openai_frontend import (
    OpenAIFrontend,
    close_all,
    include_usage,
    openai_finish,
    openai_sse,
)
from server.openai_schemas import ChatCompletionRequest
from server.params import chat_sampling, truncate_prompt
from server.service import GenerationCall, GenerationStream, interleave
from server.sse import EventStream, until_disconnect
from server.token_view import routing_json
from server.tool_choice import ToolPlan, tool_plan
from server.tool_prompt import message_dicts, template_inputs, tool_dicts


class ChatFrontend(OpenAIFrontend):
    """POST /v1/chat/completions: one call, its n choices read for tool calls by the plan."""

    async def chat_call(self, body: ChatCompletionRequest) -> tuple[GenerationCall, ToolPlan]:
        """The generation of a chat request, and how its output is read for tool calls."""
        self._check_model(body)
        parser = self.ctx.settings.tool_call_parser
        plan = tool_plan(body.tools, body.tool_choice, body.parallel_tool_calls, parser)
        messages, tools = template_inputs(
            message_dicts(body.messages), tool_dicts(body.tools), self.ctx.chat.has_tools
        )
        prompt = self.ctx.chat.render(
            messages, body.add_generation_prompt, body.continue_final_message,
            body.chat_template_kwargs, tools,
        )  # fmt: skip
        ids = await self.ctx.encode_prompt(prompt, "messages")
        ids = truncate_prompt(ids, body.truncate_prompt_tokens, "truncate_prompt_tokens")
        limits, encode = self.ctx.limits, self.ctx.encode
        params = chat_sampling(body, len(ids), limits, encode, plan.constraint)
        rid = request_context.current().request_id
        return GenerationCall(ids, params, rid, body.timeout, body.n, body.priority), plan

    def _chat_logprobs(self, body: ChatCompletionRequest, tokens: list[GeneratedToken]) -> Any:
        if not body.logprobs:
            return None
        return {"content": [self.ctx.view.chat_logprob(t) for t in tokens if t.logprob]}

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        call, plan = await self.chat_call(body)
        if body.stream:
            streams = await until_disconnect(request, self.ctx.service.open_all([call]))
            chunks = self._chat_chunks(body, plan, streams)
            return EventStream(openai_sse(chunks, body), on_close=close_all(streams), headers={})
        done = await until_disconnect(request, self.ctx.service.complete_all([call]))
        choices = [self._chat_choice(body, plan, j, g) for j, g in enumerate(done)]
        usage = self._usage(
            len(call.prompt_ids), sum(len(g.tokens) for g in done), done[0].num_cached_tokens
        )
        head = self._head("chat.completion", "chatcmpl")
        result = {**head, "choices": choices, "usage": usage}
        return JSONResponse(self._with_prompt_logprobs(body, result, done[0].prompt_logprobs))

    def _chat_choice(
        self, body: ChatCompletionRequest, plan: ToolPlan, index: int, g: Generation
    ) -> dict[str, Any]:
        parsed = plan.parse(g.text)
        message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
        if parsed.calls:
            message["tool_calls"] = [c.to_json() for c in parsed.calls]
        choice: dict[str, Any] = {
            "index": index,
            "message": message,
            "logprobs": self._chat_logprobs(body, g.tokens),
            "finish_reason": plan.finish_reason(openai_finish(g.finish), bool(parsed.calls)),
        }
        if body.return_routing:
            choice["routing"] = [routing_json(t.routing or []) for t in g.tokens]
        return choice

    async def _chat_chunks(
        self, body: ChatCompletionRequest, plan: ToolPlan, streams: list[GenerationStream]
    ) -> AsyncIterator[dict[str, Any]]:
        """Chunks of every choice as they come; text that may be a tool call is held until
        it is known, a call comes whole in one `delta.tool_calls` entry."""
        head = self._head("chat.completion.chunk", "chatcmpl")
        for j in range(len(streams)):
            first = {
                "index": j,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": None,
            }
            yield {**head, "choices": [first]}
        last: dict[int, RequestOutput] = {}
        readers = [plan.stream() for _ in streams]
        async for j, out in interleave(streams):
            tokens = tokens_of(out)
            text, calls = readers[j].feed(out.new_text)
            if out.finished:
                rest, more = readers[j].finish()
                text, calls = text + rest, calls + more
            delta: dict[str, Any] = {"content": text} if text else {}
            if calls:
                delta["tool_calls"] = [call.delta(k) for k, call in calls]
            choice: dict[str, Any] = {
                "index": j,
                "delta": delta,
                "logprobs": self._chat_logprobs(body, tokens),
                "finish_reason": None,
            }
            if body.return_routing:
                choice["routing"] = [routing_json(t.routing or []) for t in tokens]
            if out.finished:
                reason = openai_finish(finish_of(out)[0])
                choice["finish_reason"] = plan.finish_reason(reason, readers[j].called > 0)
                last[j] = out
            yield {**head, "choices": [choice]}
        if include_usage(body):
            yield self._usage_chunk(head, [last[j] for j in sorted(last)], len(streams))
