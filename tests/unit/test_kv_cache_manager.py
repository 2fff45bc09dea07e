"""KVCacheManager and BlockPool: allocation, prefix caching, LRU eviction, no leaks."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from hagmoe.engine.block_pool import BlockPool, BlockPoolError
from hagmoe.engine.kv_cache_manager import KVCacheManager
from hagmoe.engine.request import Request
from hagmoe.engine.sampling_params import SamplingParams

_ids = itertools.count()
PICK = st.integers(0, 1 << 16)
MAX_LIVE = 6
BASES = ((0, 1, 2, 3) * 4, (3, 2, 1, 0, 0, 1, 2, 3) * 2)
PROMPT = st.builds(
    lambda base, shared, tail: [*base[:shared], *tail] or [0],
    st.sampled_from(BASES),
    st.integers(0, 16),
    st.lists(st.integers(0, 3), max_size=6),
)


def make_request(tokens: list[int]) -> Request:
    return Request(f"req-{next(_ids)}", list(tokens), SamplingParams())


def schedule(manager: KVCacheManager, request: Request, chunk: int | None = None) -> int:
    """Schedule like the engine does; return the number of prefix-hit tokens."""
    blocks, hit = ([], 0)
    if not request.block_table:
        blocks, hit = manager.get_computed_blocks(request)
    remaining = request.num_tokens - request.num_computed_tokens - hit
    num_new = remaining if chunk is None else min(chunk, remaining)
    assert manager.allocate_slots(request, num_new, blocks) is not None
    request.num_computed_tokens += hit + num_new
    return hit


def test_prefix_hit_never_covers_last_token() -> None:
    manager = KVCacheManager(num_blocks=8, block_size=4)
    first, second = make_request(list(range(8))), make_request(list(range(8)))
    schedule(manager, first)
    blocks, hit = manager.get_computed_blocks(second)
    assert (blocks, hit) == (first.block_table[:1], 4)
    assert manager.stats.queries == 16 and manager.stats.hits == 4
    new = manager.allocate_slots(second, 4, blocks)
    assert new is not None and len(new) == 1
    assert second.block_table[0] == first.block_table[0]
    assert second.block_table[1] != first.block_table[1]
    assert manager.usage == 3 / 8
    manager.check_integrity()


def test_partial_tail_block_is_private() -> None:
    manager = KVCacheManager(num_blocks=8, block_size=4)
    first, second = make_request([1, 2, 3, 4, 5, 6]), make_request([1, 2, 3, 4, 5, 6, 7])
    schedule(manager, first)
    assert schedule(manager, second) == 4
    assert second.block_table[0] == first.block_table[0]
    assert second.block_table[1] != first.block_table[1]


def test_hits_after_first_request_is_freed() -> None:
    manager = KVCacheManager(num_blocks=4, block_size=2)
    first = make_request([5, 6, 7, 8, 9])
    schedule(manager, first)
    table = list(first.block_table)
    manager.free(first)
    assert first.block_table == [] and manager.usage == 0 and manager.num_free_blocks == 4
    second = make_request([5, 6, 7, 8, 9, 1])
    assert schedule(manager, second) == 4
    assert second.block_table[:2] == table[:2]
    manager.check_integrity()


def test_preempted_request_recomputes_from_its_own_cache() -> None:
    manager = KVCacheManager(num_blocks=4, block_size=2)
    request = make_request([1, 2, 3, 4])
    schedule(manager, request)
    request.append_output_token(0)
    assert manager.allocate_slots(request, 1) is not None
    request.num_computed_tokens += 1
    manager.free(request)
    request.num_computed_tokens = 0
    assert schedule(manager, request) == 4


def test_lru_evicts_least_recently_freed_and_tail_first() -> None:
    manager = KVCacheManager(num_blocks=6, block_size=2)
    first, second = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]

    def hit(tokens: list[int]) -> int:
        return manager.get_computed_blocks(make_request(tokens))[1]

    requests = [make_request(first), make_request(second)]
    for request in requests:
        schedule(manager, request)
    for request in requests:
        manager.free(request)
    schedule(manager, make_request([3]))
    assert (hit(first), hit(second)) == (4, 4)
    schedule(manager, make_request([1]))
    assert (hit(first), hit(second)) == (2, 4)
    schedule(manager, make_request([2]))
    assert (hit(first), hit(second)) == (0, 4)
    schedule(manager, make_request([3, 3]))
    assert (hit(first), hit(second)) == (0, 4)
    schedule(manager, make_request([3, 3, 3]))
    assert (hit(first), hit(second)) == (0, 2)
    manager.check_integrity()


def test_block_pool_lru_order() -> None:
    pool = BlockPool(4)
    blocks = pool.get_new_blocks(4)
    for block in blocks:
        pool.cache_full_block(block, 100 + block)
    pool.free_blocks([blocks[2], blocks[0], blocks[3], blocks[1]])
    assert pool.get_new_blocks(2) == [blocks[2], blocks[0]]
    assert pool.get_cached_block(102) is None and pool.get_cached_block(103) == blocks[3]
    pool.touch([blocks[3]])
    assert pool.num_free_blocks == 1 and pool.get_new_blocks(1) == [blocks[1]]
    with pytest.raises(BlockPoolError):
        pool.get_new_blocks(1)
    pool.check_integrity()


def test_duplicate_hash_keeps_existing_mapping() -> None:
    pool = BlockPool(2)
    a, b = pool.get_new_blocks(2)
    pool.cache_full_block(a, 7)
    pool.cache_full_block(b, 7)
    assert pool.get_cached_block(7) == a and pool.block_hash(b) is None
    pool.free_blocks([a, b])
    pool.check_integrity()
    with pytest.raises(BlockPoolError):
        pool.free_blocks([a])


def test_allocation_failure_leaves_state_unchanged() -> None:
    manager = KVCacheManager(num_blocks=4, block_size=2)
    cached = make_request([1, 2, 3, 4, 5])
    schedule(manager, cached)
    manager.free(cached)
    holder = make_request([9])
    schedule(manager, holder)
    request = make_request([1, 2, 3, 4, 5, 6, 7])
    blocks, hit = manager.get_computed_blocks(request)
    assert hit == 4
    before = (manager.num_free_blocks, manager.usage, [manager.pool.ref_count(i) for i in range(4)])
    assert manager.allocate_slots(request, 3, blocks) is None
    after = (manager.num_free_blocks, manager.usage, [manager.pool.ref_count(i) for i in range(4)])
    assert before == after and request.block_table == []
    assert manager.get_computed_blocks(request) == (blocks, hit)
    assert manager.allocate_slots(request, 1, blocks) is not None
    manager.check_integrity()


def test_stale_prefix_blocks_are_rejected() -> None:
    manager = KVCacheManager(num_blocks=3, block_size=2)
    cached = make_request([1, 2, 3])
    schedule(manager, cached)
    manager.free(cached)
    request = make_request([1, 2, 3])
    blocks, _ = manager.get_computed_blocks(request)
    filler = make_request([4, 4, 4, 4, 4])
    schedule(manager, filler)
    manager.free(filler)
    with pytest.raises(BlockPoolError):
        manager.allocate_slots(request, 1, blocks)


def test_usage_returns_to_zero_and_no_caching_when_disabled() -> None:
    manager = KVCacheManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    requests = [make_request([1, 2, 3, 4, 5]) for _ in range(2)]
    for request in requests:
        assert schedule(manager, request) == 0
    assert manager.usage == 6 / 8 and manager.stats.queries == 0
    for request in requests:
        manager.free(request)
    assert manager.usage == 0 and manager.num_free_blocks == 8
    manager.check_integrity()


class KVCacheMachine(RuleBasedStateMachine):
    """Random engine traffic; a shadow cache checks every computed token's slot contents."""

    def __init__(self) -> None:
        super().__init__()
        self.live: list[Request] = []
        self.prefixes: dict[int, tuple[int, ...]] = {}

    @initialize(
        num_blocks=st.integers(1, 24),
        block_size=st.integers(1, 4),
        caching=st.booleans(),
        prompts=st.lists(PROMPT, max_size=MAX_LIVE),
    )
    def setup(
        self, num_blocks: int, block_size: int, caching: bool, prompts: list[list[int]]
    ) -> None:
        self.manager = KVCacheManager(num_blocks, block_size, caching)
        self.shadow: list[list[int | None]] = [[None] * block_size for _ in range(num_blocks)]
        self.add(prompts)

    def _pick(self, pick: int, pending: bool | None = None) -> Request | None:
        pool = [
            r
            for r in self.live
            if pending is None or (r.num_computed_tokens < r.num_tokens) == pending
        ]
        return pool[pick % len(pool)] if pool else None

    @rule(prompts=st.lists(PROMPT, min_size=1, max_size=3))
    def add(self, prompts: list[list[int]]) -> None:
        room = MAX_LIVE - len(self.live)
        self.live.extend(make_request(prompt) for prompt in prompts[:room])

    @rule(pick=PICK, chunk=st.integers(1, 8))
    def schedule_chunk(self, pick: int, chunk: int) -> None:
        request = self._pick(pick, pending=True)
        if request is None:
            return
        blocks, hit = ([], 0)
        if not request.block_table:
            blocks, hit = self.manager.get_computed_blocks(request)
            assert hit == len(blocks) * self.manager.block_size < request.num_tokens
            event("prefix hit" if hit else "prefix miss")
        num_new = min(chunk, request.num_tokens - request.num_computed_tokens - hit)
        self._allocate(request, num_new, blocks, hit)

    @rule(pick=PICK, token=st.integers(0, 3))
    def decode(self, pick: int, token: int) -> None:
        request = self._pick(pick, pending=False)
        if request is None:
            return
        request.append_output_token(token)
        self._allocate(request, 1, [], 0)

    @rule(pick=PICK, kind=st.sampled_from(["finish", "abort", "preempt"]))
    def release(self, pick: int, kind: str) -> None:
        request = self._pick(pick, pending=False if kind == "finish" else None)
        if request is None:
            return
        self.manager.free(request)
        if kind == "preempt":
            request.num_computed_tokens = 0
        else:
            self.live.remove(request)

    def free_all(self) -> None:
        for request in self.live:
            self.manager.free(request)
        self.live.clear()

    def _allocate(self, request: Request, num_new: int, blocks: list[int], hit: int) -> None:
        before = self._snapshot(request)
        new = self.manager.allocate_slots(request, num_new, blocks)
        if new is None:
            event("allocation failed")
            assert self._snapshot(request) == before
            return
        start = request.num_computed_tokens + hit
        request.num_computed_tokens = start + num_new
        self._write_shadow(request, start, request.num_computed_tokens)

    def _snapshot(self, request: Request) -> tuple[object, ...]:
        pool = self.manager.pool
        refs = [pool.ref_count(b) for b in range(pool.num_blocks)]
        hashes = [pool.block_hash(b) for b in range(pool.num_blocks)]
        return pool.num_free_blocks, self.manager.usage, refs, hashes, list(request.block_table)

    def _write_shadow(self, request: Request, start: int, stop: int) -> None:
        size = self.manager.block_size
        for pos in range(start, stop):
            block = request.block_table[pos // size]
            assert self.manager.pool.ref_count(block) == 1, "wrote into a shared block"
            self.shadow[block][pos % size] = request.all_token_ids[pos]

    @invariant()
    def integrity(self) -> None:
        if hasattr(self, "manager"):
            self.manager.check_integrity()

    @invariant()
    def tables_match_refs_and_contents(self) -> None:
        if not hasattr(self, "manager"):
            return
        manager, pool, size = self.manager, self.manager.pool, self.manager.block_size
        holders = [0] * pool.num_blocks
        for request in self.live:
            assert len(request.block_table) == -(-request.num_computed_tokens // size)
            for index, block in enumerate(request.block_table):
                holders[block] += 1
                self._check_block(request, index, block)
        assert holders == [pool.ref_count(b) for b in range(pool.num_blocks)]
        assert manager.stats.hits <= manager.stats.queries
        if not self.live:
            assert manager.usage == 0 and manager.num_free_blocks == manager.num_blocks

    def _check_block(self, request: Request, index: int, block: int) -> None:
        size, pool = self.manager.block_size, self.manager.pool
        stop = min(request.num_computed_tokens, (index + 1) * size)
        for pos in range(index * size, stop):
            assert self.shadow[block][pos % size] == request.all_token_ids[pos]
        block_hash = pool.block_hash(block)
        if pool.ref_count(block) > 1:
            assert block_hash is not None, "shared block not cached"
        if block_hash is not None:
            assert (index + 1) * size <= request.num_computed_tokens, "cached block not full"
            assert request.block_hashes[index] == block_hash
            prefix = tuple(request.all_token_ids[: (index + 1) * size])
            assert self.prefixes.setdefault(block_hash, prefix) == prefix, "hash collision"

    def teardown(self) -> None:
        if hasattr(self, "manager"):
            self.free_all()
            assert self.manager.usage == 0
            assert self.manager.num_free_blocks == self.manager.num_blocks
            self.manager.check_integrity()


KVCacheMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestKVCacheMachine = KVCacheMachine.TestCase
