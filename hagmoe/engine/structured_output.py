"""Structured outputs (vLLM's `structured_outputs`, OpenAI's `response_format`, TGI's
`grammar`) through llguidance: a grammar compiled once per spec, on the caller's thread; one
matcher per request that the accepted tokens advance (the bitmask is applied in
logits_processors.py).

llguidance, over xgrammar: it builds its tokenizer straight from our `tokenizers` JSON (no
transformers, no download), needs no torch build of its own, and computes a mask in tens of
microseconds with no per-schema precompute over the vocabulary (docs/architecture.md).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hagmoe.engine.errors import InvalidRequestError

if TYPE_CHECKING:
    import llguidance
    from llguidance._lib import JsonCompileOptions

    from hagmoe.model.tokenizer import Tokenizer

EBNF_RULE = re.compile(r"^\s*[A-Za-z_][\w-]*\s*::=", re.MULTILINE)  # a GBNF rule
KINDS = ("json", "json_object", "regex", "choice", "grammar")
# JSON as `json.dumps` writes it: ", " and ": ", no other whitespace (a model cannot stall in
# an endless run of blanks, as flexible whitespace lets it)
JSON_LAYOUT: JsonCompileOptions = {
    "item_separator": ", ",
    "key_separator": ": ",
    "whitespace_flexible": False,
}


@dataclass(slots=True, frozen=True)
class StructuredOutputs:
    """Exactly one constraint: a JSON schema (text or object), any JSON object, a regex, one of
    the `choice` strings, or a grammar: Lark (llguidance's) or EBNF (GBNF, `root ::= ...`)."""

    json: str | dict[str, Any] | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] = field(default_factory=tuple)
    grammar: str | None = None

    def kind(self) -> str:
        """The one constraint set; InvalidRequestError unless exactly one is."""
        set_kinds = [k for k in KINDS if getattr(self, k) not in (None, False, ())]
        if len(set_kinds) != 1:
            raise InvalidRequestError(
                "structured_outputs", f"set exactly one of {list(KINDS)}, got {set_kinds}"
            )
        return set_kinds[0]

    def key(self) -> str:
        """A cache key: equal for equal constraints."""
        value = getattr(self, self.kind())
        return f"{self.kind()}:{json.dumps(value, sort_keys=True)}"


class GrammarCompiler:
    """Compiles constraints against one tokenizer and caches them by spec (thread-safe)."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_id: int | None) -> None:
        import llguidance

        spec = tokenizer.hf_json()
        if spec is None:
            raise InvalidRequestError(
                "structured_outputs", "needs a tokenizer.json tokenizer (this model has none)"
            )
        eos = [eos_token_id] if eos_token_id is not None else None
        self._tokenizer = llguidance.LLTokenizer(spec, n_vocab=vocab_size, eos_token=eos)
        self._grammars: dict[str, str] = {}
        self._lock = threading.Lock()

    def matcher(self, spec: StructuredOutputs) -> llguidance.LLMatcher:
        """A fresh matcher at the start of the grammar; InvalidRequestError naming the problem
        when the library cannot compile it."""
        import llguidance

        grammar = self._compiled(spec)
        matcher = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidRequestError("structured_outputs", f"{spec.kind()}: {matcher.get_error()}")
        return matcher

    def _compiled(self, spec: StructuredOutputs) -> str:
        key = spec.key()
        with self._lock:
            cached = self._grammars.get(key)
        if cached is not None:
            return cached
        grammar = _grammar(spec)
        error = _validate(grammar, self._tokenizer)
        if error:
            raise InvalidRequestError("structured_outputs", f"{spec.kind()}: {error}")
        with self._lock:
            self._grammars[key] = grammar
        return grammar


def _grammar(spec: StructuredOutputs) -> str:
    import llguidance

    kind = spec.kind()
    try:
        if kind == "json":
            schema = spec.json if isinstance(spec.json, dict) else json.loads(spec.json or "")
            return llguidance.LLMatcher.grammar_from_json_schema(schema, JSON_LAYOUT)
        if kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, JSON_LAYOUT)
        if kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(spec.regex or "")
        if kind == "choice":
            pattern = "|".join(_regex_escape(c) for c in spec.choice)
            return llguidance.LLMatcher.grammar_from_regex(pattern)
        return llguidance.LLMatcher.grammar_from_lark(_lark(spec.grammar or ""))
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError("structured_outputs", f"{kind}: {exc}") from exc


def _lark(grammar: str) -> str:
    """A Lark grammar as it is; an EBNF one (GBNF, `root ::= ...`, as vLLM's xgrammar
    takes) converted to Lark."""
    from llguidance.gbnf_to_lark import gbnf_to_lark

    if not EBNF_RULE.search(grammar):
        return grammar
    try:
        return gbnf_to_lark(grammar)
    except Exception as exc:  # the converter raises bare Exception too (an undefined rule)
        raise ValueError(f"EBNF: {exc}") from exc


def _validate(grammar: str, tokenizer: llguidance.LLTokenizer) -> str:
    import llguidance

    message = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
    return "" if message.startswith("WARNING") else message


def _regex_escape(text: str) -> str:
    return "".join("\\" + c if c in r".^$*+?()[]{}|\/" else c for c in text)
