"""build_input_batch: a step of decode rows only (its list-built path) and the same rows inside a
step with a prefill chunk (the general path) give the same positions, slots and block tables."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hagmoe.engine.input_batch import build_input_batch
from hagmoe.engine.request import Request
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.engine.step import ScheduledRequest

BLOCK = 4
CPU = torch.device("cpu")


def decoding(tokens: int, extra_blocks: int, seed: int) -> ScheduledRequest:
    """A request with `tokens` tokens whose last one is the step's row, holding `extra_blocks`
    blocks beyond those it needs."""
    req = Request(f"r{seed}", [(seed * 7 + i) % 50 for i in range(tokens)], SamplingParams())
    req.num_computed_tokens = tokens - 1
    blocks = -(-tokens // BLOCK) + extra_blocks
    req.block_table = [(seed * 13 + 3 * i) % 97 for i in range(blocks)]
    return ScheduledRequest(req, 1)


def prefilling(tokens: int) -> ScheduledRequest:
    req = Request("prefill", list(range(tokens)), SamplingParams())
    req.block_table = list(range(100, 100 + -(-tokens // BLOCK)))
    return ScheduledRequest(req, tokens)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 30), st.integers(0, 2)), min_size=1, max_size=6))
def test_decode_rows_batch_alike_on_both_paths(rows: list[tuple[int, int]]) -> None:
    decodes = [decoding(t, extra, i) for i, (t, extra) in enumerate(rows)]
    alone = build_input_batch(decodes, BLOCK, CPU)
    mixed = build_input_batch([*decodes, prefilling(5)], BLOCK, CPU)
    b = len(decodes)
    positions = [s.request.num_computed_tokens for s in decodes]
    assert alone.positions.tolist() == positions == mixed.positions[:b].tolist()
    assert alone.input_ids.tolist() == [s.request.all_token_ids[-1] for s in decodes]
    assert alone.input_ids.tolist() == mixed.input_ids[:b].tolist()
    assert alone.slot_mapping.tolist() == mixed.slot_mapping[:b].tolist()
    for slot, s in zip(alone.slot_mapping.tolist(), decodes, strict=True):
        p = s.request.num_computed_tokens
        assert slot == s.request.block_table[p // BLOCK] * BLOCK + p % BLOCK
    (seg,) = alone.segments
    ref = mixed.segments[0]
    assert seg.token_index is None and seg.valid is None
    assert torch.equal(seg.query_pos, ref.query_pos)
    assert seg.block_table is not None and ref.block_table is not None
    assert torch.equal(seg.block_table, ref.block_table)
    assert alone.sample_index.tolist() == list(range(b))
    assert alone.sampled == decodes and alone.prompt_rows == []
