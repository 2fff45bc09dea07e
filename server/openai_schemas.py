"""Bodies of the OpenAI-compatible routes (/v1/completions, /v1/chat/completions, /v1/models).

A key the server does not implement is refused by name (400), except the harmless ones listed
in IGNORED_FIELDS (declared, accepted and ignored); hagmoe's and vLLM's extensions are marked.
Request bodies are strict (no coercion: `"4"` is not an int, `"yes"` not a bool; an int is a
float) and carry the limits the engine enforces, so the OpenAPI schema says what is refused."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from server.tgi_schemas import (
    MAX_LOGPROBS,
    MAX_STOP,
    STRICT_FORBID,
    STRICT_IGNORE,
    NonEmptyStr,
    RoutingEntry,
    TokenId,
)
from server.tool_schemas import (
    MessageToolCall,
    ResponseToolCall,
    ToolChoice,
    Tools,
)

PromptIds = Annotated[list[TokenId], Field(min_length=1)]
MAX_N = 128  # n and best_of
IGNORED_FIELDS = ("user", "metadata", "service_tier", "store")  # and a message's `name`
MAX_PROMPTS = 256  # prompts in one /v1/completions batch


class StreamOptions(BaseModel):
    model_config = STRICT_FORBID

    include_usage: bool = Field(
        default=False, description="Send a last chunk with usage before [DONE]."
    )


class JsonSchemaFormat(BaseModel):
    model_config = STRICT_FORBID

    name: str = Field(default="response", description="The schema's name.")
    json_schema: dict[str, Any] = Field(alias="schema", description="The JSON schema to match.")
    description: str | None = Field(default=None, description="Ignored.")
    strict: bool | None = Field(default=None, description="Ignored: the schema is always enforced.")


class ResponseFormat(BaseModel):
    model_config = STRICT_FORBID

    type: Literal["text", "json_object", "json_schema"] = Field(
        description="text (free), json_object (any JSON object) or json_schema."
    )
    json_schema: JsonSchemaFormat | None = Field(
        default=None, description="With type json_schema: {name, schema, strict}."
    )


class StructuredOutputsFields(BaseModel):
    """vLLM's `structured_outputs`: set exactly one."""

    model_config = STRICT_FORBID

    json_: dict[str, Any] | str | None = Field(
        default=None, alias="json", description="A JSON schema (object or text)."
    )
    regex: str | None = Field(default=None, description="A regular expression.")
    choice: Annotated[list[str], Field(min_length=1)] | None = Field(
        default=None, description="One of these strings."
    )
    grammar: str | None = Field(default=None, description="A Lark grammar.")
    json_object: bool | None = Field(default=None, description="Any JSON object.")


class SamplingFields(BaseModel):
    """Fields both OpenAI routes share."""

    model_config = STRICT_FORBID

    model: str | None = Field(
        default=None, description="The served model name (see GET /v1/models); default: it."
    )
    temperature: float | None = Field(
        default=None, ge=0, description="Softmax temperature (default 1; 0 = greedy)."
    )
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus mass in (0, 1].")
    n: int = Field(
        default=1, ge=1, le=MAX_N, description="Choices per prompt (one prefill for all)."
    )
    stream: bool = Field(default=False, description="Answer with server-sent events ending [DONE].")
    stream_options: StreamOptions | None = Field(default=None, description="Streaming options.")
    stop: NonEmptyStr | Annotated[list[NonEmptyStr], Field(max_length=MAX_STOP)] | None = Field(
        default=None, description="Stop string(s), at most 16."
    )
    presence_penalty: float | None = Field(default=None, ge=-2, le=2, description="In [-2, 2].")
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2, description="In [-2, 2].")
    seed: int | None = Field(
        default=None, ge=0, lt=2**63, description="Random seed of this request."
    )
    logit_bias: dict[str, float] | None = Field(
        default=None, description="Token id (a string of digits) -> bias in [-100, 100]."
    )
    response_format: ResponseFormat | None = Field(
        default=None, description="text, json_object, or json_schema {name, schema, strict}."
    )
    user: str | None = Field(default=None, description="Accepted and ignored.")
    metadata: dict[str, str] | None = Field(default=None, description="Accepted and ignored.")
    service_tier: str | None = Field(default=None, description="Accepted and ignored.")
    store: bool | None = Field(default=None, description="Accepted and ignored.")
    top_k: int | None = Field(
        default=None, ge=0, description="hagmoe: keep the k most likely tokens (0 = off)."
    )
    repetition_penalty: float | None = Field(
        default=None, gt=0, description="hagmoe: CTRL penalty (1 = off)."
    )
    min_tokens: int | None = Field(
        default=None, ge=0, description="hagmoe: fewest tokens before EOS."
    )
    ignore_eos: bool = Field(
        default=False, description="hagmoe: keep generating past end-of-sequence."
    )
    min_p: float | None = Field(
        default=None, ge=0, le=1, description="vLLM: drop tokens below min_p x the top one's."
    )
    stop_token_ids: list[TokenId] | None = Field(
        default=None, description="vLLM: token ids that end the generation."
    )
    allowed_token_ids: list[TokenId] | None = Field(
        default=None, description="vLLM: generate only these token ids."
    )
    bad_words: list[NonEmptyStr] | None = Field(
        default=None, description="vLLM: strings never generated (tokenized as given)."
    )
    prompt_logprobs: int | None = Field(
        default=None,
        ge=0,
        le=MAX_LOGPROBS,
        description="vLLM: each prompt token's logprob and this many alternatives (0..20).",
    )
    structured_outputs: StructuredOutputsFields | None = Field(
        default=None, description="vLLM: {json | regex | choice | grammar | json_object}."
    )
    guided_json: dict[str, Any] | str | None = Field(
        default=None, description="vLLM (legacy): a JSON schema."
    )
    guided_regex: str | None = Field(default=None, description="vLLM (legacy): a regex.")
    guided_choice: Annotated[list[str], Field(min_length=1)] | None = Field(
        default=None, description="vLLM (legacy): one of these strings."
    )
    guided_grammar: str | None = Field(default=None, description="vLLM (legacy): a Lark grammar.")
    priority: int = Field(
        default=0,
        ge=-(2**31),
        lt=2**31,
        description="vLLM: lower runs first (needs --scheduling-policy priority).",
    )
    truncate_prompt_tokens: int | None = Field(
        default=None, ge=1, description="vLLM: keep only the prompt's last this many tokens."
    )
    return_routing: bool = Field(
        default=False, description="hagmoe: each token's routing per layer."
    )
    timeout: float | None = Field(
        default=None, gt=0, description="hagmoe: seconds until the request ends (504)."
    )


class CompletionRequest(SamplingFields):
    prompt: (
        NonEmptyStr
        | PromptIds
        | Annotated[list[NonEmptyStr], Field(min_length=1, max_length=MAX_PROMPTS)]
        | Annotated[list[PromptIds], Field(min_length=1, max_length=MAX_PROMPTS)]
    ) = Field(description="Text or token ids, or a list of either (a batch).")
    max_tokens: int | None = Field(
        default=16,
        ge=0,
        description="Most tokens to generate (default 16; 0 with echo: score the prompt only).",
    )
    echo: bool = Field(
        default=False, description="Prepend the prompt to the text (and its logprobs to logprobs)."
    )
    logprobs: int | None = Field(
        default=None,
        ge=0,
        le=MAX_LOGPROBS,
        description="Alternatives per token (0..20) with logprobs.",
    )
    best_of: int | None = Field(
        default=None,
        ge=1,
        le=MAX_N,
        description="Sequences per prompt, of which the n with the highest cumulative logprob "
        "are returned (>= n; not with stream).",
    )
    suffix: str | None = Field(default=None, description="Not supported.")


class ContentPart(BaseModel):
    model_config = STRICT_IGNORE  # a part's other keys belong to kinds refused by `type`

    type: str = Field(description="Only `text` parts are supported.")
    text: str | None = Field(default=None, description="The text of a text part.")


class ChatMessage(BaseModel):
    model_config = STRICT_FORBID

    role: str = Field(description="system, user, assistant, tool (or any role the template knows).")
    content: str | list[ContentPart] | None = Field(default=None, description="Text or text parts.")
    name: str | None = Field(default=None, description="Ignored.")
    tool_calls: list[MessageToolCall] | None = Field(
        default=None, description="An assistant message's calls (its content may be null)."
    )
    tool_call_id: str | None = Field(
        default=None, description="A tool message: the id of the call it answers."
    )


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(description="The conversation so far.")
    max_tokens: int | None = Field(
        default=None, ge=1, description="Most tokens (default: all that fit)."
    )
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="Alias of max_tokens."
    )
    logprobs: bool = Field(default=False, description="Return each token's logprob.")
    top_logprobs: int | None = Field(
        default=None, ge=0, le=MAX_LOGPROBS, description="Alternatives per token (0..20)."
    )
    tools: Tools | None = Field(
        default=None, description="Functions the model may call (at most 128)."
    )
    tool_choice: ToolChoice | None = Field(
        default=None,
        description="none, auto (needs --tool-call-parser), required, or "
        "{type: function, function: {name}}; default: auto with tools, else none.",
    )
    parallel_tool_calls: bool = Field(
        default=True, description="false: at most one tool call per choice."
    )
    add_generation_prompt: bool = Field(
        default=True, description="vLLM: end with the assistant's turn."
    )
    continue_final_message: bool = Field(
        default=False,
        description="vLLM: the prompt ends inside the last (assistant) message, to continue it "
        "(set add_generation_prompt false).",
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        default=None, description="vLLM: more variables for the chat template."
    )


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="Prompt tokens served from the prefix cache.")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens in the prompt.")
    completion_tokens: int = Field(description="Tokens generated.")
    total_tokens: int = Field(description="prompt_tokens + completion_tokens.")
    prompt_tokens_details: PromptTokensDetails = Field(description="Prompt token breakdown.")


class PromptLogprob(BaseModel):
    logprob: float = Field(description="The token's log probability.")
    rank: int | None = Field(default=None, description="1 = most likely; null when not in top.")
    decoded_token: str = Field(description="The token's string.")


PromptLogprobs = list[dict[str, PromptLogprob] | None]
PROMPT_LOGPROBS_DOC = (
    "vLLM (prompt_logprobs): per prompt token, null for the first, else token id (string) -> "
    "{logprob, rank, decoded_token} for the prompt's token and its top alternatives."
)


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(description="Each token's string (echo: the prompt's first).")
    token_logprobs: list[float | None] = Field(
        description="Each token's logprob (null for the prompt's first)."
    )
    top_logprobs: list[dict[str, float]] | None = Field(description="Alternatives per token.")
    text_offset: list[int] = Field(description="Each token's offset in the text.")


ROUTING_DOC = "hagmoe (return_routing): routing per generated token, per layer."


class CompletionChoice(BaseModel):
    index: int = Field(description="prompt index x n + choice (a batch's choices in order).")
    text: str = Field(description="The completion (a chunk's new text when streaming).")
    logprobs: CompletionLogprobs | None = Field(default=None, description="With `logprobs`.")
    finish_reason: Literal["stop", "length"] | None = Field(
        description="stop (EOS or stop string), length, or null while streaming."
    )
    routing: list[list[RoutingEntry]] | None = Field(default=None, description=ROUTING_DOC)
    prompt_logprobs: PromptLogprobs | None = Field(default=None, description=PROMPT_LOGPROBS_DOC)


class CompletionResponse(BaseModel):
    id: str = Field(description="cmpl-<request id>.")
    object: Literal["text_completion"] = Field(default="text_completion", description="Kind.")
    created: int = Field(description="Unix time of the answer.")
    model: str = Field(description="The served model name.")
    choices: list[CompletionChoice] = Field(description="n choices per prompt.")
    usage: Usage | None = Field(default=None, description="Token counts.")


class TopLogprob(BaseModel):
    token: str = Field(description="The token's string.")
    logprob: float = Field(description="Its log probability.")
    bytes: list[int] | None = Field(description="UTF-8 bytes of the token string.")


class TokenLogprobEntry(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(description="The most likely alternatives.")


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobEntry] | None = Field(description="Per generated token.")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = Field(default="assistant", description="Always assistant.")
    content: str | None = Field(default=None, description="The answer (null: only calls).")
    tool_calls: list[ResponseToolCall] | None = Field(
        default=None, description="The tools the model called."
    )


class ChatChoice(BaseModel):
    index: int = Field(description="The choice, 0..n-1.")
    message: AssistantMessage = Field(description="The answer (`delta` in stream chunks).")
    logprobs: ChoiceLogprobs | None = Field(default=None, description="With `logprobs`.")
    finish_reason: Literal["stop", "length", "tool_calls"] | None = Field(
        description="stop (EOS or stop string), length, tool_calls, or null while streaming."
    )
    routing: list[list[RoutingEntry]] | None = Field(default=None, description=ROUTING_DOC)


class ChatCompletionResponse(BaseModel):
    id: str = Field(description="chatcmpl-<request id>.")
    object: Literal["chat.completion"] = Field(default="chat.completion", description="Kind.")
    created: int = Field(description="Unix time of the answer.")
    model: str = Field(description="The served model name.")
    choices: list[ChatChoice] = Field(description="n choices.")
    usage: Usage = Field(description="Token counts.")
    prompt_logprobs: PromptLogprobs | None = Field(default=None, description=PROMPT_LOGPROBS_DOC)


class ModelCard(BaseModel):
    id: str = Field(description="The served model name.")
    object: Literal["model"] = Field(default="model", description="Kind.")
    created: int = Field(description="Unix time the server started.")
    owned_by: str = Field(default="hagmoe", description="Always hagmoe.")
    max_model_len: int = Field(description="Longest prompt + completion in tokens.")


class ModelList(BaseModel):
    object: Literal["list"] = Field(default="list", description="Kind.")
    data: list[ModelCard] = Field(description="The one served model.")


class OpenAIErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, with the limit or the value.")
    type: str = Field(description="invalid_request_error, authentication_error, ...")
    param: str | None = Field(description="The offending field, when one is.")
    code: str | None = Field(description="hagmoe's error kind (validation, timeout, ...).")


class OpenAIError(BaseModel):
    """The error shape of the /v1 routes."""

    error: OpenAIErrorDetail = Field(description="The error.")
