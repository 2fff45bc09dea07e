"""A generation request and the state it owns while it moves through the engine."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from hagmoe.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from hagmoe.engine.detokenizer import IncrementalDetokenizer


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"  # EOS, a stop token or a stop string
    FINISHED_LENGTH = "length"  # max_new_tokens or the model's context
    FINISHED_ABORTED = "abort"  # cancelled, disconnected or past its deadline

    @property
    def finished(self) -> bool:
        return self in (
            RequestStatus.FINISHED_STOPPED,
            RequestStatus.FINISHED_LENGTH,
            RequestStatus.FINISHED_ABORTED,
        )


@dataclass(slots=True)
class TokenLogprob:
    """The chosen token's logprob and the top alternatives (token id -> logprob)."""

    token_id: int
    logprob: float
    top: dict[int, float]


@dataclass(slots=True, eq=False)
class Request:
    """Owns its tokens, progress, cache blocks and outputs; the scheduler only moves it."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_id: int | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    deadline: float | None = None  # time.monotonic() after which the request is aborted
    priority: int = 0  # scheduling_policy "priority": lower runs first (ties: arrival)
    prefill_leader: Request | None = None  # a sibling (n > 1) whose prompt this one reuses
    status: RequestStatus = RequestStatus.WAITING
    all_token_ids: list[int] = field(init=False)  # prompt + output
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose K, V and routing values are in the cache
    num_cached_tokens: int = -1  # prompt tokens served by the prefix cache (-1: not scheduled yet)
    block_table: list[int] = field(default_factory=list)  # physical block of each logical block
    block_hashes: list[int] = field(default_factory=list)  # chained hash of each full block
    num_preemptions: int = 0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    stop_reason: str | int | None = None  # the stop string or stop token that ended it
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=list)  # None: token 0
    routing: list[Any] = field(default_factory=list)  # per output token: per-layer decisions
    generator: torch.Generator | None = None  # seeded per request (SamplingParams.seed)
    detokenizer: IncrementalDetokenizer | None = None
    grammar: Any = None  # an llguidance.LLMatcher the output tokens advance (structured outputs)

    def __post_init__(self) -> None:
        self.all_token_ids = list(self.prompt_token_ids)
        if self.sampling_params.seed is not None:
            self.generator = torch.Generator().manual_seed(self.sampling_params.seed)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    @property
    def waits_for_leader(self) -> bool:
        """Whether the prefill leader is still computing the prompt this request will find in
        the prefix cache once it is done."""
        leader = self.prefill_leader
        return (
            leader is not None
            and not leader.is_finished
            and leader.num_computed_tokens < leader.num_prompt_tokens
        )

    def stop_status(
        self, token: int, stop_string: str | None, max_model_len: int
    ) -> tuple[RequestStatus | None, str | int | None]:
        """Whether the just-appended `token` ends the request, and the stop reason: a stop
        string, then EOS or a stop token (once min_new_tokens are out), then the length limits."""
        params = self.sampling_params
        if stop_string is not None:
            return RequestStatus.FINISHED_STOPPED, stop_string
        if self.grammar is not None and (self.grammar.is_stopped() or self.grammar.is_error()):
            return RequestStatus.FINISHED_STOPPED, None
        if self.num_output_tokens >= params.min_new_tokens:
            if token == self.eos_token_id and not params.ignore_eos:
                return RequestStatus.FINISHED_STOPPED, None
            if token in params.stop_token_ids:
                return RequestStatus.FINISHED_STOPPED, token
        if self.num_output_tokens >= params.max_new_tokens or self.num_tokens >= max_model_len:
            return RequestStatus.FINISHED_LENGTH, None
        return None, None

    def add_prompt_logprobs(self, found: list[TokenLogprob]) -> None:
        """Extend prompt_logprobs with the next prompt tokens' (token 0 has none)."""
        if not self.prompt_logprobs:
            self.prompt_logprobs.append(None)
        self.prompt_logprobs.extend(found)

    def append_output_token(self, token_id: int) -> None:
        """Add one sampled token (called from Scheduler.update_from_output only)."""
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)
        if self.grammar is not None:
            self.grammar.consume_token(token_id)
