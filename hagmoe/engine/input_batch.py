"""Packs one step's scheduled tokens into a flat batch and its attention segments.

Legend: T flat tokens of the step, S sampled requests, B sequences of a segment,
Q query rows, L key positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hagmoe.engine.request import Request
from hagmoe.engine.step import ScheduledRequest
from hagmoe.model.forward_context import Segment


@dataclass(slots=True)
class InputBatch:
    input_ids: Tensor  # [T]
    positions: Tensor  # [T]
    slot_mapping: Tensor  # [T]
    segments: list[Segment]
    sample_index: Tensor  # [S] flat token whose logits are sampled
    sampled: list[ScheduledRequest]  # the S requests, in sample_index order
    prompt_rows: list[PromptRows]  # prompt tokens whose logprobs this step computes


@dataclass(slots=True)
class PromptRows:
    """Flat rows start.. start+count-1 predict prompt tokens first..first+count-1."""

    request: Request
    start: int
    first: int
    count: int


def _prompt_rows(s: ScheduledRequest, start: int) -> PromptRows | None:
    """The prompt tokens a chunk's logits predict that the request has no logprob of yet: the
    row of position p predicts token p + 1 (recomputed ones after a preemption are skipped)."""
    req = s.request
    if req.sampling_params.prompt_logprobs is None:
        return None
    c = req.num_computed_tokens
    first = max(c + 1, len(req.prompt_logprobs), 1)
    last = min(c + s.num_new_tokens, req.num_prompt_tokens - 1)
    if first > last:
        return None
    return PromptRows(req, start + first - 1 - c, first, last - first + 1)


def build_input_batch(
    scheduled: list[ScheduledRequest], block_size: int, device: torch.device
) -> InputBatch:
    """Decode rows (one new token) form one segment and prefill chunks another, so a long chunk
    does not pad every decode row to its length."""
    if all(s.num_new_tokens == 1 and s.samples for s in scheduled):
        return _decode_batch(scheduled, block_size, device)
    decodes = [s for s in scheduled if s.num_new_tokens == 1]
    prefills = [s for s in scheduled if s.num_new_tokens > 1]
    ordered = decodes + prefills
    ids, pos, slots, starts = [], [], [], []
    start = 0
    for s in ordered:
        req, c, n = s.request, s.request.num_computed_tokens, s.num_new_tokens
        p = np.arange(c, c + n)
        table = np.asarray(req.block_table, dtype=np.int64)
        ids.append(np.asarray(req.all_token_ids[c : c + n], dtype=np.int64))
        pos.append(p)
        slots.append(table[p // block_size] * block_size + p % block_size)
        starts.append(start)
        start += n
    sampled = [
        (st + s.num_new_tokens - 1, s) for st, s in zip(starts, ordered, strict=True) if s.samples
    ]
    groups = [
        (group, group_starts)
        for group, group_starts in (
            (decodes, starts[: len(decodes)]),
            (prefills, starts[len(decodes) :]),
        )
        if group
    ]
    segments = [_segment(g, st, block_size, device, len(groups) == 1) for g, st in groups]
    prompt_rows = [_prompt_rows(s, st) for st, s in zip(starts, ordered, strict=True)]

    def to(arrays: list[np.ndarray]) -> Tensor:
        return torch.from_numpy(np.concatenate(arrays)).to(device)

    return InputBatch(
        input_ids=to(ids),
        positions=to(pos),
        slot_mapping=to(slots),
        segments=segments,
        sample_index=torch.tensor([i for i, _ in sampled], dtype=torch.long, device=device),
        sampled=[s for _, s in sampled],
        prompt_rows=[r for r in prompt_rows if r is not None],
    )


def _decode_batch(
    scheduled: list[ScheduledRequest], block_size: int, device: torch.device
) -> InputBatch:
    """A step of decode rows only, every one sampled: one segment whose rows are the flat
    tokens in order, built from plain lists (a decode step's cost is mostly overhead)."""
    reqs = [s.request for s in scheduled]
    pos = [r.num_computed_tokens for r in reqs]
    nb = max(pos) // block_size + 1
    table = [
        r.block_table[: p // block_size + 1] + r.block_table[:1] * (nb - p // block_size - 1)
        for r, p in zip(reqs, pos, strict=True)
    ]  # pad: the row's first block
    slots = [
        t[p // block_size] * block_size + p % block_size for t, p in zip(table, pos, strict=True)
    ]
    ids = [r.all_token_ids[p] for r, p in zip(reqs, pos, strict=True)]
    rows = torch.tensor([ids, pos, slots, list(range(len(reqs)))], dtype=torch.int64, device=device)
    block_table = torch.tensor(table, dtype=torch.int64, device=device)  # [B, nb]
    return InputBatch(
        input_ids=rows[0],
        positions=rows[1],
        slot_mapping=rows[2],
        segments=[Segment(rows[1][:, None], block_table=block_table, block_size=block_size)],
        sample_index=rows[3],
        sampled=scheduled,
        prompt_rows=[],
    )


def _segment(
    group: list[ScheduledRequest],
    starts: list[int],
    block_size: int,
    device: torch.device,
    only_segment: bool,
) -> Segment:
    """The segment of `group`; when it is the step's only one and has no pad rows, its rows are
    the flat tokens in order, so it takes and puts them by views (no index ops)."""
    b = len(group)
    q = max(s.num_new_tokens for s in group)
    nblocks = [-(-(s.request.num_computed_tokens + s.num_new_tokens) // block_size) for s in group]
    rows = np.arange(q)
    counts = np.asarray([s.num_new_tokens for s in group])
    valid = rows[None, :] < counts[:, None]  # [B, Q]
    firsts = np.asarray([s.request.num_computed_tokens for s in group])
    query_pos = np.where(valid, firsts[:, None] + rows[None, :], 0)
    token_index = np.where(valid, np.asarray(starts)[:, None] + rows[None, :], 0)
    block_table = np.zeros((b, max(nblocks)), dtype=np.int64)  # pad: the row's first block
    for i, (s, nb) in enumerate(zip(group, nblocks, strict=True)):
        block_table[i] = s.request.block_table[0]
        block_table[i, :nb] = s.request.block_table[:nb]

    def to(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a).to(device)

    in_order = only_segment and bool(valid.all())
    return Segment(
        query_pos=to(query_pos),
        token_index=None if in_order else to(token_index),
        valid=None if valid.all() else to(valid),
        block_table=to(block_table),
        block_size=block_size,
    )
