"""Baselines the engine is measured against, run in the same process by `hagmoe bench`.

- naive: what the public research code does: a static batch, the whole sequence recomputed by
  the full forward for every new token (no cache).
- static batching: the same engine and cache, but requests admitted in waves of `batch_size`,
  each wave padded to its longest output (every request runs to the wave's longest length).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model.model import HagMoEModel


@torch.inference_mode()
def naive_generate(
    model: HagMoEModel,
    prompts: Sequence[Sequence[int]],
    output_lens: Sequence[int],
    batch_size: int,
) -> list[list[int]]:
    """Greedy generation by full recompute, in static batches; returns each request's tokens."""
    results: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        batch = [list(p) for p in prompts[start : start + batch_size]]
        lens = list(output_lens[start : start + batch_size])
        outs: list[list[int]] = [[] for _ in batch]
        for _ in range(max(lens)):
            width = max(len(p) + len(o) for p, o in zip(batch, outs, strict=True))
            ids = torch.zeros(len(batch), width, dtype=torch.long, device=model.device)
            last = []
            for row, (p, o) in enumerate(zip(batch, outs, strict=True)):
                seq = p + o
                ids[row, : len(seq)] = torch.tensor(seq)
                last.append(len(seq) - 1)
            logits = model.forward_full(ids).logits  # [B, T, V]
            next_ids = logits[torch.arange(len(batch)), torch.tensor(last)].argmax(-1).tolist()
            for o, t in zip(outs, next_ids, strict=True):
                o.append(t)
        results += [o[:n] for o, n in zip(outs, lens, strict=True)]
    return results


def static_batch_generate(
    engine: EngineCore,
    prompts: Sequence[Sequence[int]],
    output_lens: Sequence[int],
    batch_size: int,
) -> list[list[int]]:
    """Greedy generation in waves; each wave runs to its longest request. Returns the useful
    tokens of each request (the padding steps are computed and then thrown away)."""
    results: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        lens = list(output_lens[start : start + batch_size])
        params = SamplingParams(max_new_tokens=max(lens), temperature=0.0, ignore_eos=True)
        tokens: dict[str, list[int]] = {}
        for i, p in enumerate(prompts[start : start + batch_size]):
            rid = f"static-{start + i}"
            engine.add_request(rid, list(p), params)
            tokens[rid] = []
        while engine.has_unfinished_requests():
            for out in engine.step():
                tokens[out.request_id] += out.new_token_ids
        results += [t[:n] for t, n in zip(tokens.values(), lens, strict=True)]
    return results
