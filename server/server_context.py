"""What every frontend shares: the engine, the service, limits, metrics, keys and views."""

from __future__ import annotations

from dataclasses import dataclass

from hagmoe.engine.client import EngineClient, ModelInfo
from server.auth import KeyRing
from server.chat_template import ChatTemplate
from server.errors import InvalidInput
from server.lifecycle import Lifecycle
from server.limits import Limits
from server.metrics import Metrics
from server.service import GenerationService
from server.settings import Settings
from server.token_view import TokenView


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

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        tokenizer = self.engine.tokenizer
        if tokenizer is None:
            raise InvalidInput("the model has no tokenizer: send token ids instead", "inputs")
        return tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: list[int]) -> str:
        tokenizer = self.engine.tokenizer
        if tokenizer is None:
            return ""
        return tokenizer.decode(ids)
