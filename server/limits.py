"""Per-request limits: prompt and total tokens, body size and the deadline ceiling."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from hagmoe.engine.client import ModelInfo
from server.errors import InvalidInput
from server.settings import Settings, SettingsError


@dataclass(frozen=True, slots=True)
class Limits:
    max_input_tokens: int
    max_total_tokens: int
    max_body_bytes: int
    request_timeout: float | None = None
    body_timeout: float | None = None  # seconds to receive a whole request body

    @classmethod
    def resolve(cls, settings: Settings, info: ModelInfo) -> Limits:
        """Fill defaults from the engine's max_model_len and check the numbers agree."""
        total = settings.max_total_tokens or info.max_model_len
        if not 2 <= total <= info.max_model_len:
            raise SettingsError(
                f"--max-total-tokens {total} must lie in [2, max_model_len={info.max_model_len}]"
            )
        max_input = settings.max_input_tokens or total - 1
        if not 1 <= max_input < total:
            raise SettingsError(
                f"--max-input-tokens {max_input} must lie in [1, max_total_tokens={total})"
            )
        return cls(
            max_input,
            total,
            settings.max_body_bytes,
            settings.request_timeout,
            settings.body_timeout,
        )

    def check(self, num_input: int, max_new_tokens: int) -> None:
        """Raise InvalidInput with the numbers when the prompt or the total is too long."""
        if num_input > self.max_input_tokens:
            raise InvalidInput(
                f"the prompt has {num_input} tokens; max_input_tokens is {self.max_input_tokens}",
                "inputs",
            )
        if num_input + max_new_tokens > self.max_total_tokens:
            raise InvalidInput(
                f"input tokens + max_new_tokens must be <= {self.max_total_tokens}; given "
                f"{num_input} input tokens and {max_new_tokens} max_new_tokens",
                "max_new_tokens",
            )

    def check_chars(self, num_chars: int, chars_per_token: int, field: str = "inputs") -> None:
        """Raise InvalidInput when a text of num_chars characters cannot fit in max_input_tokens
        tokens of at most chars_per_token characters each (0: no bound known)."""
        most = self.max_input_tokens * chars_per_token
        if chars_per_token and num_chars > most:
            raise InvalidInput(
                f"the prompt has {num_chars} characters, more than max_input_tokens="
                f"{self.max_input_tokens} tokens can hold (at most {most} characters)",
                field,
            )

    def room(self, num_input: int) -> int:
        """The most tokens a prompt of num_input tokens may still generate (at least 1)."""
        return max(1, self.max_total_tokens - num_input)

    def deadline(self, timeout: float | None) -> float | None:
        """time.monotonic() deadline of a request with this timeout (s) and the server ceiling."""
        if timeout is not None and (not math.isfinite(timeout) or timeout <= 0):
            raise InvalidInput(
                f"timeout must be a positive number of seconds, got {timeout}", "timeout"
            )
        bounds = [t for t in (timeout, self.request_timeout) if t is not None]
        return time.monotonic() + min(bounds) if bounds else None
