"""How a generated token is shown: its string, special flag, logprobs and routing as JSON."""

from __future__ import annotations

from typing import Any

from hagmoe.engine.outputs import LayerDecision
from hagmoe.engine.request import TokenLogprob
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

    def tgi_prefill(
        self, prompt_ids: list[int], entries: list[TokenLogprob | None] | None
    ) -> list[dict[str, Any]]:
        """TGI's details.prefill: each prompt token's id, string and logprob (null first)."""
        logprobs = [e.logprob if e is not None else None for e in entries or []]
        logprobs += [None] * (len(prompt_ids) - len(logprobs))
        return [
            {"id": t, "text": self.piece(t), "logprob": lp}
            for t, lp in zip(prompt_ids, logprobs, strict=False)
        ]

    def prompt_tokens(
        self, prompt_ids: list[int], entries: list[TokenLogprob | None] | None, top: int
    ) -> list[GeneratedToken]:
        """The prompt as generated tokens (echo with logprobs), keeping `top` alternatives."""
        found = list(entries or []) + [None] * len(prompt_ids)
        return [
            GeneratedToken(t, self.piece(t), _keep_top(found[i], top), None)
            for i, t in enumerate(prompt_ids)
        ]

    def vllm_prompt_logprobs(
        self, entries: list[TokenLogprob | None] | None, top: int
    ) -> list[dict[str, Any] | None]:
        """vLLM's prompt_logprobs: null for the first token, else token id (a string) ->
        {logprob, rank (1 = most likely; null outside the top), decoded_token}."""
        kept = [_keep_top(e, top) for e in entries or []]
        return [None if e is None else self._vllm_entry(e) for e in kept]

    def _vllm_entry(self, entry: TokenLogprob) -> dict[str, Any]:
        ranked = sorted(entry.top.items(), key=lambda item: -item[1])
        rank = {token: r for r, (token, _) in enumerate(ranked, start=1)}
        chosen = [(entry.token_id, entry.logprob)]
        return {
            str(token): {"logprob": lp, "rank": rank.get(token), "decoded_token": self.piece(token)}
            for token, lp in chosen + [kv for kv in ranked if kv[0] != entry.token_id]
        }


def _keep_top(entry: TokenLogprob | None, top: int) -> TokenLogprob | None:
    if entry is None:
        return None
    kept = dict(sorted(entry.top.items(), key=lambda item: -item[1])[:top])
    return TokenLogprob(entry.token_id, entry.logprob, kept)


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
