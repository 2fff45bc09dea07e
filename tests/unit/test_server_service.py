"""The generation service over a fake engine: limits, admission, deadline, abort, metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hagmoe.engine.client import ModelInfo
from hagmoe.engine.errors import EngineDeadError, InvalidRequestError
from hagmoe.engine.outputs import RequestOutput
from hagmoe.engine.request import Request
from hagmoe.engine.sampling_params import SamplingParams
from server.admission import Admission
from server.errors import DeadlineExceeded, InvalidInput, Unavailable
from server.lifecycle import Lifecycle
from server.limits import Limits
from server.metrics import Metrics
from server.service import GenerationCall, GenerationService

INFO = ModelInfo(
    "m", "hagmoe", "attention", 320, 2, 4, 2, 3, 64, 16, 64, 100, "cpu", "float32", 8, 64
)


class FakeEngine:
    """Emits one token per `step` seconds; honours the deadline like AsyncEngine does."""

    tokenizer = None

    def __init__(self, step: float = 0.0, dead: bool = False) -> None:
        self.step = step
        self.dead = dead
        self.started = 0
        self.closed_early = 0

    @property
    def is_alive(self) -> bool:
        return not self.dead

    def model_info(self) -> ModelInfo:
        return INFO

    def make_requests(
        self,
        prompt: list[int],
        params: SamplingParams,
        n: int = 1,
        request_id: str | None = None,
        deadline: float | None = None,
        priority: int = 0,
    ) -> list[Request]:
        if self.dead:
            raise EngineDeadError("the engine is not running")
        params.validate(INFO.vocab_size)
        if not prompt:
            raise InvalidRequestError("prompt", "must hold at least one token")
        rid = request_id or "r"
        return [Request(f"{rid}-{i}", prompt, params, None, deadline=deadline) for i in range(n)]

    def abort(self, request_id: str) -> None:
        raise AssertionError("the service aborts by closing the iterator")

    async def generate(self, request: Request) -> AsyncIterator[RequestOutput]:
        params, deadline, request_id = request.sampling_params, request.deadline, request.request_id
        self.started += 1
        n, finished = request.num_prompt_tokens, False
        try:
            for i in range(params.max_new_tokens):
                await asyncio.sleep(self.step)
                if deadline is not None and time.monotonic() >= deadline:
                    finished = True
                    out = self._out(request_id, [], n, i, "abort")
                    out.stop_reason = "deadline"
                    yield out
                    return
                last = i == params.max_new_tokens - 1
                finished = last
                yield self._out(request_id, [65 + i], n, i + 1, "length" if last else None)
        finally:
            if not finished:
                self.closed_early += 1

    def _out(
        self, rid: Any, ids: list[int], n: int, done: int, reason: str | None
    ) -> RequestOutput:
        now = time.monotonic()
        return RequestOutput(
            rid, ids, "".join(map(chr, ids)), reason is not None, reason,
            num_prompt_tokens=n, num_output_tokens=done, arrival_time=now,
            first_scheduled_time=now, first_token_time=now,
        )  # fmt: skip


def service(engine: FakeEngine, max_concurrent: int = 2, max_queue: int = 2) -> GenerationService:
    admission, metrics = Admission(max_concurrent, max_queue), Metrics(INFO)
    metrics.watch_admission(admission)
    return GenerationService(
        engine,  # type: ignore[arg-type]
        Limits(max_input_tokens=16, max_total_tokens=32, max_body_bytes=1024),
        admission,
        metrics,
    )


def call(n_prompt: int = 3, max_new: int = 4, timeout: float | None = None) -> GenerationCall:
    return GenerationCall([1] * n_prompt, SamplingParams(max_new_tokens=max_new), "r", timeout)


def metric(svc: GenerationService, name: str) -> float | None:
    return svc.metrics.registry.get_sample_value(name)


def test_complete_collects_tokens_and_metrics() -> None:
    svc = service(FakeEngine())
    done = asyncio.run(svc.complete(call()))
    assert done.text == "ABCD" and [t.id for t in done.tokens] == [65, 66, 67, 68]
    assert done.finish == "length" and done.num_prompt_tokens == 3
    assert metric(svc, "hagmoe_generation_tokens_total") == 4
    assert metric(svc, "hagmoe_prompt_tokens_total") == 3
    assert metric(svc, "hagmoe_time_to_first_token_seconds_count") == 1
    assert metric(svc, "hagmoe_inter_token_latency_seconds_count") == 3
    assert metric(svc, "hagmoe_request_duration_seconds_count") == 1
    assert svc.admission.running == 0 and metric(svc, "hagmoe_server_requests_in_flight") == 0


def test_refusals_happen_before_the_engine() -> None:
    engine = FakeEngine()
    svc = service(engine)
    with pytest.raises(InvalidInput, match="20 tokens; max_input_tokens is 16"):
        asyncio.run(svc.complete(call(n_prompt=20)))
    with pytest.raises(InvalidInput, match="<= 32; given 3 input tokens and 40"):
        asyncio.run(svc.complete(call(max_new=40)))
    with pytest.raises(InvalidInput, match="prompt"):
        asyncio.run(svc.complete(call(n_prompt=0)))
    engine.dead = True
    with pytest.raises(Unavailable, match="not running"):
        asyncio.run(svc.complete(call()))
    assert engine.started == 0 and svc.admission.running == 0


def test_deadline_mid_generation_is_504_and_frees_the_slot() -> None:
    svc = service(FakeEngine(step=0.02))
    with pytest.raises(DeadlineExceeded, match="tokens generated"):
        asyncio.run(svc.complete(call(max_new=20, timeout=0.07)))
    assert svc.admission.running == 0 and metric(svc, "hagmoe_server_requests_in_flight") == 0


def test_leaving_a_stream_early_closes_the_engine_iterator() -> None:
    engine = FakeEngine()
    svc = service(engine)

    async def scenario() -> None:
        stream = await svc.open(call(max_new=10))
        async for out in stream:
            assert out.new_token_ids == [65]
            break
        stream.close()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert engine.closed_early == 1 and svc.admission.running == 0
    assert metric(svc, "hagmoe_server_requests_in_flight") == 0


def test_dead_engine_is_unavailable() -> None:
    svc = service(FakeEngine(dead=True))
    with pytest.raises(Unavailable, match="not running"):
        asyncio.run(svc.complete(call()))
    assert svc.admission.running == 0


def test_drain_waits_for_admitted_requests_up_to_the_timeout() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        svc = service(FakeEngine(), max_concurrent=1)
        lifecycle = Lifecycle(svc.admission)
        lifecycle.ready = True
        stream = await svc.open(call())
        queued = asyncio.ensure_future(svc.open(call()))
        await asyncio.sleep(0)
        assert metric(svc, "hagmoe_server_queue_requests") == 1
        timed_out = await lifecycle.drain(0.05)
        with pytest.raises(Unavailable, match="shutting down"):
            lifecycle.check_accepting()
        stream.close()
        second = await queued
        asyncio.get_running_loop().call_later(0.02, second.close)
        drained = await lifecycle.drain(5.0)
        return timed_out, drained, metric(svc, "hagmoe_server_requests_in_flight") == 0

    assert asyncio.run(scenario()) == (False, True, True)
