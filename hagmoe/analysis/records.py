"""Routing records: every analysed token's routing in every layer, from a model run over text.

The model is run with the full-sequence forward over consecutive, non-overlapping windows of
each document (every window starts at position 0, so every position up to the window length is
seen), and each token is recorded once. The coarse-vs-fine divergence needs the attention rows
a_c[i] and a_f[i], which the routing records do not keep: a forward hook on each layer's
attention reads its head mixes and reduces them to one number per token at once.

Legend: T analysed tokens, K max experts per token, B windows of a batch, L key positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hagmoe.evaluation.text_data import EvalDataError, load_documents
from hagmoe.model.config import ModelConfig
from hagmoe.model.model import HagMoEModel
from hagmoe.model.routing import LayerRouting
from hagmoe.model.tokenizer import Tokenizer


@dataclass(slots=True)
class LayerRecords:
    """One layer's routing of the T analysed tokens (masked expert slots hold -1)."""

    experts: np.ndarray  # [T, K] int64 global expert ids, best first; -1 beyond the token's K
    k: np.ndarray  # [T] int64 experts used
    group: np.ndarray  # [T] int64 chosen group (-1: linear router)
    entropy: np.ndarray  # [T] float64 normalised coarse entropy Hn (0: linear router)
    js: np.ndarray | None = None  # [T] JS(a_c[i], a_f[i]) in nats; None: not available
    kl: np.ndarray | None = None  # [T] KL(a_c[i] || a_f[i]) in nats; None: not available


@dataclass(slots=True)
class RoutingRecords:
    """What the statistics need: the routing family, its sizes, and each token's routing."""

    router: str  # "attention" or "linear"
    num_experts: int  # N
    num_groups: int  # G (0: no groups, the linear router)
    k_range: tuple[int, int]  # (k_min, k_max) of the attention router; (top_k, top_k) linear
    positions: np.ndarray  # [T] int64 position of each token inside its window / sequence
    tokens: list[str] | None  # [T] each token's text; None: unknown (no token statistics)
    layers: list[LayerRecords]
    source: dict[str, Any] = field(default_factory=dict)  # what was analysed, for the report

    @property
    def num_tokens(self) -> int:
        return int(self.positions.shape[0])

    @property
    def has_groups(self) -> bool:
        return self.router == "attention" and self.num_groups > 0

    @property
    def has_dynamic_k(self) -> bool:
        return self.router == "attention"


def router_sizes(config: ModelConfig) -> tuple[int, tuple[int, int]]:
    """(G, k range) of a model config: (0, (top_k, top_k)) for the linear router."""
    if config.router == "attention":
        return config.num_groups, (config.k_min, config.k_max)
    return 0, (config.top_k, config.top_k)


def token_label(tokenizer: Tokenizer, token_id: int) -> str:
    """A token's text as the report shows it (special tokens by name)."""
    return tokenizer.decode([token_id], skip_special_tokens=False)


def divergences(a_c: Tensor, a_f: Tensor) -> tuple[Tensor, Tensor]:
    """Per query row JS(a_c, a_f) and KL(a_c || a_f) in nats over the last dim of
    a_c, a_f [..., L] (rows of probabilities; masked keys are 0 in both), in float64.

    JS = (KL(a_c || m) + KL(a_f || m)) / 2 with m = (a_c + a_f) / 2, in [0, ln 2]; the KL
    counts an a_f that underflowed to 0 as the smallest normal float64."""
    c, f = a_c.double(), a_f.double()
    m = 0.5 * (c + f)
    safe_m = torch.where(m > 0, m, torch.ones_like(m))
    js = 0.5 * (
        (torch.xlogy(c, c) - torch.xlogy(c, safe_m)).sum(-1)
        + (torch.xlogy(f, f) - torch.xlogy(f, safe_m)).sum(-1)
    )
    safe_f = torch.where(c > 0, f.clamp_min(torch.finfo(torch.float64).tiny), torch.ones_like(f))
    kl = (torch.xlogy(c, c) - torch.xlogy(c, safe_f)).sum(-1)
    return js.clamp_min(0.0), kl.clamp_min(0.0)


@dataclass(slots=True)
class _Collector:
    """Accumulates the routing of successive batches, layer by layer."""

    num_layers: int
    parts: dict[str, list[list[np.ndarray]]] = field(default_factory=dict)

    def add(self, name: str, layer: int, values: Tensor) -> None:
        rows = self.parts.setdefault(name, [[] for _ in range(self.num_layers)])
        rows[layer].append(values.detach().cpu().numpy())

    def take(self, name: str, layer: int) -> np.ndarray | None:
        rows = self.parts.get(name)
        if rows is None or not rows[layer]:
            return None
        return np.concatenate(rows[layer])


def _divergence_hook(collector: _Collector, layer: int) -> Callable[..., None]:
    def hook(_module: Any, _inputs: Any, output: tuple[Tensor, list[Any]]) -> None:
        mixes = output[1]
        if not mixes:  # the linear router keeps no head mix
            return
        for mix in mixes:  # dense mode: one segment, rows in flat token order
            js, kl = divergences(mix.coarse, mix.fine)  # [B, Q]
            collector.add("js", layer, js.reshape(-1))
            collector.add("kl", layer, kl.reshape(-1))

    return hook


def _windows(ids: list[int], context: int) -> list[list[int]]:
    """Consecutive non-overlapping windows of at most `context` tokens."""
    return [ids[s : s + context] for s in range(0, len(ids), context)]


def _add_routing(collector: _Collector, routing: list[LayerRouting]) -> None:
    for layer, r in enumerate(routing):
        collector.add("experts", layer, r.experts)
        collector.add("k", layer, r.k)
        collector.add("group", layer, r.group)
        collector.add("entropy", layer, r.entropy.double())


@torch.no_grad()
def _run_batch(
    model: HagMoEModel, batch: list[list[int]], collector: _Collector
) -> tuple[np.ndarray, np.ndarray]:
    """Routes a batch of equal-length windows; returns their token ids and positions [B*T]."""
    ids = torch.tensor(batch, dtype=torch.long, device=model.device)  # [B, T]
    out = model.forward_full(ids, return_routing=True)
    _add_routing(collector, out.routing)
    positions = torch.arange(ids.shape[1]).repeat(ids.shape[0])  # [B*T]
    return ids.reshape(-1).cpu().numpy(), positions.numpy()


def collect_from_model(
    model: HagMoEModel,
    tokenizer: Tokenizer,
    paths: Sequence[str | Path],
    context: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
) -> RoutingRecords:
    """Routing records of `model` over the documents of `paths` (.txt: one document; .jsonl: a
    "text" field per line, as `hagmoe eval` reads them). Each document is prefixed with the
    tokenizer's BOS (else EOS) token when it has one, then cut into consecutive windows of
    `context` tokens (default: the model's max_position); at most `max_tokens` tokens in all.
    EvalDataError when no token is left to analyse."""
    cfg = model.config
    context = context or cfg.max_position
    if not 1 <= context <= cfg.max_position:
        raise EvalDataError(f"context must lie in [1, max_position = {cfg.max_position}]")
    windows = _text_windows(tokenizer, paths, context, max_tokens)
    if not windows:
        raise EvalDataError("no tokens to analyse in " + ", ".join(str(p) for p in paths))
    collector = _Collector(cfg.num_layers)
    hooks = [
        layer.get_submodule("attn").register_forward_hook(_divergence_hook(collector, i))
        for i, layer in enumerate(model.layers)
    ]
    was_training = model.training
    model.eval()
    try:
        ids, positions = _run_windows(model, windows, batch_size, collector)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    groups, k_range = router_sizes(cfg)
    labels = {int(i): token_label(tokenizer, int(i)) for i in np.unique(ids)}
    return RoutingRecords(
        router=cfg.router,
        num_experts=cfg.num_experts,
        num_groups=groups,
        k_range=k_range,
        positions=positions,
        tokens=[labels[int(i)] for i in ids],
        layers=_layers(collector, cfg.num_layers),
        source={
            "kind": "model",
            "files": [str(p) for p in paths],
            "windows": len(windows),
            "context": context,
        },
    )


def _text_windows(
    tokenizer: Tokenizer, paths: Sequence[str | Path], context: int, max_tokens: int | None
) -> list[list[int]]:
    prefix = (
        tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    )
    windows: list[list[int]] = []
    budget = max_tokens if max_tokens is not None else -1
    for path in paths:
        for text in load_documents(path):
            ids = tokenizer.encode(text)
            if prefix is not None:
                ids = [prefix, *ids]
            for w in _windows(ids, context):
                if budget == 0:
                    return windows
                w = w[:budget] if budget > 0 else w
                budget -= len(w) if budget > 0 else 0
                windows.append(w)
    return windows


def _run_windows(
    model: HagMoEModel, windows: list[list[int]], batch_size: int, collector: _Collector
) -> tuple[np.ndarray, np.ndarray]:
    """Batches windows of equal length (same order every run) and routes them."""
    by_length: dict[int, list[list[int]]] = {}
    for w in windows:
        by_length.setdefault(len(w), []).append(w)
    ids: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    for group in by_length.values():
        for i in range(0, len(group), batch_size):
            batch_ids, batch_pos = _run_batch(model, group[i : i + batch_size], collector)
            ids.append(batch_ids)
            positions.append(batch_pos)
    return np.concatenate(ids), np.concatenate(positions).astype(np.int64)


def _layers(collector: _Collector, num_layers: int) -> list[LayerRecords]:
    layers = []
    for layer in range(num_layers):
        experts, k = collector.take("experts", layer), collector.take("k", layer)
        group, entropy = collector.take("group", layer), collector.take("entropy", layer)
        assert experts is not None and k is not None and group is not None and entropy is not None
        layers.append(
            LayerRecords(
                experts=experts.astype(np.int64),
                k=k.astype(np.int64),
                group=group.astype(np.int64),
                entropy=entropy.astype(np.float64),
                js=collector.take("js", layer),
                kl=collector.take("kl", layer),
            )
        )
    return layers
