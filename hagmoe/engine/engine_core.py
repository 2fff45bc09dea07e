"""The synchronous engine: add requests, step, read outputs. AsyncEngine and LLM wrap it."""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass

from torch import Tensor

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.detokenizer import IncrementalDetokenizer
from hagmoe.engine.errors import InvalidRequestError
from hagmoe.engine.kv_cache_manager import KVCacheManager
from hagmoe.engine.model_runner import ModelRunner, prepare_weights
from hagmoe.engine.outputs import RequestOutput
from hagmoe.engine.request import Request, RequestStatus
from hagmoe.engine.sampling_params import SamplingParams, validate_prompt
from hagmoe.engine.scheduler import Scheduler
from hagmoe.engine.step import RoutingStats
from hagmoe.engine.structured_output import GrammarCompiler
from hagmoe.model.model import HagMoEModel
from hagmoe.model.tokenizer import Tokenizer


@dataclass(slots=True)
class StepStats:
    """What one step did, for metrics."""

    num_batched_tokens: int = 0
    num_running: int = 0
    num_waiting: int = 0
    num_preempted: int = 0
    prefix_cache_queries: int = 0  # tokens looked up in the prefix cache this step
    prefix_cache_hits: int = 0  # of which found
    kv_cache_usage: float = 0.0
    duration: float = 0.0
    routing: RoutingStats | None = None


class EngineCore:
    """One model, one cache, one scheduler; not thread-safe (AsyncEngine owns it from one thread)."""

    def __init__(
        self, model: HagMoEModel, tokenizer: Tokenizer | None, config: EngineConfig | None = None
    ) -> None:
        prepare_weights(model)  # before resolve(): the cache is sized from what is left
        self.config = (config or EngineConfig()).resolve(model.config)
        assert self.config.num_blocks is not None and self.config.max_model_len is not None
        self.model = model
        self.tokenizer = tokenizer
        self.kv_cache = KVCacheManager(
            self.config.num_blocks, self.config.block_size, self.config.enable_prefix_caching
        )
        self.scheduler = Scheduler(
            self.kv_cache,
            self.config.max_num_seqs,
            self.config.max_num_batched_tokens,
            self.config.max_model_len,
            self.config.scheduling_policy,
        )
        self.runner = ModelRunner(model, self.config)
        self.last_stats = StepStats()
        self._prefix_seen = (0, 0)
        self.last_logits: dict[str, Tensor] = {}
        self._grammar_compiler: GrammarCompiler | None = None
        self._grammar_lock = threading.Lock()

    @property
    def eos_token_id(self) -> int | None:
        if self.model.config.eos_token_id is not None:
            return self.model.config.eos_token_id
        return self.tokenizer.eos_token_id if self.tokenizer is not None else None

    def make_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams | None = None,
        deadline: float | None = None,
        priority: int = 0,
    ) -> Request:
        """Validate a request and build its state; the one validation every path runs. Pure
        (touches no engine state), so any thread may call it; raises InvalidRequestError
        naming the field."""
        params = params or SamplingParams()
        params.validate(self.model.config.vocab_size)
        if priority and self.config.scheduling_policy != "priority":
            raise InvalidRequestError(
                "priority", f"{priority} needs scheduling_policy 'priority' (this engine: fcfs)"
            )
        assert self.config.max_model_len is not None
        validate_prompt(prompt_token_ids, self.config.max_model_len, self.model.config.vocab_size)
        request = Request(
            request_id,
            list(prompt_token_ids),
            params,
            self.eos_token_id,
            deadline=deadline,
            priority=priority,
        )
        if params.structured_outputs is not None:
            request.grammar = self._grammars().matcher(params.structured_outputs)
        if self.tokenizer is not None:
            request.detokenizer = IncrementalDetokenizer(
                self.tokenizer,
                request.prompt_token_ids,
                params.stop,
                params.skip_special_tokens,
                self.tokenizer.special_token_ids,
            )
        return request

    def make_requests(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        n: int,
        deadline: float | None = None,
        priority: int = 0,
    ) -> list[Request]:
        """n sibling requests `{request_id}-{i}` of one prompt (OpenAI's n, TGI's best_of): the
        first computes the prompt and the others wait for it, then take its blocks from the
        prefix cache; a seed gives sibling i the seed + i."""
        if n < 1:
            raise InvalidRequestError("n", f"must be >= 1, got {n}")
        siblings: list[Request] = []
        for i in range(n):
            seed = None if params.seed is None else (params.seed + i) % 2**63
            request = self.make_request(
                f"{request_id}-{i}",
                prompt_token_ids,
                dataclasses.replace(params, seed=seed),
                deadline,
                priority,
            )
            request.prefill_leader = siblings[0] if siblings else None
            siblings.append(request)
        return siblings

    def _grammars(self) -> GrammarCompiler:
        """The engine's grammar compiler, built on first use (any thread)."""
        with self._grammar_lock:
            if self._grammar_compiler is None:
                if self.tokenizer is None:
                    raise InvalidRequestError(
                        "structured_outputs", "needs a tokenizer (this engine has none)"
                    )
                vocab = self.model.config.vocab_size
                self._grammar_compiler = GrammarCompiler(self.tokenizer, vocab, self.eos_token_id)
            return self._grammar_compiler

    def enqueue(self, request: Request) -> None:
        """Queue a request made by make_request; InvalidRequestError if its id is in flight."""
        if request.request_id in self.scheduler.requests:
            raise InvalidRequestError("request_id", f"{request.request_id!r} is already in flight")
        self.scheduler.add_request(request)

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams | None = None,
        deadline: float | None = None,
        priority: int = 0,
    ) -> Request:
        """make_request, then enqueue: the synchronous callers' one call."""
        request = self.make_request(request_id, prompt_token_ids, params, deadline, priority)
        self.enqueue(request)
        return request

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its cache; None if it is not in flight."""
        request = self.scheduler.finish_request(request_id, RequestStatus.FINISHED_ABORTED)
        if request is None:
            return None
        return RequestOutput.from_request(request, RequestStatus.FINISHED_ABORTED, [])

    def abort_expired(self, now: float | None = None) -> list[RequestOutput]:
        """Abort every request whose deadline has passed."""
        now = time.monotonic() if now is None else now
        expired = [
            r.request_id
            for r in self.scheduler.requests.values()
            if r.deadline is not None and r.deadline <= now
        ]
        outputs = [o for rid in expired if (o := self.abort_request(rid)) is not None]
        for out in outputs:
            out.stop_reason = "deadline"
        return outputs

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.num_unfinished > 0

    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once, update requests; returns the step's outputs."""
        start = time.perf_counter()
        sched = self.scheduler.schedule()
        if not sched.scheduled:
            self.last_stats = self._stats(0, sched_preempted=len(sched.preempted), start=start)
            return []
        result = self.runner.execute(sched)
        outputs = self.scheduler.update_from_output(sched, result)
        if self.config.keep_logits:
            self.last_logits = dict(result.logits)
        self.last_stats = self._stats(
            sched.num_batched_tokens, len(sched.preempted), start, result.routing_stats
        )
        return outputs

    def _stats(
        self, tokens: int, sched_preempted: int, start: float, routing: RoutingStats | None = None
    ) -> StepStats:
        prefix = self.kv_cache.stats
        seen_queries, seen_hits = self._prefix_seen
        self._prefix_seen = (prefix.queries, prefix.hits)
        return StepStats(
            num_batched_tokens=tokens,
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_preempted=sched_preempted,
            prefix_cache_queries=prefix.queries - seen_queries,
            prefix_cache_hits=prefix.hits - seen_hits,
            kv_cache_usage=self.kv_cache.usage,
            duration=time.perf_counter() - start,
            routing=routing,
        )
