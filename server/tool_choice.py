"""A chat request's `tool_choice` (vLLM's semantics): what constrains its output and how the
output becomes `message.tool_calls`. auto parses the text (--tool-call-parser); required and a
named function constrain it with a JSON schema (structured outputs), read back as calls."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from hagmoe.engine.structured_output import StructuredOutputs
from server.errors import InvalidInput
from server.tool_calls import HermesParser, ParsedText, Piece, ToolCall, parse_hermes
from server.tool_schemas import NamedToolChoice, ToolDefinition

Mode = Literal["off", "auto", "named", "required"]
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


def _parameters(tool: ToolDefinition) -> dict[str, Any]:
    return tool.function.parameters if tool.function.parameters is not None else NO_PARAMETERS


def required_schema(tools: list[ToolDefinition], parallel: bool) -> dict[str, Any]:
    """tool_choice required: a JSON array of {name, parameters}, one of the tools each."""
    one_of_each = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [tool.function.name]},
                "parameters": _parameters(tool),
            },
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": one_of_each}}
    if not parallel:
        schema["maxItems"] = 1
    return schema


@dataclass(slots=True)
class ToolPlan:
    """How one request reads its output. `name`: the named function's."""

    mode: Mode = "off"
    name: str = ""
    parallel: bool = True
    constraint: StructuredOutputs | None = None

    def parse(self, text: str) -> ParsedText:
        """A whole choice's text as content and calls."""
        if self.mode == "off":
            return ParsedText(text, [])
        if self.mode == "auto":
            parsed = parse_hermes(text)
            parsed.calls = self._kept(parsed.calls)
            return parsed
        if self.mode == "named":
            return ParsedText(None, [ToolCall(self.name, text)])
        return _required_calls(text)

    def finish_reason(self, reason: str | None, called: bool) -> str | None:
        """vLLM's: tool_calls once auto parsed a call, or required ended normally; a named
        function keeps the generation's (as OpenAI: stop)."""
        if reason is None or not called:
            return reason
        if self.mode == "auto" or (self.mode == "required" and reason == "stop"):
            return "tool_calls"
        return reason

    def stream(self) -> ToolStream:
        return ToolStream(self)

    def _kept(self, calls: list[ToolCall]) -> list[ToolCall]:
        return calls if self.parallel else calls[:1]


def _required_calls(text: str) -> ParsedText:
    """required's output: the JSON array of {name, parameters}; text when it does not parse
    (cut by max_tokens)."""
    try:
        items = json.loads(text)
    except ValueError:
        return ParsedText(text, [])
    if not isinstance(items, list):
        return ParsedText(text, [])
    calls: list[ToolCall] = []
    for item in items:
        if not (isinstance(item, dict) and isinstance(item.get("name"), str)):
            return ParsedText(text, [])
        arguments = json.dumps(item.get("parameters", {}), ensure_ascii=False)
        calls.append(ToolCall(item["name"], arguments))
    return ParsedText(None, calls)


@dataclass(slots=True)
class ToolStream:
    """One streamed choice: text deltas in, content and numbered calls out. auto streams
    content and each call when it closes; required and named give their calls at the end."""

    plan: ToolPlan
    called: int = 0
    _parser: HermesParser = field(default_factory=HermesParser)
    _held: list[str] = field(default_factory=list)

    def feed(self, text: str) -> tuple[str, list[tuple[int, ToolCall]]]:
        if self.plan.mode == "off":
            return text, []
        if self.plan.mode == "auto":
            return self._pieces(self._parser.feed(text))
        self._held.append(text)
        return "", []

    def finish(self) -> tuple[str, list[tuple[int, ToolCall]]]:
        """What the end of the text releases."""
        if self.plan.mode == "off":
            return "", []
        if self.plan.mode == "auto":
            return self._pieces(self._parser.finish())
        parsed = self.plan.parse("".join(self._held))
        self._held = []
        return self._pieces([parsed.content or "", *parsed.calls])

    def _pieces(self, pieces: list[Piece]) -> tuple[str, list[tuple[int, ToolCall]]]:
        text: list[str] = []
        calls: list[tuple[int, ToolCall]] = []
        for piece in pieces:
            if isinstance(piece, str):
                text.append(piece)
            elif self.plan.parallel or self.called == 0:
                calls.append((self.called, piece))
                self.called += 1
        return "".join(text), calls


def tool_plan(
    tools: list[ToolDefinition] | None,
    choice: Literal["none", "auto", "required"] | NamedToolChoice | None,
    parallel: bool,
    parser: str | None,
) -> ToolPlan:
    """The request's plan; InvalidInput naming tool_choice or tools for what cannot be."""
    if not tools:
        if choice not in (None, "none"):
            raise InvalidInput("tool_choice: needs `tools` (none were given)", "tool_choice")
        return ToolPlan()
    names = [tool.function.name for tool in tools]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InvalidInput(f"tools: function names must be unique, got {twice} twice", "tools")
    choice = choice or "auto"
    if choice == "none":
        return ToolPlan()
    if choice == "auto":
        if parser is None:
            raise InvalidInput(
                'tool_choice: "auto" needs the server started with --tool-call-parser '
                '(e.g. hermes); send "none", "required" or a named function',
                "tool_choice",
            )
        return ToolPlan("auto", parallel=parallel)
    if choice == "required":
        schema = required_schema(tools, parallel)
        return ToolPlan("required", parallel=parallel, constraint=StructuredOutputs(json=schema))
    assert isinstance(choice, NamedToolChoice)
    name = choice.function.name
    if name not in names:
        raise InvalidInput(
            f"tool_choice: the function `{name}` is not in tools ({', '.join(names)})",
            "tool_choice",
        )
    params = _parameters(tools[names.index(name)])
    return ToolPlan("named", name, parallel, StructuredOutputs(json=params))
