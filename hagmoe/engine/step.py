"""The engine's step contract: what the scheduler hands the runner, and what the runner hands
back. It imports neither side, so the scheduler, the input batch and the runner all import it.

Legend: L layers, N experts, G groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from hagmoe.engine.outputs import LayerDecision
from hagmoe.engine.request import Request, TokenLogprob


@dataclass(slots=True)
class ScheduledRequest:
    """One request of a step and how many of its tokens the step computes."""

    request: Request
    num_new_tokens: int  # tokens computed this step, from request.num_computed_tokens on

    @property
    def samples(self) -> bool:
        """Whether this step reaches the request's last token, so a token is sampled."""
        return self.request.num_computed_tokens + self.num_new_tokens == self.request.num_tokens


@dataclass(slots=True)
class SchedulerOutput:
    """The scheduler's decision for one step."""

    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


@dataclass(slots=True)
class RoutingStats:
    """Routing of every token a step computed, summed over the step."""

    expert_tokens: list[list[int]]  # [L][N] token-expert assignments
    group_tokens: list[list[int]]  # [L][G] tokens per chosen group (empty for the linear router)
    k: list[int]  # K of every token and layer
    entropy: list[float]  # normalised entropy of every token and layer (attention router)


@dataclass(slots=True)
class RunnerOutput:
    """What one model step produced, keyed by request id."""

    sampled: dict[str, int] = field(default_factory=dict)  # request id -> new token
    logprobs: dict[str, TokenLogprob] = field(default_factory=dict)
    prompt_logprobs: dict[str, list[TokenLogprob]] = field(default_factory=dict)  # next tokens
    routing: dict[str, list[LayerDecision]] = field(default_factory=dict)
    logits: dict[str, Tensor] = field(default_factory=dict)  # EngineConfig.keep_logits only
    routing_stats: RoutingStats | None = None
