"""How a generated token is shown: its string, special flag, logprobs and routing as JSON."""

from __future__ import annotations

from typing import Any

from hagmoe.engine.outputs import LayerDecision
from hagmoe.model.tokenizer import Tokenizer
from server.generation import GeneratedToken


class TokenView:
    """Token strings from the tokenizer (ids when the model has none)."""

    def __init__(self, tokenizer: Tokenizer | None) -> None:
        self.tokenizer = tokenizer
        self._specials = tokenizer.special_token_ids if tokenizer is not None else frozenset()

    def piece(self, token_id: int) -> str:
        """The token's own text (special tokens by name)."""
        if self.tokenizer is None:
            return f"<{token_id}>"
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def special(self, token_id: int) -> bool:
        return token_id in self._specials

    def tgi_token(self, token: GeneratedToken) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": token.id,
            "text": token.text,
            "logprob": token.logprob.logprob if token.logprob is not None else None,
            "special": self.special(token.id),
        }
        if token.routing is not None:
            entry["routing"] = routing_json(token.routing)
        return entry

    def tgi_top_tokens(self, token: GeneratedToken) -> list[dict[str, Any]]:
        if token.logprob is None:
            return []
        return [
            {"id": i, "text": self.piece(i), "logprob": lp, "special": self.special(i)}
            for i, lp in token.logprob.top.items()
        ]

    def openai_entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        text = self.piece(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    def chat_logprob(self, token: GeneratedToken) -> dict[str, Any]:
        assert token.logprob is not None
        entry = self.openai_entry(token.id, token.logprob.logprob)
        entry["top_logprobs"] = [self.openai_entry(i, lp) for i, lp in token.logprob.top.items()]
        return entry


def routing_json(decisions: list[LayerDecision]) -> list[dict[str, Any]]:
    return [
        {
            "layer": d.layer,
            "group": d.group,
            "experts": list(d.experts),
            "scores": [float(s) for s in d.scores],
            "k": d.k,
            "entropy": float(d.entropy),
        }
        for d in decisions
    ]
