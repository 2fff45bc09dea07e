"""hagmoe.v1 protobuf messages <-> the engine's parameters and outputs."""

from __future__ import annotations

from hagmoe.engine.client import ModelInfo
from hagmoe.engine.outputs import RequestOutput
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.engine.structured_output import StructuredOutputs
from server._generated import generation_pb2 as pb
from server.errors import InvalidInput
from server.generation import Finish, GeneratedToken, Generation, finish_of, tokens_of
from server.limits import Limits
from server.openai_schemas import MAX_N
from server.params import (
    Encode,
    bad_words_ids,
    reject_streamed_prompt_logprobs,
    truncate_prompt,
    vllm_structured,
)
from server.token_view import TokenView

DEFAULT_MAX_NEW_TOKENS = 64
FINISH = {
    "length": pb.FINISH_REASON_LENGTH,
    "eos_token": pb.FINISH_REASON_EOS_TOKEN,
    "stop_sequence": pb.FINISH_REASON_STOP_SEQUENCE,
}


OPTIONAL_FIELDS = (
    "max_new_tokens",
    "temperature",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "seed",
    "min_p",
    "prompt_logprobs",
)


def sampling_params(
    p: pb.SamplingParameters,
    num_input: int,
    limits: Limits,
    encode: Encode | None = None,
    stream: bool = False,
) -> SamplingParams:
    """Unset optional fields take the documented defaults (greedy, 64 tokens at most); the
    engine validates the values (INVALID_ARGUMENT naming the field)."""
    fields = {name: getattr(p, name) for name in OPTIONAL_FIELDS if p.HasField(name)}
    fields.setdefault("temperature", 0.0)
    fields.setdefault("max_new_tokens", min(DEFAULT_MAX_NEW_TOKENS, limits.room(num_input)))
    reject_streamed_prompt_logprobs(stream, fields.get("prompt_logprobs"))
    return SamplingParams(
        logit_bias=dict(p.logit_bias),
        allowed_token_ids=list(p.allowed_token_ids),
        bad_words_token_ids=bad_words_ids(list(p.bad_words), encode) or [],
        structured_outputs=structured_outputs(p),
        min_new_tokens=p.min_new_tokens,
        top_k=p.top_k,
        frequency_penalty=p.frequency_penalty,
        presence_penalty=p.presence_penalty,
        stop=list(p.stop),
        stop_token_ids=list(p.stop_token_ids),
        ignore_eos=p.ignore_eos,
        logprobs=p.top_logprobs if p.top_logprobs else (0 if p.logprobs else None),
        return_routing=p.return_routing,
        **fields,
    )


def structured_outputs(p: pb.SamplingParameters) -> StructuredOutputs | None:
    if not p.HasField("structured_outputs"):
        return None
    so = p.structured_outputs
    return vllm_structured(
        json=so.json if so.HasField("json") else None,
        json_object=so.json_object,
        regex=so.regex if so.HasField("regex") else None,
        choice=list(so.choice),
        grammar=so.grammar if so.HasField("grammar") else None,
    )


def num_sequences(p: pb.SamplingParameters) -> int:
    """n: 1 when unset, else in [1, MAX_N]."""
    if not p.HasField("n"):
        return 1
    if not 1 <= p.n <= MAX_N:
        raise InvalidInput(f"n: must lie in [1, {MAX_N}], got {p.n}", "n")
    return p.n


def truncated(ids: list[int], p: pb.SamplingParameters) -> list[int]:
    keep = p.truncate_prompt_tokens if p.HasField("truncate_prompt_tokens") else None
    return truncate_prompt(ids, keep, "truncate_prompt_tokens")


def prompt_source(request: pb.GenerateRequest) -> str | list[int]:
    which = request.WhichOneof("prompt")
    if which == "text":
        return request.text
    if which == "token_ids":
        return list(request.token_ids.ids)
    raise InvalidInput("prompt: set text or token_ids", "prompt")


def token(view: TokenView, t: GeneratedToken) -> pb.Token:
    message = pb.Token(id=t.id, text=t.text, special=view.special(t.id))
    if t.logprob is not None:
        message.logprob = t.logprob.logprob
        message.top_logprobs.extend(
            pb.TopLogprob(id=i, text=view.piece(i), logprob=lp) for i, lp in t.logprob.top.items()
        )
    for d in t.routing or []:
        message.routing.append(
            pb.LayerRouting(
                layer=d.layer,
                group=d.group,
                experts=d.experts,
                scores=d.scores,
                k=d.k,
                entropy=d.entropy,
            )
        )
    return message


def usage(prompt: int, completion: int, cached: int) -> pb.Usage:
    return pb.Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)


def sequence(view: TokenView, index: int, done: Generation) -> pb.Sequence:
    return pb.Sequence(
        index=index,
        text=done.text,
        tokens=[token(view, t) for t in done.tokens],
        finish_reason=_finish(done.finish),
        stop_sequence=done.stop_sequence or "",
    )


def response(
    view: TokenView,
    done: list[Generation],
    prompt_ids: list[int] | None = None,
    prompt_logprobs: int | None = None,
) -> pb.GenerateResponse:
    """The first sequence in the top-level fields (as before n existed); with n > 1 every
    sequence in `sequences`; the prompt's tokens when prompt_logprobs was asked for."""
    first = done[0]
    head = sequence(view, 0, first)
    message = pb.GenerateResponse(
        request_id=first.request_id,
        text=head.text,
        tokens=head.tokens,
        finish_reason=head.finish_reason,
        stop_sequence=head.stop_sequence,
        usage=usage(
            first.num_prompt_tokens, sum(len(g.tokens) for g in done), first.num_cached_tokens
        ),
    )
    if len(done) > 1:
        message.sequences.append(head)
        message.sequences.extend(sequence(view, i, g) for i, g in enumerate(done) if i > 0)
    if prompt_logprobs is not None and prompt_ids is not None:
        prompt = view.prompt_tokens(prompt_ids, first.prompt_logprobs, prompt_logprobs)
        message.prompt_tokens.extend(token(view, t) for t in prompt)
    return message


def stream_message(
    view: TokenView, out: RequestOutput, request_id: str, index: int = 0
) -> pb.GenerateStreamResponse:
    message = pb.GenerateStreamResponse(
        request_id=request_id,
        text=out.new_text,
        tokens=[token(view, t) for t in tokens_of(out)],
        finished=out.finished,
        index=index,
    )
    if out.finished:
        reason, stop = finish_of(out)
        message.finish_reason = FINISH[reason]
        message.stop_sequence = stop or ""
        message.usage.CopyFrom(
            usage(out.num_prompt_tokens, out.num_output_tokens, out.num_cached_tokens)
        )
    return message


def _finish(reason: Finish | None) -> pb.FinishReason:
    return FINISH[reason] if reason is not None else pb.FINISH_REASON_UNSPECIFIED


def model_info(
    info: ModelInfo, limits: Limits, max_concurrent: int, max_queue: int
) -> pb.ModelInfo:
    return pb.ModelInfo(
        model_id=info.model_id,
        model_type=info.model_type,
        router=info.router,
        vocab_size=info.vocab_size,
        num_layers=info.num_layers,
        num_experts=info.num_experts,
        num_groups=info.num_groups,
        max_model_len=info.max_model_len,
        max_input_tokens=limits.max_input_tokens,
        max_total_tokens=limits.max_total_tokens,
        max_concurrent_requests=max_concurrent,
        max_queue=max_queue,
        block_size=info.block_size,
        num_blocks=info.num_blocks,
        kv_cache_bytes_per_token=info.kv_cache_bytes_per_token,
        device=info.device,
        dtype=info.dtype,
    )
