"""Per-request generation parameters, validated with errors that name the field and the limit."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from hagmoe.engine.errors import InvalidRequestError
from hagmoe.engine.structured_output import StructuredOutputs

MAX_LOGPROBS = 20
MAX_STOP_SEQUENCES = 16
REPETITION_PENALTY_RANGE = (1e-3, 1e3)  # logits scale by up to 1e3: finite in float32


@dataclass(slots=True)
class SamplingParams:
    """How one request samples and when it stops (names as in vLLM / TGI)."""

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    typical_p: float = 1.0
    min_p: float = 0.0  # keep tokens with probability >= min_p x the most likely one's; 0 = off
    repetition_penalty: float = 1.0  # CTRL-style, on prompt and output tokens; 1 = off
    frequency_penalty: float = 0.0  # OpenAI-style, on output tokens
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; n: the chosen token's logprob and n alternatives
    prompt_logprobs: int | None = None  # None: off; n: each prompt token's logprob and top n
    return_routing: bool = False
    skip_special_tokens: bool = True
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> bias in [-100, 100]
    allowed_token_ids: list[int] = field(default_factory=list)  # empty: every token
    bad_words_token_ids: list[list[int]] = field(default_factory=list)  # never generated
    structured_outputs: StructuredOutputs | None = None  # a grammar the output must match

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self, vocab_size: int | None = None) -> SamplingParams:
        """Raise InvalidRequestError for the first field outside its limit; return self."""
        _require(
            self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}"
        )
        _require(
            0 <= self.min_new_tokens <= self.max_new_tokens,
            "min_new_tokens",
            f"must lie in [0, max_new_tokens={self.max_new_tokens}], got {self.min_new_tokens}",
        )
        _require(
            _finite(self.temperature) and self.temperature >= 0,
            "temperature",
            f"must be >= 0 (0 = greedy), got {self.temperature}",
        )
        _require(self.top_k >= 0, "top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        _require(
            _finite(self.top_p) and 0 < self.top_p <= 1,
            "top_p",
            f"must lie in (0, 1], got {self.top_p}",
        )
        _require(
            _finite(self.typical_p) and 0 < self.typical_p <= 1,
            "typical_p",
            f"must lie in (0, 1], got {self.typical_p}",
        )
        _require(
            _finite(self.min_p) and 0 <= self.min_p <= 1,
            "min_p",
            f"must lie in [0, 1] (0 = off), got {self.min_p}",
        )
        self._validate_token_constraints(vocab_size)
        if self.structured_outputs is not None:
            self.structured_outputs.kind()
        _require(
            _finite(self.repetition_penalty)
            and REPETITION_PENALTY_RANGE[0]
            <= self.repetition_penalty
            <= REPETITION_PENALTY_RANGE[1],
            "repetition_penalty",
            f"must lie in [{REPETITION_PENALTY_RANGE[0]:g}, {REPETITION_PENALTY_RANGE[1]:g}] "
            f"(1 = off), got {self.repetition_penalty}",
        )
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            _require(_finite(value) and -2 <= value <= 2, name, f"must lie in [-2, 2], got {value}")
        _require(
            self.seed is None or 0 <= self.seed < 2**63,
            "seed",
            f"must lie in [0, 2**63), got {self.seed}",
        )
        _require(
            len(self.stop) <= MAX_STOP_SEQUENCES,
            "stop",
            f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(self.stop)}",
        )
        _require(
            all(isinstance(s, str) and s for s in self.stop),
            "stop",
            "stop sequences must be non-empty strings",
        )
        _check_ids("stop_token_ids", self.stop_token_ids, vocab_size)
        for name, n in (("logprobs", self.logprobs), ("prompt_logprobs", self.prompt_logprobs)):
            _require(
                n is None or 0 <= n <= MAX_LOGPROBS,
                name,
                f"must lie in [0, {MAX_LOGPROBS}], got {n}",
            )
        return self

    def _validate_token_constraints(self, vocab_size: int | None) -> None:
        _check_ids("logit_bias", list(self.logit_bias), vocab_size)
        for value in self.logit_bias.values():
            _require(
                _finite(value) and -100 <= value <= 100,
                "logit_bias",
                f"biases must lie in [-100, 100], got {value}",
            )
        _check_ids("allowed_token_ids", self.allowed_token_ids, vocab_size)
        for word in self.bad_words_token_ids:
            _require(bool(word), "bad_words", "a bad word must hold at least one token")
            _check_ids("bad_words", word, vocab_size)


def _check_ids(field_name: str, ids: Sequence[int], vocab_size: int | None) -> None:
    for token in ids:
        _require(
            token >= 0 and (vocab_size is None or token < vocab_size),
            field_name,
            f"token id {token} outside [0, vocab_size={vocab_size})",
        )


def validate_prompt(prompt: Sequence[int], max_model_len: int, vocab_size: int) -> None:
    """Raise InvalidRequestError unless the prompt is non-empty, leaves room for one new token
    and holds only ids in [0, vocab_size)."""
    if not prompt:
        raise InvalidRequestError("prompt", "must hold at least one token")
    if len(prompt) >= max_model_len:
        raise InvalidRequestError(
            "prompt",
            f"{len(prompt)} tokens; the model takes at most "
            f"{max_model_len - 1} so that one token can be generated",
        )
    bad = next((t for t in prompt if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequestError("prompt", f"token id {bad} outside [0, vocab_size={vocab_size})")


def params_per_prompt(
    params: SamplingParams | Sequence[SamplingParams] | None, num_prompts: int
) -> list[SamplingParams]:
    """One SamplingParams per prompt: a sequence as given, or one (default) shared by all."""
    per_prompt = (
        list(params) if isinstance(params, Sequence) else [params or SamplingParams()] * num_prompts
    )
    if len(per_prompt) != num_prompts:
        raise ValueError(f"{len(per_prompt)} sampling params for {num_prompts} prompts")
    return per_prompt


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _require(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise InvalidRequestError(field_name, message)
