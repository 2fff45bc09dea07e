"""The prompt side of tool calling: a chat request's messages (calls, tool results) and tools
as the chat template's inputs. A template that uses `tools` gets them as HF's
apply_chat_template gives them; for any other, the Hermes format is written into the messages:
a system preamble listing the tools, calls as <tool_call> text, results as <tool_response>."""

from __future__ import annotations

import json
from typing import Any

from server.errors import InvalidInput
from server.openai_schemas import ChatMessage
from server.tool_calls import CLOSE, OPEN
from server.tool_schemas import MessageToolCall, ToolDefinition

HERMES_PREAMBLE = (
    "# Tools\n<tools>\n{tools}\n</tools>\n"
    "To call functions, answer with one JSON object per call in <tool_call></tool_call> tags:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def tool_dicts(tools: list[ToolDefinition] | None) -> list[dict[str, Any]] | None:
    """The tools as the template sees them: {type, function: {name, description?, ...}}."""
    if not tools:
        return None
    return [tool.model_dump(exclude_none=True) for tool in tools]


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The messages as the template sees them: text content ("" for none), an assistant's
    `tool_calls` with their arguments as objects (as HF templates expect), a tool message's
    `tool_call_id`."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        item: dict[str, Any] = {"role": message.role, "content": _text(message.content)}
        if message.tool_calls is not None:
            if message.role != "assistant":
                raise InvalidInput(
                    f"messages[{i}].tool_calls: only assistant messages make calls",
                    "messages",
                )
            item["tool_calls"] = [_call_dict(call) for call in message.tool_calls]
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        out.append(item)
    return out


def template_inputs(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, template_has_tools: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools) for the template: as they are when it uses `tools`, else with the
    Hermes format written in (and no tools)."""
    if template_has_tools:
        return messages, tools
    written = _hermes_messages(messages)
    if tools:
        listing = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
        preamble = HERMES_PREAMBLE.format(tools=listing)
        if written and written[0]["role"] == "system":
            head = written[0]
            written[0] = {**head, "content": f"{head['content']}\n\n{preamble}"}
        else:
            written.insert(0, {"role": "system", "content": preamble})
    return written, None


def _hermes_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Calls as <tool_call> text after the assistant's content; tool results as one user turn
    of <tool_response> blocks (consecutive results together)."""
    out: list[dict[str, Any]] = []
    results: list[str] = []
    for message in messages:
        if message["role"] == "tool":
            results.append(f"<tool_response>\n{message['content']}\n</tool_response>")
            continue
        if results:
            out.append({"role": "user", "content": "\n".join(results)})
            results = []
        calls = message.get("tool_calls")
        if calls:
            blocks = [_call_text(call["function"]) for call in calls]
            content = "\n".join([message["content"], *blocks] if message["content"] else blocks)
            message = {"role": message["role"], "content": content}
        out.append({"role": message["role"], "content": message["content"]})
    if results:
        out.append({"role": "user", "content": "\n".join(results)})
    return out


def _call_text(function: dict[str, Any]) -> str:
    body = json.dumps(
        {"name": function["name"], "arguments": function["arguments"]}, ensure_ascii=False
    )
    return f"{OPEN}\n{body}\n{CLOSE}"


def _call_dict(call: MessageToolCall) -> dict[str, Any]:
    """An earlier call, its arguments parsed when they are JSON (kept as text otherwise)."""
    try:
        arguments: Any = json.loads(call.function.arguments)
    except ValueError:
        arguments = call.function.arguments
    function = {"name": call.function.name, "arguments": arguments}
    return {"id": call.id, "type": "function", "function": function}


def _text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts: list[str] = []
    for part in content:
        if part.type != "text":
            raise InvalidInput(
                f"messages: content parts of type {part.type!r} are not supported; send text",
                "messages",
            )
        texts.append(part.text or "")
    return "".join(texts)
