"""The generation service both frontends share: checks, admission, deadline, metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import cast

from hagmoe.engine.client import EngineClient
from hagmoe.engine.outputs import RequestOutput
from hagmoe.engine.request import Request
from hagmoe.engine.sampling_params import SamplingParams
from server.admission import Admission
from server.errors import DeadlineExceeded, Unavailable, to_service_error
from server.generation import Generation
from server.limits import Limits
from server.metrics import Metrics

logger = logging.getLogger("hagmoe.server")


@dataclass(slots=True)
class GenerationCall:
    """One generation request, whatever protocol brought it."""

    prompt_ids: list[int]
    params: SamplingParams
    request_id: str
    timeout: float | None = None
    n: int = 1  # sibling sequences of the prompt (OpenAI's n / best_of, TGI's best_of)
    priority: int = 0  # scheduling_policy "priority": lower runs first


@dataclass(slots=True)
class _Slot:
    """One admission slot, shared by a call's sibling streams: freed when the last closes."""

    holders: int
    start: float


class GenerationStream:
    """An admitted request: iterate it once for its outputs; close() frees its slot."""

    def __init__(self, service: GenerationService, request: Request, slot: _Slot) -> None:
        self.service = service
        self.request = request
        self.slot = slot
        self.start = slot.start
        self._closed = False
        service.streams.add(self)

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        svc = self.service
        last: float | None = None
        try:
            outputs = cast(AsyncGenerator[RequestOutput, None], svc.engine.generate(self.request))
            async with aclosing(outputs):
                async for out in outputs:
                    now = time.monotonic()
                    self._check_abort(out)
                    self._observe(out, now, last)
                    if out.new_token_ids:
                        last = now
                    yield out
        except Exception as exc:
            raise to_service_error(exc) from exc
        finally:
            self.close()

    def _check_abort(self, out: RequestOutput) -> None:
        if out.finish_reason != "abort":
            return
        if out.stop_reason == "deadline":
            waited = time.monotonic() - self.start
            raise DeadlineExceeded(
                f"deadline expired after {waited:.2f}s with {out.num_output_tokens} tokens generated"
            )
        if self.service.cutting:
            raise Unavailable(
                "the server is shutting down and its drain timeout expired: "
                f"stopped after {out.num_output_tokens} tokens"
            )
        raise Unavailable("the engine aborted the request (shutting down)")

    def _observe(self, out: RequestOutput, now: float, last: float | None) -> None:
        m = self.service.metrics
        n = len(out.new_token_ids)
        if n:
            m.generation_tokens.inc(n)
            if last is None:
                m.ttft.observe(now - self.start)
                m.prompt_tokens.inc(out.num_prompt_tokens)
                if out.first_scheduled_time is not None:
                    m.queue_time.observe(max(0.0, out.first_scheduled_time - self.start))
            else:
                m.itl.observe((now - last) / n)
        if out.finished:
            m.request_duration.observe(now - self.start)

    def close(self) -> None:
        """Free the slot (idempotent); the engine request ends when its iterator closes."""
        if self._closed:
            return
        self._closed = True
        self.service.streams.discard(self)
        self.slot.holders -= 1
        if self.slot.holders == 0:
            self.service.admission.release(time.monotonic() - self.start)


class GenerationService:
    def __init__(
        self,
        engine: EngineClient,
        limits: Limits,
        admission: Admission,
        metrics: Metrics,
    ) -> None:
        self.engine = engine
        self.limits = limits
        self.admission = admission
        self.metrics = metrics
        self.streams: set[GenerationStream] = set()  # admitted and not yet closed
        self.cutting = False

    def cut(self) -> int:
        """The drain deadline has passed: abort every admitted request (each ends with
        Unavailable, which its frontend reports) and refuse the queued ones; how many ran."""
        self.cutting = True
        self.admission.fail_waiting(
            Unavailable("the server is shutting down and its drain timeout expired")
        )
        for stream in list(self.streams):
            self.engine.abort(stream.request.request_id)
        return len(self.streams)

    def make_requests(self, call: GenerationCall, deadline: float | None) -> list[Request]:
        """The request's error now, before it queues: server limits, then the engine's one
        validation. Draining is refused by each frontend's gate, before the body is read."""
        self.limits.check(len(call.prompt_ids), call.params.max_new_tokens)
        try:
            return self.engine.make_requests(
                call.prompt_ids, call.params, call.n, call.request_id, deadline, call.priority
            )
        except Exception as exc:
            raise to_service_error(exc) from exc

    async def open(self, call: GenerationCall) -> GenerationStream:
        """Validate, then wait for a slot (until the deadline); the caller must close() the
        stream. For a call of n = 1."""
        (stream,) = await self.open_all([call])
        return stream

    async def open_all(self, calls: Sequence[GenerationCall]) -> list[GenerationStream]:
        """open for every call's n sequences (call by call, sibling by sibling), which share
        one slot and the first call's timeout; iterate them together (interleave): siblings
        wait for their first one's prefill."""
        start = time.monotonic()
        deadline = self.limits.deadline(calls[0].timeout)
        requests = [r for call in calls for r in self.make_requests(call, deadline)]
        await self.admission.acquire(deadline)
        slot = _Slot(len(requests), start)
        return [GenerationStream(self, request, slot) for request in requests]

    async def complete(self, call: GenerationCall) -> Generation:
        """Run a request of n = 1 to the end and return everything it generated."""
        (done,) = await self.complete_all([call])
        return done

    async def complete_all(self, calls: Sequence[GenerationCall]) -> list[Generation]:
        """Run every call's n sequences to the end, together; one Generation each, in
        open_all's order."""
        streams = await self.open_all(calls)
        done = [Generation(calls[0].request_id) for _ in streams]
        async for i, out in interleave(streams):
            done[i].add(out)
        return done


async def interleave(
    streams: list[GenerationStream],
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """The outputs of several streams as they come, with each one's index; closes them all."""
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: GenerationStream) -> None:
        try:
            async for out in stream:
                await queue.put((i, out))
            await queue.put((i, None))
        except BaseException as exc:  # CancelledError included: the consumer left
            await queue.put((i, exc))
            raise

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            i, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            stream.close()
