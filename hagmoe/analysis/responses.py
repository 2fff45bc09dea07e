"""Routing records from server responses asked with `return_routing` (one JSON body a line).

Shapes read (docs/api.md): a TGI body `{"details": {"tokens": [{id, text, routing}],
"input_length"}}`, a TGI stream event `{"token": {id, text, routing}}`, an OpenAI completion or
chat body (or stream chunk) `{"choices": [{"routing": [[entry per layer] per token],
"logprobs"?}], "usage"?}`, and a gRPC GenerateResponse as JSON `{"tokens": [{id, text,
routing}], "usage"?}`. A routing entry is `{layer, group, experts, scores, k, entropy}`.
Positions count from the prompt length where the body gives it (TGI `input_length`, OpenAI
and gRPC `usage.prompt_tokens`), else from 0. The coarse-vs-fine divergence is not in
responses, so it is n/a; OpenAI bodies name their tokens only with `logprobs`.

Legend: T tokens, K max experts per token.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hagmoe.analysis.records import LayerRecords, RoutingRecords, router_sizes
from hagmoe.evaluation.text_data import EvalDataError
from hagmoe.model.config import ModelConfig


@dataclass(slots=True)
class _Token:
    """One generated token of a response: its text (None: unknown), position, routing."""

    text: str | None
    position: int
    routing: list[dict[str, Any]]


def _prompt_length(body: dict[str, Any]) -> int:
    details = body.get("details")
    if isinstance(details, dict) and isinstance(details.get("input_length"), int):
        return int(details["input_length"])
    usage = body.get("usage")
    if isinstance(usage, dict):
        for key in ("prompt_tokens", "promptTokens"):
            if isinstance(usage.get(key), int):
                return int(usage[key])
    return 0


def _token_text(token: dict[str, Any]) -> str | None:
    text = token.get("text")
    if isinstance(text, str) and text:
        return text
    return f"<{token['id']}>" if isinstance(token.get("id"), int) else None


def _from_token_list(tokens: list[Any], start: int) -> list[_Token]:
    return [
        _Token(_token_text(t), start + n, list(t.get("routing") or []))
        for n, t in enumerate(tokens)
        if isinstance(t, dict)
    ]


def _from_choice(choice: dict[str, Any], start: int) -> list[_Token]:
    logprobs = choice.get("logprobs")
    names: list[str | None] = []
    if isinstance(logprobs, dict) and isinstance(logprobs.get("tokens"), list):
        names = [str(t) for t in logprobs["tokens"]]  # completions
    elif isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
        names = [str(c.get("token", "")) for c in logprobs["content"]]  # chat
    routing = choice.get("routing") or []
    return [
        _Token(names[n] if n < len(names) else None, start + n, list(r))
        for n, r in enumerate(routing)
    ]


def tokens_of_body(body: Any) -> list[_Token]:
    """The generated tokens of one response body (shapes in the module docstring); [] when it
    carries no routing."""
    if not isinstance(body, dict):
        return []
    start = _prompt_length(body)
    details = body.get("details")
    if isinstance(details, dict) and isinstance(details.get("tokens"), list):
        return _from_token_list(details["tokens"], start)
    if isinstance(body.get("token"), dict):
        return _from_token_list([body["token"]], start + int(body.get("index", 0) or 0))
    if isinstance(body.get("tokens"), list):
        return _from_token_list(body["tokens"], start)
    out: list[_Token] = []
    for choice in body.get("choices") or []:
        if isinstance(choice, dict):
            out += _from_choice(choice, start)
    return out


def _read(path: Path) -> list[_Token]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalDataError(f"cannot read responses file {path}: {exc}") from exc
    tokens: list[_Token] = []
    for n, line in enumerate(lines, start=1):
        line = line.strip().removeprefix("data:").strip()
        if not line or line == "[DONE]":
            continue
        try:
            tokens += tokens_of_body(json.loads(line))
        except (json.JSONDecodeError, TypeError, ValueError, KeyError) as exc:
            raise EvalDataError(f"{path}:{n}: not a response body: {exc}") from exc
    return [t for t in tokens if t.routing]


def _layer(tokens: list[_Token], layer: int, width: int) -> LayerRecords:
    experts = np.full((len(tokens), width), -1, dtype=np.int64)  # [T, K]
    k = np.zeros(len(tokens), dtype=np.int64)  # [T]
    group = np.full(len(tokens), -1, dtype=np.int64)  # [T]
    entropy = np.zeros(len(tokens), dtype=np.float64)  # [T]
    for row, token in enumerate(tokens):
        entry = token.routing[layer]
        chosen = [int(e) for e in entry["experts"]][:width]
        experts[row, : len(chosen)] = chosen
        k[row] = int(entry.get("k", len(chosen)))
        group[row] = int(entry.get("group", -1))
        entropy[row] = float(entry.get("entropy", 0.0))
    return LayerRecords(experts=experts, k=k, group=group, entropy=entropy)


def collect_from_responses(
    paths: Sequence[str | Path], config: ModelConfig | None = None
) -> RoutingRecords:
    """Routing records of the generated tokens in server responses (module docstring). Sizes
    come from `config` when given, else from the responses: N = the largest expert id + 1,
    G = the largest group + 1 (no group anywhere: the linear router), K range as seen.
    EvalDataError when no token carries routing or layers disagree."""
    tokens = [t for p in paths for t in _read(Path(p))]
    if not tokens:
        raise EvalDataError("no routing in " + ", ".join(str(p) for p in paths))
    num_layers = len(tokens[0].routing)
    if any(len(t.routing) != num_layers for t in tokens):
        raise EvalDataError("responses disagree on the number of layers")
    width = max(len(entry["experts"]) for t in tokens for entry in t.routing)
    layers = [_layer(tokens, layer, width) for layer in range(num_layers)]
    router, num_experts, groups, k_range = _sizes(layers, config)
    texts = [t.text for t in tokens]
    return RoutingRecords(
        router=router,
        num_experts=num_experts,
        num_groups=groups,
        k_range=k_range,
        positions=np.array([t.position for t in tokens], dtype=np.int64),
        tokens=None if any(x is None for x in texts) else [str(x) for x in texts],
        layers=layers,
        source={"kind": "responses", "files": [str(p) for p in paths]},
    )


def _sizes(
    layers: list[LayerRecords], config: ModelConfig | None
) -> tuple[str, int, int, tuple[int, int]]:
    if config is not None:
        groups, k_range = router_sizes(config)
        return config.router, config.num_experts, groups, k_range
    max_group = max(int(layer.group.max()) for layer in layers)
    num_experts = max(int(layer.experts.max()) for layer in layers) + 1
    k_lo = min(int(layer.k.min()) for layer in layers)
    k_hi = max(int(layer.k.max()) for layer in layers)
    if max_group < 0:
        return "linear", num_experts, 0, (k_lo, k_hi)
    groups = max_group + 1
    num_experts = -(-num_experts // groups) * groups  # a whole number of experts per group
    return "attention", num_experts, groups, (k_lo, k_hi)
