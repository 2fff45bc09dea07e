"""Tool calls in generated text: the Hermes format (vLLM's `--tool-call-parser hermes`),
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, read whole or as it streams."""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
PARSERS = ("hermes",)  # --tool-call-parser
ID_ALPHABET = string.ascii_letters + string.digits
ID_LENGTH = 24


def call_id() -> str:
    """call_<24 random letters and digits>, as OpenAI's ids look."""
    return "call_" + "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


@dataclass(slots=True)
class ToolCall:
    """One function call: its name and its arguments as JSON text."""

    name: str
    arguments: str
    id: str = field(default_factory=call_id)

    def to_json(self) -> dict[str, Any]:
        """The call in OpenAI's `message.tool_calls` shape."""
        function = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": function}

    def delta(self, index: int) -> dict[str, Any]:
        """The whole call as one streamed `delta.tool_calls` entry."""
        return {"index": index, **self.to_json()}


Piece = str | ToolCall  # text outside the calls, or a call


@dataclass(slots=True)
class ParsedText:
    """Generated text read for tool calls: the text outside them (None when blank and calls
    were made) and the calls, in order."""

    content: str | None
    calls: list[ToolCall]

    @classmethod
    def of(cls, pieces: list[Piece]) -> ParsedText:
        text = "".join(p for p in pieces if isinstance(p, str))
        calls = [p for p in pieces if isinstance(p, ToolCall)]
        return cls(None if calls and not text.strip() else text, calls)


def hermes_call(body: str) -> ToolCall | None:
    """The call a block's JSON holds: an object with a non-empty string `name` and an object
    `arguments`; None for anything else (malformed JSON stays text)."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    name, arguments = value.get("name"), value.get("arguments")
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        return None
    return ToolCall(name, json.dumps(arguments, ensure_ascii=False))


def _partial_open(text: str) -> int:
    """The length of text's longest suffix that may start an OPEN tag."""
    for k in range(min(len(text), len(OPEN) - 1), 0, -1):
        if OPEN.startswith(text[-k:]):
            return k
    return 0


@dataclass(slots=True)
class HermesParser:
    """Reads text as it arrives: text outside calls comes out as soon as it cannot be the start
    of a `<tool_call>` tag, a call when its closing tag arrives (or at the end, when its JSON is
    complete). A block whose JSON is not a call comes out as text, tags included."""

    _buffer: str = ""
    _inside: bool = False

    def feed(self, text: str) -> list[Piece]:
        self._buffer += text
        pieces: list[Piece] = []
        while True:
            if self._inside:
                end = self._buffer.find(CLOSE)
                if end < 0:
                    break
                body, self._buffer = self._buffer[:end], self._buffer[end + len(CLOSE) :]
                self._inside = False
                pieces.append(hermes_call(body) or OPEN + body + CLOSE)
                continue
            start = self._buffer.find(OPEN)
            if start < 0:
                cut = len(self._buffer) - _partial_open(self._buffer)
                if cut:
                    pieces.append(self._buffer[:cut])
                    self._buffer = self._buffer[cut:]
                break
            if start:
                pieces.append(self._buffer[:start])
            self._buffer = self._buffer[start + len(OPEN) :]
            self._inside = True
        return _joined(pieces)

    def finish(self) -> list[Piece]:
        """What is left when the text ends: an unclosed call (whole JSON) or text."""
        rest, inside = self._buffer, self._inside
        self._buffer, self._inside = "", False
        if not inside:
            return [rest] if rest else []
        return [hermes_call(rest) or OPEN + rest]


def _joined(pieces: list[Piece]) -> list[Piece]:
    """Adjacent texts as one."""
    out: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, str) and out and isinstance(out[-1], str):
            out[-1] += piece
        elif piece != "":
            out.append(piece)
    return out


def parse_hermes(text: str) -> ParsedText:
    """All the calls of a whole text (what streaming it through HermesParser gives)."""
    parser = HermesParser()
    return ParsedText.of(_joined(parser.feed(text) + parser.finish()))
