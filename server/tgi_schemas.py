"""Bodies of the TGI-compatible routes (/generate, /generate_stream, /) and the tokenizer routes.

Request bodies are strict: no coercion (`"4"` is not an int, `"yes"` not a bool; an int is a
float, and NaN / infinity are refused), and the limits the engine enforces are in the schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hagmoe.engine.sampling_params import MAX_LOGPROBS, MAX_STOP_SEQUENCES

MAX_STOP = MAX_STOP_SEQUENCES
MAX_BEST_OF = 16  # TGI's default max_best_of is 2
STRICT_FORBID = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
STRICT_IGNORE = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)
NonEmptyStr = Annotated[str, Field(min_length=1)]
TokenId = Annotated[int, Field(ge=0)]


class RoutingEntry(BaseModel):
    """One token's routing in one layer."""

    layer: int = Field(description="Layer index.")
    group: int = Field(description="Chosen expert group (-1 for the linear top-k router).")
    experts: list[int] = Field(description="Chosen experts, best first.")
    scores: list[float] = Field(description="Gate scores of the chosen experts.")
    k: int = Field(description="Experts this token used in this layer (adaptive K).")
    entropy: float = Field(description="Normalised entropy of the group routing, in [0, 1].")


class TgiGrammar(BaseModel):
    """TGI's grammar: a JSON schema or a regex the output must match."""

    model_config = STRICT_FORBID

    type: Literal["json", "regex"] = Field(description="json (a schema) or regex.")
    value: dict[str, Any] | str = Field(description="The JSON schema (object or text) or regex.")


class TgiParameters(BaseModel):
    """Generation parameters (TGI names; unknown keys are rejected)."""

    model_config = STRICT_FORBID

    max_new_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Most tokens to generate (default: min(100, max_total_tokens - input).",
    )
    temperature: float | None = Field(
        default=None, ge=0, description="Softmax temperature; implies sampling."
    )
    top_k: int | None = Field(
        default=None, ge=0, description="Keep the k most likely tokens; implies sampling."
    )
    top_p: float | None = Field(
        default=None, gt=0, le=1, description="Nucleus mass in (0, 1]; implies sampling."
    )
    typical_p: float | None = Field(
        default=None, gt=0, le=1, description="Typical mass in (0, 1]; implies sampling."
    )
    repetition_penalty: float | None = Field(
        default=None, gt=0, description="CTRL penalty (> 0, 1 = off)."
    )
    frequency_penalty: float | None = Field(
        default=None, ge=-2, le=2, description="Frequency penalty in [-2, 2]."
    )
    seed: int | None = Field(
        default=None, ge=0, lt=2**63, description="Random seed of this request."
    )
    stop: list[NonEmptyStr] = Field(
        default_factory=list, max_length=MAX_STOP, description="Stop strings (at most 16)."
    )
    do_sample: bool = Field(default=False, description="Sample; without it and warpers: greedy.")
    details: bool = Field(
        default=False, description="Return finish reason, token ids and logprobs."
    )
    decoder_input_details: bool = Field(
        default=False, description="Prompt logprobs in details.prefill (not when streaming)."
    )
    return_full_text: bool = Field(
        default=False, description="Prepend the prompt to generated_text."
    )
    truncate: int | None = Field(
        default=None, ge=1, description="Keep only the last `truncate` prompt tokens."
    )
    watermark: bool = Field(default=False, description="Not supported (rejected when true).")
    top_n_tokens: int | None = Field(
        default=None,
        ge=0,
        le=MAX_LOGPROBS,
        description="Return this many most likely alternatives per token (0..20).",
    )
    best_of: int | None = Field(
        default=None,
        ge=1,
        le=MAX_BEST_OF,
        description="Sequences to sample, of which the one with the highest cumulative logprob "
        "is returned (needs sampling, no seed, not streamed).",
    )
    adapter_id: str | None = Field(default=None, description="Adapters are not supported.")
    grammar: TgiGrammar | None = Field(
        default=None, description="Constrain the output to a JSON schema or a regex."
    )
    return_routing: bool = Field(
        default=False, description="hagmoe: each token's routing per layer (implies details)."
    )
    ignore_eos: bool = Field(
        default=False, description="hagmoe: keep generating past end-of-sequence."
    )
    min_new_tokens: int | None = Field(
        default=None, ge=0, description="hagmoe: fewest tokens before EOS."
    )
    timeout: float | None = Field(
        default=None, gt=0, description="hagmoe: seconds until the request is aborted (504)."
    )


class TgiRequest(BaseModel):
    """A TGI generation request (an unknown key is refused by name)."""

    model_config = STRICT_FORBID

    inputs: NonEmptyStr = Field(description="The prompt text.")
    parameters: TgiParameters = Field(
        default_factory=TgiParameters, description="Generation parameters."
    )
    stream: bool = Field(default=False, description="POST / only: answer with server-sent events.")


class TgiToken(BaseModel):
    """One generated token."""

    id: int = Field(description="Token id.")
    text: str = Field(description="Text the token added (empty while UTF-8 is incomplete).")
    logprob: float | None = Field(description="Log probability of the token.")
    special: bool = Field(description="Whether it is a special token.")
    routing: list[RoutingEntry] | None = Field(
        default=None, description="Routing per layer (return_routing)."
    )


class TgiPrefillToken(BaseModel):
    """One prompt token (decoder_input_details)."""

    id: int = Field(description="Token id.")
    text: str = Field(description="The token's string.")
    logprob: float | None = Field(description="Its log probability (null for the first).")


class TgiSequenceDetails(BaseModel):
    finish_reason: Literal["length", "eos_token", "stop_sequence"] = Field(
        description="Why the generation ended."
    )
    generated_tokens: int = Field(description="Tokens generated.")
    seed: int | None = Field(description="The request's seed, if any.")
    prefill: list[TgiPrefillToken] = Field(
        description="The prompt's tokens with decoder_input_details, else empty."
    )
    tokens: list[TgiToken] = Field(description="Every generated token.")
    top_tokens: list[list[TgiToken]] | None = Field(
        default=None, description="Alternatives per token (top_n_tokens)."
    )
    input_length: int = Field(description="Prompt tokens.")
    cached_tokens: int = Field(description="Prompt tokens served from the prefix cache.")


class TgiBestOfSequence(TgiSequenceDetails):
    generated_text: str = Field(description="The sequence's text.")


class TgiDetails(TgiSequenceDetails):
    best_of_sequences: list[TgiBestOfSequence] | None = Field(
        default=None, description="With best_of > 1: the other sequences."
    )


class TgiResponse(BaseModel):
    generated_text: str = Field(description="The completion (with the prompt if return_full_text).")
    details: TgiDetails | None = Field(default=None, description="With details or return_routing.")


class TgiStreamDetails(BaseModel):
    finish_reason: Literal["length", "eos_token", "stop_sequence"] = Field(
        description="Why the generation ended."
    )
    generated_tokens: int = Field(description="Tokens generated.")
    input_length: int = Field(description="Prompt tokens.")
    seed: int | None = Field(description="The request's seed, if any.")


class TgiStreamEvent(BaseModel):
    """One server-sent event: `data: {...}`; the last one carries generated_text and details."""

    index: int = Field(description="Index of the token in the completion.")
    token: TgiToken = Field(description="The token.")
    top_tokens: list[TgiToken] | None = Field(default=None, description="With top_n_tokens.")
    generated_text: str | None = Field(default=None, description="The whole text (last event).")
    details: TgiStreamDetails | None = Field(default=None, description="Last event only.")


class ErrorBody(BaseModel):
    """The error shape of the TGI and tokenizer routes."""

    error: str = Field(description="What went wrong, with the limit or the value.")
    error_type: str = Field(
        description="validation, unauthorized, payload_too_large, overloaded, unavailable, "
        "timeout, cancelled or generation."
    )


class TokenizeRequest(BaseModel):
    model_config = STRICT_FORBID

    inputs: str = Field(description="Text to tokenize.")
    add_special_tokens: bool = Field(
        default=False, description="Add the tokenizer's special tokens."
    )


class TokenizeResponse(BaseModel):
    token_ids: list[int] = Field(description="Token ids.")
    tokens: list[str] = Field(description="Each token's string.")
    count: int = Field(description="Number of tokens.")
    max_input_tokens: int = Field(description="The server's prompt limit.")


class DetokenizeRequest(BaseModel):
    model_config = STRICT_FORBID

    token_ids: list[TokenId] = Field(description="Token ids, each in [0, vocab_size).")
    skip_special_tokens: bool = Field(
        default=True, description="Drop special tokens from the text."
    )


class DetokenizeResponse(BaseModel):
    text: str = Field(description="The decoded text.")
