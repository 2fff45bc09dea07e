"""Engine behaviour through its public interfaces: batching invariance, abort, cache sizing,
stop conditions, the offline LLM and the AsyncEngine."""

from __future__ import annotations

import asyncio
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hagmoe.engine.async_engine import AsyncEngine
from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.errors import InvalidRequestError
from hagmoe.engine.llm import LLM
from hagmoe.engine.model_runner import SMALL_ROUTING
from hagmoe.engine.request import Request
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model import HagMoEModel, Tokenizer, named_config, random_model


@pytest.fixture(scope="module")
def model() -> HagMoEModel:
    return random_model(named_config("tiny", vocab_size=300), seed=0)


def _prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(300) for _ in range(rng.randint(2, 40))] for _ in range(n)]


def _greedy(n: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True)


def test_greedy_output_identical_alone_and_among_31_others(model: HagMoEModel) -> None:
    prompts = _prompts(32, seed=1)
    llm = LLM(model, config=EngineConfig(block_size=8, max_num_batched_tokens=256))
    together = llm.generate(prompts, _greedy(24))
    for i in (0, 13, 31):
        alone = LLM(model, config=EngineConfig(block_size=8)).generate([prompts[i]], _greedy(24))
        assert alone[0].token_ids == together[i].token_ids


def test_seeded_sampling_reproducible_whatever_the_batch(model: HagMoEModel) -> None:
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=1234)
    prompt = _prompts(1, seed=2)[0]
    alone = LLM(model).generate([prompt], params)[0].token_ids
    others = [SamplingParams(max_new_tokens=16, temperature=1.0) for _ in range(5)]
    mixed = LLM(model).generate([*_prompts(5, seed=3), prompt], [*others, params])
    assert mixed[-1].token_ids == alone


def test_cache_holds_exactly_k_v_and_routing_values(model: HagMoEModel) -> None:
    cfg = model.config
    engine = EngineCore(model, None, EngineConfig(block_size=4, num_blocks=10))
    per_token = 2 * cfg.kv_heads * cfg.hd + cfg.num_groups + cfg.num_experts
    for parts in engine.runner.kv_caches:
        assert [p.shape[0] for p in parts] == [40, 40]
        assert sum(p.shape[1] for p in parts) == per_token
    assert len(engine.runner.kv_caches) == cfg.num_layers
    assert engine.config.bytes_per_token(cfg) == cfg.num_layers * per_token * 4


def test_cache_size_set_in_bytes(model: HagMoEModel) -> None:
    config = EngineConfig(block_size=4, kv_cache_bytes=100_000)
    EngineCore(model, None, config)
    assert config.num_blocks == 100_000 // config.bytes_per_block(model.config)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 30)), min_size=1, max_size=6),
    st.integers(0, 10_000),
)
def test_abort_at_any_point_frees_every_block(
    model: HagMoEModel, aborts: list[tuple[int, int]], seed: int
) -> None:
    engine = EngineCore(
        model,
        None,
        EngineConfig(block_size=4, num_blocks=48, max_num_seqs=4, max_num_batched_tokens=24),
    )
    prompts = _prompts(6, seed)
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, _greedy(12))
    plan = {step: f"r{i}" for i, step in aborts}
    step = 0
    while engine.has_unfinished_requests():
        if step in plan:
            req = engine.scheduler.requests.get(plan[step])
            engine.abort_request(plan[step])
            if req is not None:
                assert req.block_table == [] and req.is_finished
        engine.step()
        engine.kv_cache.check_integrity()
        step += 1
    assert engine.kv_cache.usage == 0.0
    assert engine.kv_cache.num_free_blocks == 48


def test_stops_on_stop_token_and_max_new_tokens(model: HagMoEModel) -> None:
    llm = LLM(model)
    prompt = _prompts(1, seed=4)[0]
    free = llm.generate([prompt], _greedy(10))[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 10
    stop_at = free.token_ids[3]
    first = free.token_ids.index(stop_at)
    params = SamplingParams(max_new_tokens=10, temperature=0.0, stop_token_ids=[stop_at])
    stopped = llm.generate([prompt], params)[0]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop_at
    assert stopped.token_ids == free.token_ids[: first + 1]


def test_stop_string_never_leaks_into_text(model: HagMoEModel) -> None:
    tok = Tokenizer.byte_level(300)
    llm = LLM(model, tokenizer=tok)
    free = llm.generate(["Hello"], _greedy(16))[0]
    text = free.text
    stop = text[5:8] if len(text) >= 8 else text[-2:]
    params = SamplingParams(max_new_tokens=16, temperature=0.0, ignore_eos=True, stop=[stop])
    stopped = llm.generate(["Hello"], params)[0]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop
    assert stop not in stopped.text and stopped.text == text[: text.index(stop)]


def test_invalid_requests_name_the_field(model: HagMoEModel) -> None:
    engine = EngineCore(model, None, EngineConfig(max_model_len=64))
    with pytest.raises(InvalidRequestError, match="prompt"):
        engine.add_request("a", [], SamplingParams())
    with pytest.raises(InvalidRequestError, match="64"):
        engine.add_request("b", [1] * 64, SamplingParams())
    with pytest.raises(InvalidRequestError, match="temperature"):
        engine.add_request("c", [1], SamplingParams(temperature=-1))
    with pytest.raises(InvalidRequestError, match="vocab_size"):
        engine.add_request("d", [1, 300], SamplingParams())


def test_length_stops_at_max_model_len(model: HagMoEModel) -> None:
    llm = LLM(model, config=EngineConfig(max_model_len=20))
    out = llm.generate([[1] * 15], _greedy(100))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 5


def test_async_engine_streams_aborts_and_shuts_down(model: HagMoEModel) -> None:
    engine = AsyncEngine(EngineCore(model, None, EngineConfig(block_size=4)))
    engine.start()

    async def main() -> None:
        tokens = [
            o.new_token_ids[0]
            async for o in engine.generate(engine.make_requests([1, 2, 3], _greedy(8))[0])
        ]
        assert len(tokens) == 8
        stream = engine.generate(engine.make_requests([4, 5, 6], _greedy(1000))[0])
        await stream.__anext__()
        await stream.aclose()  # the client went away
        for _ in range(100):
            if engine.core.kv_cache.usage == 0.0:
                break
            await asyncio.sleep(0.01)
        assert engine.core.kv_cache.usage == 0.0
        results = await asyncio.gather(*[_collect(engine, [i + 1] * 5) for i in range(8)])
        assert all(len(r) == 8 for r in results)

    try:
        asyncio.run(main())
        assert engine.is_alive
    finally:
        engine.shutdown()
    assert not engine.is_alive


async def _collect(engine: AsyncEngine, prompt: list[int], max_tokens: int = 8) -> list[int]:
    request = engine.make_requests(prompt, _greedy(max_tokens))[0]
    return [t async for o in engine.generate(request) for t in o.new_token_ids]


def test_async_engine_deadline_ends_request(model: HagMoEModel) -> None:
    import time

    engine = AsyncEngine(EngineCore(model, None, EngineConfig(block_size=4)))
    engine.start()

    async def main() -> str | None:
        last = None
        request = engine.make_requests([1, 2], _greedy(100_000), deadline=time.monotonic() + 0.2)[0]
        async for out in engine.generate(request):
            last = out
        assert last is not None
        return last.finish_reason

    try:
        assert asyncio.run(main()) == "abort"
        assert engine.core.kv_cache.usage == 0.0
    finally:
        engine.shutdown()


def test_a_request_the_engine_thread_refuses_fails_alone(
    model: HagMoEModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = EngineCore(model, None, EngineConfig(block_size=4))
    engine = AsyncEngine(core)
    enqueue = core.enqueue

    def failing_enqueue(request: Request) -> None:
        if request.request_id.startswith("poison"):
            raise RuntimeError("injected enqueue failure")
        enqueue(request)

    monkeypatch.setattr(core, "enqueue", failing_enqueue)
    engine.start()

    async def main() -> tuple[list[list[int]], BaseException | None]:
        first = asyncio.ensure_future(_collect(engine, [7, 8, 9], 40))
        await asyncio.sleep(0.05)
        others = [asyncio.ensure_future(_collect(engine, [i + 1] * 4)) for i in range(3)]
        refused: BaseException | None = None
        try:
            await _drain(engine, engine.make_requests([1, 2], _greedy(8), request_id="poison")[0])
        except RuntimeError as exc:
            refused = exc
        return [await first, *[await o for o in others]], refused

    try:
        results, refused = asyncio.run(main())
        assert refused is not None and "injected" in str(refused)
        assert [len(r) for r in results] == [40, 8, 8, 8]
        assert engine.is_alive
    finally:
        engine.shutdown()


def test_generate_refuses_a_request_already_streaming(model: HagMoEModel) -> None:
    engine = AsyncEngine(EngineCore(model, None, EngineConfig(block_size=4)))
    engine.start()

    async def main() -> None:
        request = engine.make_requests([7, 8, 9], _greedy(100_000))[0]
        running = asyncio.ensure_future(_drain(engine, request))
        while not engine.core.scheduler.requests:
            await asyncio.sleep(0.01)
        with pytest.raises(InvalidRequestError, match="request_id"):
            await _drain(engine, request)
        assert not running.done()
        running.cancel()

    try:
        asyncio.run(main())
    finally:
        engine.shutdown()


async def _drain(engine: AsyncEngine, request: Request) -> list[int]:
    return [t async for o in engine.generate(request) for t in o.new_token_ids]


def test_llm_rejects_text_without_tokenizer(model: HagMoEModel) -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        LLM(model).generate(["hi"])
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize("tokens", [11, 300])  # counted in Python, and in numpy
def test_routing_stats_count_every_token_expert_pair(model: HagMoEModel, tokens: int) -> None:
    engine = EngineCore(model, None, EngineConfig(collect_routing_stats=True))
    engine.add_request("a", [1 + i % 50 for i in range(tokens)], _greedy(3))
    engine.step()
    stats = engine.last_stats.routing
    assert stats is not None and engine.last_stats.num_batched_tokens == tokens
    layers = model.config.num_layers
    assert (layers * tokens * model.config.k_max > SMALL_ROUTING) == (tokens == 300)
    assert len(stats.k) == layers * tokens and len(stats.entropy) == layers * tokens
    per_layer_k = [sum(stats.k[i * tokens : (i + 1) * tokens]) for i in range(layers)]
    assert [sum(row) for row in stats.expert_tokens] == per_layer_k
    assert [sum(row) for row in stats.group_tokens] == [tokens] * layers
    assert EngineCore(model, None, EngineConfig()).config.collect_routing_stats is False
