"""What the engine hands back: per-step outputs of each request, and routing records."""

from __future__ import annotations

from dataclasses import dataclass, field

from hagmoe.engine.request import TokenLogprob


@dataclass(slots=True)
class LayerDecision:
    """One layer's routing of one token: group (-1 for the linear router), experts best-first,
    their scores, K and the normalised coarse entropy."""

    layer: int
    group: int
    experts: list[int]
    scores: list[float]
    k: int
    entropy: float


@dataclass(slots=True)
class RequestOutput:
    """A request's news from one engine step (new tokens and text, and the finish when it ends)."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None = None  # "stop", "length" or "abort"
    stop_reason: str | int | None = None  # the stop string or stop token id
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    routing: list[list[LayerDecision]] = field(default_factory=list)  # per new token, per layer
    arrival_time: float = 0.0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
