"""Incremental detokenization with stop strings, safe for byte-level BPE and multi-byte UTF-8."""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass
from typing import Protocol

_REPLACEMENT = "\ufffd"


class SupportsDecode(Protocol):
    """What the detokenizer needs of a tokenizer (a Hugging Face `tokenizers.Tokenizer` fits)."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


@dataclass(slots=True, frozen=True)
class DetokenizerUpdate:
    """Newly visible text after one token; `stop` is the stop string that ended the text."""

    text: str
    stop: str | None = None


class IncrementalDetokenizer:
    """Turns output tokens into visible text deltas, one token at a time.

    Decodes a short window of recent tokens (the prefix_offset / read_offset technique of TGI
    and vLLM) and emits only text that does not end in an incomplete character, so the cost per
    token is O(1) amortised. Deltas are decoded from the output tokens alone: their concatenation
    plus `flush()` equals `tokenizer.decode(output_ids)` when no stop string fires.
    `prompt_token_ids` is kept for the engine's bookkeeping and does not affect the text.
    With skip_special_tokens, `special_token_ids` (exactly the ids the tokenizer's decode skips)
    are dropped as they arrive, so a run of them does not lengthen the decoded window.

    Stop strings are found across token boundaries. Text that could be the start of a stop
    string is held back until it is ruled out, so no part of a stop string is ever emitted; once
    one completes, the update carries it in `stop`, its `text` is what precedes it, and further
    appends raise RuntimeError.
    """

    def __init__(
        self,
        tokenizer: SupportsDecode,
        prompt_token_ids: list[int],
        stop: Sequence[str] = (),
        skip_special_tokens: bool = True,
        special_token_ids: Set[int] = frozenset(),
    ) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self.prompt_token_ids = list(prompt_token_ids)
        self._tokenizer = tokenizer
        self._stops = tuple(stop)
        self._max_hold = max((len(s) for s in self._stops), default=1) - 1
        self._skip_special_tokens = skip_special_tokens
        self._skipped = special_token_ids if skip_special_tokens else frozenset()
        self._ids: list[int] = []  # output tokens from the prefix offset on
        self._read_offset = 0  # self._ids[:read_offset] is already decoded as _prefix_text
        self._prefix_text = ""
        self._pending = ""
        self._output = ""
        self._stop: str | None = None
        self._closed = False

    @property
    def output_text(self) -> str:
        """All text made visible so far (never any part of a stop string)."""
        return self._output

    @property
    def stop_string(self) -> str | None:
        """The stop string that ended the text, or None."""
        return self._stop

    @property
    def finished(self) -> bool:
        """True once a stop string fired or `flush()` was called; `append` then raises."""
        return self._closed

    def append(self, token_id: int) -> DetokenizerUpdate:
        """Add one output token; return the newly visible text and the stop string if one fired.

        Raises RuntimeError after a stop string fired or after `flush()`.
        """
        if self._closed:
            raise RuntimeError("detokenizer is finished (stop string or flush); no more tokens")
        if token_id in self._skipped:  # no text, and kept out of the window so that it stays short
            return DetokenizerUpdate("")
        self._ids.append(token_id)
        self._pending += self._decode_step(final=False)
        return self._release(final=False)

    def flush(self) -> str:
        """Release everything held back (the request ended by length, EOS or abort) and finish.

        Incomplete trailing characters are released as the full decode renders them (U+FFFD).
        A stop string completed by the released text still cuts it (see `stop_string`).
        Calling it again returns "".
        """
        if self._closed:
            return ""
        self._pending += self._decode_step(final=True)
        text = self._release(final=True).text
        self._closed = True
        return text

    def _decode(self, start: int, end: int) -> str:
        return self._tokenizer.decode(
            self._ids[start:end], skip_special_tokens=self._skip_special_tokens
        )

    def _decode_step(self, final: bool) -> str:
        """Text of the tokens after read_offset, or "" while it ends in an incomplete character."""
        window = self._decode(0, len(self._ids))
        if len(window) <= len(self._prefix_text):
            return ""
        if window.endswith(_REPLACEMENT) and not final:
            return ""
        delta = window[len(self._prefix_text) :]
        del self._ids[: self._read_offset]
        self._read_offset = len(self._ids)
        self._prefix_text = self._decode(0, self._read_offset)
        return delta

    def _release(self, final: bool) -> DetokenizerUpdate:
        """Move pending text to the output, cut at the earliest stop string or held back."""
        hit = self._earliest_stop()
        if hit is not None:
            position, stop = hit
            text = self._pending[:position]
            self._pending = ""
            self._output += text
            self._stop = stop
            self._closed = True
            return DetokenizerUpdate(text, stop)
        cut = len(self._pending) - (0 if final else self._held_length())
        text, self._pending = self._pending[:cut], self._pending[cut:]
        self._output += text
        return DetokenizerUpdate(text)

    def _earliest_stop(self) -> tuple[int, str] | None:
        """(position, stop string) of the earliest stop in the pending text; ties: listed first."""
        best: tuple[int, str] | None = None
        for stop in self._stops:
            position = self._pending.find(stop)
            if position >= 0 and (best is None or position < best[0]):
                best = (position, stop)
        return best

    def _held_length(self) -> int:
        """Length of the longest pending suffix that is a proper prefix of some stop string."""
        for length in range(min(len(self._pending), self._max_hold), 0, -1):
            tail = self._pending[-length:]
            if any(stop.startswith(tail) for stop in self._stops):
                return length
        return 0
