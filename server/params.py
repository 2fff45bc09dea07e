"""API parameters (TGI, OpenAI) -> the engine's SamplingParams; unsupported values are rejected."""

from __future__ import annotations

from typing import Any

from hagmoe.engine.sampling_params import SamplingParams
from server.errors import InvalidInput
from server.limits import Limits
from server.openai_schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from server.tgi_schemas import TgiParameters

TGI_DEFAULT_MAX_NEW_TOKENS = 100


def _reject(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise InvalidInput(f"{param}: {message}", param)


def _sampling(**fields: Any) -> SamplingParams:
    """SamplingParams from a protocol's fields: an unset (None) field takes the engine default."""
    return SamplingParams(**{name: v for name, v in fields.items() if v is not None})


def tgi_sampling(p: TgiParameters, num_input: int, limits: Limits) -> SamplingParams:
    """TGI semantics: greedy unless do_sample or a warper (temperature, top_k, top_p, typical_p)."""
    _reject(not p.watermark, "watermark", "watermarking is not supported")
    _reject(
        not p.decoder_input_details, "decoder_input_details", "prompt logprobs are not supported"
    )
    _reject(p.best_of in (None, 1), "best_of", f"only 1 is supported, got {p.best_of}")
    _reject(p.adapter_id is None, "adapter_id", "adapters are not supported")
    _reject(p.grammar is None, "grammar", "grammars are not supported")
    warpers = (
        (p.temperature is not None and p.temperature != 1.0)
        or bool(p.top_k)
        or (p.top_p is not None and p.top_p < 1.0)
        or (p.typical_p is not None and p.typical_p < 1.0)
    )
    sample = p.do_sample or warpers
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
        logprobs=p.top_n_tokens or 0,
        return_routing=p.return_routing,
    )


def truncate_prompt(ids: list[int], truncate: int | None) -> list[int]:
    """TGI's `truncate`: keep the last `truncate` tokens."""
    if truncate is None:
        return ids
    _reject(truncate >= 1, "truncate", f"must be >= 1, got {truncate}")
    return ids[-truncate:]


def _common(
    req: SamplingFields, max_new: int, min_new: int, logprobs: int | None
) -> SamplingParams:
    _reject(req.n == 1, "n", f"only n=1 is supported, got {req.n}")
    _reject(not req.logit_bias, "logit_bias", "logit_bias is not supported")
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
        return_routing=req.return_routing,
    )


def completion_sampling(req: CompletionRequest, num_input: int, limits: Limits) -> SamplingParams:
    _reject(req.best_of in (None, 1), "best_of", f"only 1 is supported, got {req.best_of}")
    _reject(req.suffix is None, "suffix", "suffix is not supported")
    max_new = req.max_tokens if req.max_tokens is not None else limits.room(num_input)
    return _common(req, max_new, req.min_tokens or 0, req.logprobs)


def chat_sampling(req: ChatCompletionRequest, num_input: int, limits: Limits) -> SamplingParams:
    _reject(not req.tools, "tools", "tool calls are not supported")
    kind = (req.response_format or {}).get("type", "text")
    _reject(kind == "text", "response_format", f"only type 'text' is supported, got {kind!r}")
    _reject(
        req.top_logprobs is None or req.logprobs,
        "top_logprobs",
        "needs logprobs=true",
    )
    max_new = req.max_completion_tokens or req.max_tokens or limits.room(num_input)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    return _common(req, max_new, req.min_tokens or 0, logprobs)


def completion_prompt(prompt: str | list[int] | list[str] | list[list[int]]) -> str | list[int]:
    """One prompt, as text or token ids; a list must hold exactly one prompt."""
    if isinstance(prompt, str):
        return prompt
    if not prompt:
        raise InvalidInput("prompt: must not be empty", "prompt")
    if all(isinstance(t, int) for t in prompt):
        return [int(t) for t in prompt]  # type: ignore[arg-type]
    _reject(len(prompt) == 1, "prompt", f"one prompt per request is supported, got {len(prompt)}")
    first = prompt[0]
    return first if isinstance(first, str) else list(first)  # type: ignore[arg-type]
