"""The token-budget scheduler: running requests first, then waiting ones, chunked prefill, and
recompute preemption when blocks run out. Policy "fcfs": waiting in arrival order, the newest
running request preempted; "priority" (vLLM's): the lowest (priority, arrival) waiting request
first, the highest preempted."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from hagmoe.engine.kv_cache_manager import KVCacheManager
from hagmoe.engine.outputs import LayerDecision, RequestOutput
from hagmoe.engine.request import Request, RequestStatus, TokenLogprob
from hagmoe.engine.step import RunnerOutput, ScheduledRequest, SchedulerOutput


@dataclass(slots=True)
class SchedulerStats:
    num_preemptions: int = 0


class Scheduler:
    """Moves requests between `waiting` and `running`; the requests hold their own state."""

    def __init__(
        self,
        kv_cache: KVCacheManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        policy: str = "fcfs",
    ) -> None:
        self.kv_cache = kv_cache
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.policy = policy
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.stats = SchedulerStats()

    def add_request(self, request: Request) -> None:
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def finish_request(self, request_id: str, status: RequestStatus) -> Request | None:
        """End a request (abort, deadline, stop) and free its blocks; None if unknown."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.kv_cache.free(request)
        request.status = status
        request.finished_time = time.monotonic()
        return request

    @property
    def num_unfinished(self) -> int:
        return len(self.requests)

    def schedule(self) -> SchedulerOutput:
        """Pick this step's requests and token counts within the token budget."""
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        if self.policy == "priority":
            self.running.sort(key=_rank)  # the budget goes first, preemption last, by rank
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if not self._allocate_or_preempt(request, num_new, out):
                break
            out.scheduled.append(ScheduledRequest(request, num_new))
            budget -= num_new
            index += 1
        if not out.preempted:
            self._schedule_waiting(out, budget)
        return out

    def _allocate_or_preempt(self, request: Request, num_new: int, out: SchedulerOutput) -> bool:
        """Allocate slots for `request`, preempting the newest running requests as needed."""
        while self.kv_cache.allocate_slots(request, num_new) is None:
            victim = self.running.pop()
            self._preempt(victim)
            out.preempted.append(victim)
            if victim is request:
                return False
        return True

    def _next_waiting(self) -> Request | None:
        """The next waiting request by policy, passing over those waiting for a leader."""
        ready = (r for r in self.waiting if not r.waits_for_leader)
        if self.policy == "priority":
            return min(ready, key=_rank, default=None)
        return next(ready, None)

    def _preempt(self, request: Request) -> None:
        self.kv_cache.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.stats.num_preemptions += 1
        self.waiting.appendleft(request)

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self._next_waiting()
            if request is None:
                return
            blocks, num_hit = self.kv_cache.get_computed_blocks(request)
            num_new = min(request.num_tokens - num_hit, budget)
            if self.kv_cache.allocate_slots(request, num_new, blocks) is None:
                return
            self.waiting.remove(request)
            request.num_computed_tokens = num_hit
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_hit
                request.first_scheduled_time = time.monotonic()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            out.scheduled.append(ScheduledRequest(request, num_new))
            budget -= num_new

    def update_from_output(
        self, sched: SchedulerOutput, result: RunnerOutput
    ) -> list[RequestOutput]:
        """Advance computed tokens, append sampled tokens, check stops, finish requests.

        The one place that appends tokens; returns one output per request that sampled."""
        outputs = []
        now = time.monotonic()
        for s in sched.scheduled:
            request = s.request
            request.num_computed_tokens += s.num_new_tokens
            prompt_logprobs = result.prompt_logprobs.get(request.request_id)
            if prompt_logprobs is not None:
                request.add_prompt_logprobs(prompt_logprobs)
            token = result.sampled.get(request.request_id)
            if token is None:
                continue
            request.append_output_token(token)
            if request.first_token_time is None:
                request.first_token_time = now
            logprob = result.logprobs.get(request.request_id)
            if logprob is not None:
                request.logprobs.append(logprob)
            routing = result.routing.get(request.request_id)
            if routing is not None:
                request.routing.append(routing)
            outputs.append(self._advance(request, token, logprob, routing))
        return outputs

    def _advance(
        self,
        request: Request,
        token: int,
        logprob: TokenLogprob | None,
        routing: list[LayerDecision] | None,
    ) -> RequestOutput:
        text, stop_string = "", None
        if request.detokenizer is not None:
            update = request.detokenizer.append(token)
            text, stop_string = update.text, update.stop
        status, reason = request.stop_status(token, stop_string, self.max_model_len)
        if status is not None:
            self.finish_request(request.request_id, status)
            request.stop_reason = reason
            if stop_string is None and request.detokenizer is not None:
                text += request.detokenizer.flush()
        return RequestOutput.from_request(request, status, [token], text, logprob, routing)


def _rank(request: Request) -> tuple[int, float]:
    return request.priority, request.arrival_time
