"""POST /v1/completions: prompts (a batch), n / best_of, echo and prompt logprobs."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from hagmoe.engine.outputs import RequestOutput
from hagmoe.engine.request import TokenLogprob
from server import request_context
from server.generation import GeneratedToken, Generation, finish_of, tokens_of
from server.openai_frontend import (
    OpenAIFrontend,
    close_all,
    include_usage,
    openai_finish,
    openai_sse,
)
from server.openai_schemas import CompletionRequest
from server.params import (
    completion_prompts,
    completion_sampling,
    echo_logprobs,
    num_sequences,
    truncate_prompt,
)
from server.service import GenerationCall, GenerationStream, interleave
from server.sse import EventStream, until_disconnect
from server.token_view import routing_json


class CompletionsFrontend(OpenAIFrontend):
    """POST /v1/completions: one call per prompt, n choices each (best_of kept by score)."""

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
            return EventStream(openai_sse(chunks, body), on_close=close_all(streams), headers={})
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
        if include_usage(body):
            yield self._usage_chunk(head, [last[i] for i in sorted(last)], body.n)


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
