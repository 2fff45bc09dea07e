"""n sibling requests of one prompt (OpenAI's n, TGI's best_of): one prefill, the others from
the prefix cache, per-sibling seeds, and each sibling what it would be alone."""

from __future__ import annotations

import pytest
import torch

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.errors import InvalidRequestError
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model import HagMoEModel, named_config, random_model

PROMPT = list(range(20, 38))  # 18 tokens: four full blocks of 4, then two
SAMPLED = SamplingParams(max_new_tokens=6, temperature=8.0, seed=11, ignore_eos=True)


@pytest.fixture(scope="module")
def model() -> HagMoEModel:
    return random_model(named_config("tiny"), seed=2, dtype=torch.float32)


def _core(model: HagMoEModel, **config: object) -> EngineCore:
    options: dict[str, object] = dict(block_size=4)
    options.update(config)
    return EngineCore(model, None, EngineConfig(**options))  # type: ignore[arg-type]


def _run(core: EngineCore, n: int, params: SamplingParams) -> list[list[int]]:
    siblings = core.make_requests("q", PROMPT, params, n)
    for request in siblings:
        core.enqueue(request)
    while core.has_unfinished_requests():
        core.step()
    return [r.output_token_ids for r in siblings]


def test_siblings_compute_the_prompt_once(model: HagMoEModel) -> None:
    core = _core(model)
    _run(core, 4, SAMPLED)
    assert core.kv_cache.stats.hits == 3 * 16  # every sibling but the first: four full blocks
    assert core.kv_cache.usage == 0.0


def test_each_sibling_samples_what_it_would_alone_with_seed_plus_i(model: HagMoEModel) -> None:
    together = _run(_core(model), 4, SAMPLED)
    for i, tokens in enumerate(together):
        alone = _core(model, enable_prefix_caching=False)
        params = SamplingParams(max_new_tokens=6, temperature=8.0, seed=11 + i, ignore_eos=True)
        assert _run(alone, 1, params)[0] == tokens
    assert len({tuple(t) for t in together}) > 1


def test_siblings_wait_for_the_leader_across_chunked_prefill(model: HagMoEModel) -> None:
    core = _core(model, max_num_batched_tokens=5)
    greedy = SamplingParams(max_new_tokens=3, temperature=0.0, ignore_eos=True)
    outputs = _run(core, 3, greedy)
    assert outputs[0] == outputs[1] == outputs[2]
    assert core.kv_cache.stats.hits == 2 * 16


def test_n_below_one_is_refused_by_name(model: HagMoEModel) -> None:
    with pytest.raises(InvalidRequestError, match="n"):
        _core(model).make_requests("q", PROMPT, SAMPLED, 0)
