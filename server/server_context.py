"""What every frontend shares: the engine, the service, limits, metrics, keys and views."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hagmoe.engine.client import EngineClient, ModelInfo
from server.auth import KeyRing
from server.chat_template import ChatTemplate
from server.errors import InvalidInput
from server.lifecycle import Lifecycle
from server.limits import Limits
from server.metrics import Metrics
from server.prompt_text import check_encodable
from server.service import GenerationService
from server.settings import Settings
from server.token_view import TokenView

INLINE_ENCODE_CHARS = 4096  # shorter prompts are tokenized on the loop (a thread hop costs more)


@dataclass(slots=True)
class ServerContext:
    settings: Settings
    engine: EngineClient
    info: ModelInfo
    limits: Limits
    metrics: Metrics
    lifecycle: Lifecycle
    keys: KeyRing
    service: GenerationService
    view: TokenView
    chat: ChatTemplate
    created: int
    chars_per_token: int = 0  # prompt_text.chars_per_token of the tokenizer (0: no bound)

    def encode(
        self, text: str, add_special_tokens: bool = False, field: str = "inputs"
    ) -> list[int]:
        """Token ids of text, here and now (short texts: stop strings, bad words); InvalidInput
        naming `field` for text that is not valid Unicode."""
        tokenizer = self.engine.tokenizer
        if tokenizer is None:
            raise InvalidInput("the model has no tokenizer: send token ids instead", field)
        check_encodable(text, field)
        return tokenizer.encode(text, add_special_tokens=add_special_tokens)

    async def encode_prompt(
        self, text: str, field: str, add_special_tokens: bool = False, bounded: bool = True
    ) -> list[int]:
        """A prompt's token ids, tokenized off the event loop when long. With `bounded`, a
        text too long to fit max_input_tokens is refused (InvalidInput) before any encode."""
        if bounded:
            self.limits.check_chars(len(text), self.chars_per_token, field)
        if len(text) <= INLINE_ENCODE_CHARS:
            return self.encode(text, add_special_tokens, field)
        return await asyncio.to_thread(self.encode, text, add_special_tokens, field)

    def decode(self, ids: list[int]) -> str:
        tokenizer = self.engine.tokenizer
        if tokenizer is None:
            return ""
        return tokenizer.decode(ids)
