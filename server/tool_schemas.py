"""Bodies of OpenAI tool calling on /v1/chat/completions: the tools a request offers, its
`tool_choice`, the calls an assistant message made, and the calls an answer carries."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from server.tgi_schemas import STRICT_FORBID

FunctionName = Annotated[str, Field(min_length=1, max_length=64)]
MAX_TOOLS = 128


class FunctionDefinition(BaseModel):
    model_config = STRICT_FORBID

    name: FunctionName = Field(description="The function's name (1..64 characters).")
    description: str | None = Field(default=None, description="What the function does.")
    parameters: dict[str, Any] | None = Field(
        default=None, description="A JSON schema of its arguments (default: none)."
    )
    strict: bool | None = Field(
        default=None, description="Ignored: a forced call always follows `parameters`."
    )


class ToolDefinition(BaseModel):
    model_config = STRICT_FORBID

    type: Literal["function"] = Field(description="Only function tools.")
    function: FunctionDefinition = Field(description="The function the model may call.")


class NamedFunction(BaseModel):
    model_config = STRICT_FORBID

    name: FunctionName = Field(description="A function of `tools`.")


class NamedToolChoice(BaseModel):
    model_config = STRICT_FORBID

    type: Literal["function"] = Field(description="Only function tools.")
    function: NamedFunction = Field(description="The function to call.")


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
Tools = Annotated[list[ToolDefinition], Field(max_length=MAX_TOOLS)]


class FunctionCall(BaseModel):
    model_config = STRICT_FORBID

    name: FunctionName = Field(description="The function called.")
    arguments: str = Field(description="Its arguments, a JSON object as text.")


class MessageToolCall(BaseModel):
    """A call an earlier assistant message made (in `messages`)."""

    model_config = STRICT_FORBID

    id: str = Field(description="The call's id (a tool message's tool_call_id answers it).")
    type: Literal["function"] = Field(description="Only function calls.")
    function: FunctionCall = Field(description="The function and its arguments.")


class ResponseToolCall(BaseModel):
    """A call in an answer: `message.tool_calls` (stream chunks add `index`)."""

    id: str = Field(description="call_<24 letters and digits>.")
    type: Literal["function"] = Field(default="function", description="Always function.")
    function: FunctionCall = Field(description="The function and its arguments (JSON text).")
