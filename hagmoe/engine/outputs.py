"""What the engine hands back: per-step outputs of each request, and routing records."""

from __future__ import annotations

from dataclasses import dataclass, field

from hagmoe.engine.request import Request, RequestStatus, TokenLogprob


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
    prompt_logprobs: list[TokenLogprob | None] | None = None  # the first output only
    routing: list[list[LayerDecision]] = field(default_factory=list)  # per new token, per layer
    arrival_time: float = 0.0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None

    @classmethod
    def from_request(
        cls,
        request: Request,
        status: RequestStatus | None,
        new_token_ids: list[int],
        new_text: str = "",
        logprob: TokenLogprob | None = None,
        routing: list[LayerDecision] | None = None,
    ) -> RequestOutput:
        """The step's output of `request`; `status` is its finishing status, None while it runs."""
        return cls(
            request_id=request.request_id,
            new_token_ids=new_token_ids,
            new_text=new_text,
            finished=status is not None,
            finish_reason=status.value if status is not None else None,
            stop_reason=request.stop_reason,
            num_prompt_tokens=request.num_prompt_tokens,
            num_output_tokens=request.num_output_tokens,
            num_cached_tokens=max(request.num_cached_tokens, 0),
            logprobs=[logprob] if logprob is not None else [],
            prompt_logprobs=_first_output_prompt_logprobs(request, new_token_ids),
            routing=[routing] if routing is not None else [],
            arrival_time=request.arrival_time,
            first_scheduled_time=request.first_scheduled_time,
            first_token_time=request.first_token_time,
            finished_time=request.finished_time,
        )


def _first_output_prompt_logprobs(
    request: Request, new_token_ids: list[int]
) -> list[TokenLogprob | None] | None:
    """The prompt's logprobs travel once, with the request's first output."""
    if request.sampling_params.prompt_logprobs is None:
        return None
    first = request.num_output_tokens == len(new_token_ids)
    return (list(request.prompt_logprobs) or [None]) if first else None
