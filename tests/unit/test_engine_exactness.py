"""MODEL.md's numerical contract: the engine's logits equal the full-sequence forward (float64)
for incremental decoding, chunked prefill, mixed batches, prefix-cache hits and preemption."""

from __future__ import annotations

import random

import pytest
import torch

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model import HagMoEModel, named_config, random_model

TOL = 1e-9  # float64: orders of magnitude inside MODEL.md's 1e-4


def _model(**overrides: object) -> HagMoEModel:
    return random_model(named_config("tiny", **overrides), seed=3, dtype=torch.float64)


def _engine(model: HagMoEModel, **config: object) -> EngineCore:
    options: dict[str, object] = dict(dtype="float64", keep_logits=True, block_size=4)
    options.update(config)
    return EngineCore(model, None, EngineConfig(**options))  # type: ignore[arg-type]


def _prompts(n: int, seed: int, lo: int = 3, hi: int = 20) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(320) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def _run_checked(
    engine: EngineCore, prompts: list[list[int]], new_tokens: int = 6, return_routing: bool = False
) -> dict[str, list[int]]:
    """Run all prompts; at every sampled step compare logits (and routing) with forward_full."""
    model = engine.model
    params = SamplingParams(
        max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True, return_routing=return_routing
    )
    reqs = {f"r{i}": engine.add_request(f"r{i}", p, params) for i, p in enumerate(prompts)}
    checked = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            req = reqs[out.request_id]
            seq = req.all_token_ids[:-1]  # the tokens whose forward produced this token
            full = model.forward_full(torch.tensor([seq]), return_routing=return_routing)
            ref = full.logits[0, -1]
            got = engine.last_logits[out.request_id].to(torch.float64)
            assert (got - ref).abs().max() / ref.abs().max() < TOL, out.request_id
            if return_routing:
                _check_routing(out.routing[0], full.routing, len(seq) - 1)
            checked += 1
    assert checked == new_tokens * len(prompts)
    return {rid: r.output_token_ids for rid, r in reqs.items()}


def _check_routing(decisions: list, full_routing: list, pos: int) -> None:
    for layer, (d, r) in enumerate(zip(decisions, full_routing, strict=True)):
        k = int(r.k[pos])
        assert d.layer == layer and d.k == k and d.group == int(r.group[pos])
        assert d.experts == r.experts[pos, :k].tolist()
        assert d.scores == pytest.approx(r.scores[pos, :k].tolist(), abs=1e-9)


@pytest.mark.parametrize("position", ["learned", "rope"])
@pytest.mark.parametrize("router", ["attention", "linear"])
def test_incremental_decoding_matches_full_forward(position: str, router: str) -> None:
    model = _model(position=position, router=router, num_kv_heads=2)
    _run_checked(_engine(model), _prompts(1, seed=1), new_tokens=10, return_routing=True)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_chunked_prefill_matches_full_forward(chunk: int) -> None:
    model = _model()
    engine = _engine(model, max_num_batched_tokens=chunk)
    _run_checked(engine, _prompts(3, seed=chunk, lo=10, hi=25), new_tokens=4)


def test_request_batched_beside_others_of_different_lengths() -> None:
    model = _model(position="rope")
    prompts = _prompts(6, seed=7, lo=1, hi=30)
    batched = _run_checked(_engine(model, max_num_batched_tokens=40), prompts, return_routing=True)
    alone = _run_checked(_engine(model), prompts[:1])
    assert batched["r0"] == alone["r0"]


def test_prefix_cache_hit_matches_full_forward() -> None:
    model = _model()
    engine = _engine(model)
    shared = _prompts(1, seed=11, lo=18, hi=18)[0]
    _run_checked(engine, [shared])
    params = SamplingParams(max_new_tokens=3, temperature=0.0, ignore_eos=True)
    second = engine.add_request("again", [*shared, 5, 6], params)
    while engine.has_unfinished_requests():
        for out in engine.step():
            seq = second.all_token_ids[:-1]
            ref = model.forward_full(torch.tensor([seq])).logits[0, -1]
            got = engine.last_logits[out.request_id]
            assert (got - ref).abs().max() / ref.abs().max() < TOL
    assert second.num_cached_tokens == 16  # four full blocks of four tokens
    assert engine.kv_cache.stats.hits >= 16


def test_preemption_and_recompute_match_full_forward() -> None:
    model = _model()
    engine = _engine(model, num_blocks=14, max_num_seqs=4)
    outputs = _run_checked(engine, _prompts(4, seed=5, lo=8, hi=12), new_tokens=12)
    assert engine.scheduler.stats.num_preemptions > 0
    assert all(len(toks) == 12 for toks in outputs.values())
    assert engine.kv_cache.usage == 0.0
