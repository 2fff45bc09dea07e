"""API parameters (TGI, OpenAI) -> the engine's SamplingParams; unsupported values are rejected."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.engine.structured_output import StructuredOutputs
from server.errors import InvalidInput
from server.limits import Limits
from server.openai_schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    ResponseFormat,
    SamplingFields,
    StructuredOutputsFields,
)
from server.tgi_schemas import TgiGrammar, TgiParameters

TGI_DEFAULT_MAX_NEW_TOKENS = 100
Encode = Callable[[str], list[int]]  # text -> token ids, without special tokens


def _reject(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise InvalidInput(f"{param}: {message}", param)


def _sampling(**fields: Any) -> SamplingParams:
    """SamplingParams from a protocol's fields: an unset (None) field takes the engine default."""
    return SamplingParams(**{name: v for name, v in fields.items() if v is not None})


def tgi_sampling(
    p: TgiParameters, num_input: int, limits: Limits, stream: bool = False
) -> SamplingParams:
    """TGI semantics: greedy unless do_sample or a warper (temperature, top_k, top_p, typical_p)."""
    _reject(not p.watermark, "watermark", "watermarking is not supported")
    _reject(
        not (stream and p.decoder_input_details),
        "decoder_input_details",
        "prompt logprobs are not supported when streaming",
    )
    _reject(p.adapter_id is None, "adapter_id", "adapters are not supported")
    warpers = (
        (p.temperature is not None and p.temperature != 1.0)
        or bool(p.top_k)
        or (p.top_p is not None and p.top_p < 1.0)
        or (p.typical_p is not None and p.typical_p < 1.0)
    )
    sample = p.do_sample or warpers
    best_of = p.best_of or 1
    if best_of > 1:  # TGI's rules: sampled, unseeded, unary
        _reject(sample, "best_of", "needs sampling (do_sample or a sampling parameter)")
        _reject(p.seed is None, "seed", "must not be set when best_of > 1")
        _reject(not stream, "best_of", "best_of > 1 cannot be streamed")
    max_new = p.max_new_tokens
    if max_new is None:
        max_new = min(TGI_DEFAULT_MAX_NEW_TOKENS, limits.room(num_input))
    return _sampling(
        max_new_tokens=max_new,
        min_new_tokens=p.min_new_tokens,
        temperature=p.temperature if sample else 0.0,
        top_k=p.top_k,
        top_p=p.top_p,
        typical_p=p.typical_p,
        repetition_penalty=p.repetition_penalty,
        frequency_penalty=p.frequency_penalty,
        seed=p.seed,
        stop=list(p.stop),
        ignore_eos=p.ignore_eos,
        logprobs=p.top_n_tokens or 0,  # 0: the chosen token's logprob, which best_of ranks by
        prompt_logprobs=0 if p.decoder_input_details else None,
        return_routing=p.return_routing,
        structured_outputs=_tgi_grammar(p.grammar),
    )


def _tgi_grammar(grammar: TgiGrammar | None) -> StructuredOutputs | None:
    if grammar is None:
        return None
    if grammar.type == "json":
        return StructuredOutputs(json=grammar.value)
    _reject(isinstance(grammar.value, str), "grammar", "a regex grammar's value must be a string")
    return StructuredOutputs(regex=str(grammar.value))


def truncate_prompt(ids: list[int], truncate: int | None, field: str = "truncate") -> list[int]:
    """TGI's `truncate`, vLLM's `truncate_prompt_tokens`: keep the last `truncate` tokens
    (the same list when it is no longer)."""
    if truncate is None:
        return ids
    _reject(truncate >= 1, field, f"must be >= 1, got {truncate}")
    return ids[-truncate:] if len(ids) > truncate else ids


def _response_format(fmt: ResponseFormat | None) -> StructuredOutputs | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return StructuredOutputs(json_object=True)
    if fmt.json_schema is None:
        raise InvalidInput(
            "response_format: type json_schema needs json_schema: {name, schema}",
            "response_format",
        )
    return StructuredOutputs(json=fmt.json_schema.json_schema)


def vllm_structured(
    json: dict[str, Any] | str | None = None,
    json_object: bool | None = None,
    regex: str | None = None,
    choice: list[str] | None = None,
    grammar: str | None = None,
) -> StructuredOutputs:
    """vLLM's structured_outputs shape (REST's object, gRPC's message); the engine refuses
    one with no field or several set, naming `structured_outputs`."""
    return StructuredOutputs(
        json=json,
        json_object=bool(json_object),
        regex=regex,
        choice=tuple(choice or ()),
        grammar=grammar,
    )


def _vllm_structured(so: StructuredOutputsFields | None) -> StructuredOutputs | None:
    if so is None:
        return None
    return vllm_structured(so.json_, so.json_object, so.regex, so.choice, so.grammar)


def structured_outputs(req: SamplingFields) -> StructuredOutputs | None:
    """The one structured-output constraint of an OpenAI request; 400 when several fields set one."""
    specs = {
        "response_format": _response_format(req.response_format),
        "structured_outputs": _vllm_structured(req.structured_outputs),
        "guided_json": StructuredOutputs(json=req.guided_json) if req.guided_json else None,
        "guided_regex": StructuredOutputs(regex=req.guided_regex) if req.guided_regex else None,
        "guided_choice": StructuredOutputs(choice=tuple(req.guided_choice))
        if req.guided_choice
        else None,
        "guided_grammar": StructuredOutputs(grammar=req.guided_grammar)
        if req.guided_grammar
        else None,
    }
    named = {name: spec for name, spec in specs.items() if spec is not None}
    if len(named) > 1:
        names = ", ".join(named)
        raise InvalidInput(f"{names}: set at most one structured-output field", next(iter(named)))
    return next(iter(named.values()), None)


def logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    """OpenAI's string token ids -> ints; a key that is not an integer is refused by name."""
    bad = [k for k in bias or {} if not k.strip().lstrip("-").isdigit()]
    _reject(not bad, "logit_bias", f"keys must be token ids (integers), got {bad[:3]}")
    return {int(k): v for k, v in (bias or {}).items()}


def bad_words_ids(words: list[str] | None, encode: Encode | None) -> list[list[int]] | None:
    """vLLM's bad_words as token-id lists (tokenized as given); None when there are none."""
    if not words:
        return None
    _reject(encode is not None, "bad_words", "needs the served model's tokenizer")
    assert encode is not None
    return [encode(word) for word in words]


def _common(
    req: SamplingFields,
    max_new: int,
    min_new: int,
    logprobs: int | None,
    encode: Encode | None,
    prompt_logprobs: int | None = None,
    tool_constraint: StructuredOutputs | None = None,
) -> SamplingParams:
    reject_streamed_prompt_logprobs(req.stream, req.prompt_logprobs)
    constraint = structured_outputs(req)
    if tool_constraint is not None:
        _reject(
            constraint is None,
            "tool_choice",
            "required or a named function constrains the output: do not also set "
            "response_format, structured_outputs or guided_*",
        )
        constraint = tool_constraint
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    return _sampling(
        max_new_tokens=max_new,
        min_new_tokens=min_new,
        temperature=req.temperature,
        top_k=req.top_k,
        top_p=req.top_p,
        repetition_penalty=req.repetition_penalty,
        frequency_penalty=req.frequency_penalty,
        presence_penalty=req.presence_penalty,
        seed=req.seed,
        stop=stop,
        ignore_eos=req.ignore_eos,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs if prompt_logprobs is not None else req.prompt_logprobs,
        return_routing=req.return_routing,
        min_p=req.min_p,
        stop_token_ids=req.stop_token_ids,
        logit_bias=logit_bias(req.logit_bias),
        allowed_token_ids=req.allowed_token_ids,
        bad_words_token_ids=bad_words_ids(req.bad_words, encode),
        structured_outputs=constraint,
    )


def reject_streamed_prompt_logprobs(stream: bool, prompt_logprobs: int | None) -> None:
    _reject(
        not (stream and prompt_logprobs is not None),
        "prompt_logprobs",
        "not supported when streaming (as in vLLM)",
    )


def echo_logprobs(req: CompletionRequest) -> bool:
    """Completions' echo with logprobs: the prompt's tokens and logprobs lead choices[0]."""
    return req.echo and req.logprobs is not None


def num_sequences(req: SamplingFields, best_of: int | None = None) -> int:
    """How many sequences a prompt runs: best_of (>= n; not streamed), else n."""
    if best_of is None or best_of == req.n:
        return req.n
    _reject(best_of > req.n, "best_of", f"must be >= n={req.n}, got {best_of}")
    _reject(not req.stream, "best_of", "best_of > n cannot be streamed")
    return best_of


def completion_sampling(
    req: CompletionRequest, num_input: int, limits: Limits, encode: Encode | None = None
) -> SamplingParams:
    _reject(req.suffix is None, "suffix", "suffix is not supported")
    _reject(req.max_tokens != 0 or req.echo, "max_tokens", "0 needs echo (the prompt's logprobs)")
    # max_tokens 0: one token is generated and dropped, only the prompt is scored
    max_new = 1 if req.max_tokens == 0 else req.max_tokens or limits.room(num_input)
    prompt_n = None
    if echo_logprobs(req):
        prompt_n = max(req.logprobs or 0, req.prompt_logprobs or 0)
    logprobs = req.logprobs
    if num_sequences(req, req.best_of) > req.n:  # ranking needs each token's logprob
        logprobs = logprobs or 0
    return _common(req, max_new, req.min_tokens or 0, logprobs, encode, prompt_n)


def chat_sampling(
    req: ChatCompletionRequest,
    num_input: int,
    limits: Limits,
    encode: Encode | None = None,
    tool_constraint: StructuredOutputs | None = None,
) -> SamplingParams:
    """`tool_constraint`: what tool_choice required or a named function imposes."""
    _reject(
        req.top_logprobs is None or req.logprobs,
        "top_logprobs",
        "needs logprobs=true",
    )
    max_new = req.max_completion_tokens or req.max_tokens or limits.room(num_input)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    return _common(
        req, max_new, req.min_tokens or 0, logprobs, encode, tool_constraint=tool_constraint
    )


def completion_prompts(
    prompt: str | list[int] | list[str] | list[list[int]],
) -> list[str] | list[list[int]]:
    """The prompts of a completion request, as texts or token-id lists (a batch or one)."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise InvalidInput("prompt: must not be empty", "prompt")
    if all(isinstance(t, int) for t in prompt):
        return [[int(t) for t in prompt]]  # type: ignore[arg-type]
    return list(prompt)  # type: ignore[return-value]
