"""A generation as the frontends see it: tokens with their text, logprobs and routing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hagmoe.engine.outputs import LayerDecision, RequestOutput
from hagmoe.engine.request import TokenLogprob

Finish = Literal["length", "eos_token", "stop_sequence"]


@dataclass(slots=True)
class GeneratedToken:
    id: int
    text: str
    logprob: TokenLogprob | None
    routing: list[LayerDecision] | None


def tokens_of(out: RequestOutput) -> list[GeneratedToken]:
    """The step's tokens; the step's text goes to its last token (the others add none)."""
    n = len(out.new_token_ids)
    return [
        GeneratedToken(
            id=token,
            text=out.new_text if i == n - 1 else "",
            logprob=out.logprobs[i] if i < len(out.logprobs) else None,
            routing=out.routing[i] if i < len(out.routing) else None,
        )
        for i, token in enumerate(out.new_token_ids)
    ]


def finish_of(out: RequestOutput) -> tuple[Finish, str | None]:
    """TGI's finish reason of a finished output, and the stop string that ended it."""
    assert out.finished and out.finish_reason != "abort"
    if out.finish_reason == "length":
        return "length", None
    if isinstance(out.stop_reason, str):
        return "stop_sequence", out.stop_reason
    return "eos_token", None


@dataclass(slots=True)
class Generation:
    """Everything a request generated, accumulated from its outputs."""

    request_id: str
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    tokens: list[GeneratedToken] = field(default_factory=list)
    text: str = ""
    finish: Finish | None = None
    stop_sequence: str | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None  # from the first output

    @property
    def cumulative_logprob(self) -> float:
        """The sum of the generated tokens' logprobs (requested with logprobs >= 0)."""
        return sum(t.logprob.logprob for t in self.tokens if t.logprob is not None)

    def add(self, out: RequestOutput) -> None:
        if out.prompt_logprobs is not None and self.prompt_logprobs is None:
            self.prompt_logprobs = out.prompt_logprobs
        self.tokens += tokens_of(out)
        self.text += out.new_text
        self.num_prompt_tokens = out.num_prompt_tokens
        self.num_cached_tokens = out.num_cached_tokens
        if out.finished:
            self.finish, self.stop_sequence = finish_of(out)
