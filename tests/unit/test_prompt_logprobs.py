"""Prompt logprobs (vLLM's `prompt_logprobs`): computed in the prefill steps themselves, and
exact against the full forward (float64) through chunking, batching, preemption and a prefix
cache that holds the prompt."""

from __future__ import annotations

import random

import pytest
import torch

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.errors import InvalidRequestError
from hagmoe.engine.outputs import RequestOutput
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model import HagMoEModel, named_config, random_model

TOL = 1e-9


@pytest.fixture(scope="module")
def model() -> HagMoEModel:
    return random_model(named_config("tiny"), seed=4, dtype=torch.float64)


def _engine(model: HagMoEModel, **config: object) -> EngineCore:
    options: dict[str, object] = dict(dtype="float64", block_size=4)
    options.update(config)
    return EngineCore(model, None, EngineConfig(**options))  # type: ignore[arg-type]


def _params(prompt_logprobs: int | None, new_tokens: int = 4) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=new_tokens,
        temperature=0.0,
        ignore_eos=True,
        prompt_logprobs=prompt_logprobs,
    )


def _run(engine: EngineCore, prompts: dict[str, tuple[list[int], SamplingParams]]) -> dict:
    firsts: dict[str, RequestOutput] = {}
    for rid, (prompt, params) in prompts.items():
        engine.add_request(rid, prompt, params)
    while engine.has_unfinished_requests():
        for out in engine.step():
            firsts.setdefault(out.request_id, out)
    return firsts


def _check(model: HagMoEModel, prompt: list[int], out: RequestOutput, top_n: int) -> None:
    assert out.prompt_logprobs is not None and len(out.prompt_logprobs) == len(prompt)
    assert out.prompt_logprobs[0] is None
    with torch.no_grad():
        logp = torch.log_softmax(model.forward_full(torch.tensor([prompt])).logits[0], dim=-1)
    for t in range(1, len(prompt)):
        got = out.prompt_logprobs[t]
        assert got is not None and got.token_id == prompt[t]
        assert abs(got.logprob - float(logp[t - 1, prompt[t]])) < TOL
        values, ids = torch.topk(logp[t - 1], top_n)
        assert list(got.top) == ids.tolist()
        diffs = [abs(a - b) for a, b in zip(got.top.values(), values.tolist(), strict=True)]
        assert max(diffs, default=0.0) < TOL


def _prompts(n: int, seed: int, lo: int, hi: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(320) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


@pytest.mark.parametrize("chunk", [3, 7, 512])
def test_prompt_logprobs_match_the_full_forward_through_chunked_prefill(
    model: HagMoEModel, chunk: int
) -> None:
    engine = _engine(model, max_num_batched_tokens=chunk)
    prompts = _prompts(3, seed=1, lo=2, hi=19)
    firsts = _run(engine, {f"r{i}": (p, _params(i)) for i, p in enumerate(prompts)})
    for i, p in enumerate(prompts):
        _check(model, p, firsts[f"r{i}"], top_n=i)


def test_only_the_first_output_carries_them_and_others_in_the_batch_have_none(
    model: HagMoEModel,
) -> None:
    engine = _engine(model)
    prompt = [5, 6, 7, 8, 9]
    engine.add_request("with", prompt, _params(2))
    engine.add_request("without", prompt, _params(None))
    outputs: list[RequestOutput] = []
    while engine.has_unfinished_requests():
        outputs.extend(engine.step())
    carried = [o.request_id for o in outputs if o.prompt_logprobs is not None]
    assert carried == ["with"]


def test_a_one_token_prompt_has_the_one_empty_entry(model: HagMoEModel) -> None:
    firsts = _run(_engine(model), {"r": ([42], _params(1))})
    assert firsts["r"].prompt_logprobs == [None]


def test_a_cached_prompt_is_computed_again_for_its_logprobs(model: HagMoEModel) -> None:
    engine = _engine(model)
    prompt = list(range(10, 27))
    _run(engine, {"warm": (prompt, _params(None))})
    firsts = _run(engine, {"again": (prompt, _params(3))})
    assert firsts["again"].num_cached_tokens == 0
    _check(model, prompt, firsts["again"], top_n=3)


def test_prompt_logprobs_survive_preemption_and_recompute(model: HagMoEModel) -> None:
    engine = _engine(model, num_blocks=14, max_num_seqs=4, max_num_batched_tokens=6)
    prompts = _prompts(4, seed=5, lo=8, hi=12)
    firsts = _run(engine, {f"r{i}": (p, _params(2, new_tokens=12)) for i, p in enumerate(prompts)})
    assert engine.scheduler.stats.num_preemptions > 0
    for i, p in enumerate(prompts):
        _check(model, p, firsts[f"r{i}"], top_n=2)


def test_prompt_logprobs_out_of_range_are_refused_by_name(model: HagMoEModel) -> None:
    with pytest.raises(InvalidRequestError, match="prompt_logprobs"):
        _engine(model).add_request("r", [1, 2], _params(-1))
