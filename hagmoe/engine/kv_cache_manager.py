"""Maps requests to paged KV cache blocks and reuses full blocks across requests by hash.

Block hashes form a chain: the hash of block i covers block i-1's hash and block i's tokens, so
equal hashes mean equal token prefixes. They are 128-bit BLAKE2b digests of little-endian int64
tokens, stable across processes and machines (unlike Python's `hash`), and collision-safe enough
to trust a hit without comparing tokens.

Protocol for the scheduler (as in vLLM v1):
1. A request holding no blocks (new, or preempted): `blocks, hit = get_computed_blocks(req)`.
2. Right away, with no other allocation in between:
   `allocate_slots(req, num_new_tokens, blocks)`; None means nothing changed (preempt or wait).
3. On success set `req.num_computed_tokens += hit + num_new_tokens` once the step is scheduled
   (hit is 0 for running requests). Blocks are hashed in step 2, before the forward pass.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from hagmoe.engine.block_pool import BlockPool, BlockPoolError
from hagmoe.engine.request import Request

_SEED_HASH = int.from_bytes(hashlib.blake2b(b"hagmoe-prefix-cache-v1", digest_size=16).digest())


def hash_block_tokens(parent_hash: int | None, tokens: Sequence[int]) -> int:
    """Chained hash of one full block: BLAKE2b-128 of the parent's hash (or a seed) and tokens."""
    parent = _SEED_HASH if parent_hash is None else parent_hash
    digest = hashlib.blake2b(parent.to_bytes(16, "little"), digest_size=16)
    digest.update(struct.pack(f"<{len(tokens)}q", *tokens))
    return int.from_bytes(digest.digest(), "little")


@dataclass(slots=True)
class PrefixCacheStats:
    """Cumulative prefix-cache lookups, in tokens."""

    queries: int = 0
    hits: int = 0


class KVCacheManager:
    """Allocates block tables for requests and shares cached full blocks between them.

    A shared block is always full and cached; a request's last, partially filled block is
    always private to it.
    """

    def __init__(
        self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, enable_prefix_caching)
        self.stats = PrefixCacheStats()

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        """Blocks no request references (cached-but-free ones included)."""
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by some request, in [0, 1]."""
        return self.pool.usage

    def check_integrity(self) -> None:
        """Raise AssertionError if the block pool's invariants are broken."""
        self.pool.check_integrity()

    def get_computed_blocks(self, request: Request) -> tuple[list[int], int]:
        """Longest run of cached blocks matching the request's leading full blocks.

        Never covers the last token (it must be computed for logits). Takes no references:
        pass the blocks to `allocate_slots` before any other allocation. Call only for a
        request holding no blocks. Adds to `stats` (queries: request.num_tokens, hits: tokens
        returned). Returns ([], 0) when prefix caching is off or the request wants prompt
        logprobs (cached tokens have no logits).
        """
        if not self.enable_prefix_caching or request.sampling_params.prompt_logprobs is not None:
            return [], 0
        blocks: list[int] = []
        max_blocks = (request.num_tokens - 1) // self.block_size
        for index in range(max_blocks):
            block = self.pool.get_cached_block(self._block_hash(request, index))
            if block is None:
                break
            blocks.append(block)
        num_hit = len(blocks) * self.block_size
        self.stats.queries += request.num_tokens
        self.stats.hits += num_hit
        return blocks, num_hit

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: list[int] | None = None,
    ) -> list[int] | None:
        """Grow `request.block_table` to cover its computed, prefix-hit and new tokens.

        Covers `num_computed_tokens + len(new_computed_blocks) * block_size + num_new_tokens`
        tokens. Returns None, changing nothing, if too few blocks are free (touching a
        cached-but-free prefix block also consumes a free block). Otherwise references the
        prefix blocks, appends them and the newly allocated blocks to the table, hashes every
        block that is full once these tokens are computed, and returns the new block ids.
        """
        if num_new_tokens < 0:
            raise ValueError(f"num_new_tokens must be >= 0, got {num_new_tokens}")
        computed = new_computed_blocks or []
        num_computed = request.num_computed_tokens + len(computed) * self.block_size
        num_total = num_computed + num_new_tokens
        num_needed = max(
            0, -(-num_total // self.block_size) - len(request.block_table) - len(computed)
        )
        num_reclaimed = sum(self.pool.ref_count(block) == 0 for block in computed)
        if num_needed + num_reclaimed > self.pool.num_free_blocks:
            return None
        self._check_prefix_blocks(request, computed)
        self.pool.touch(computed)
        request.block_table.extend(computed)
        new_blocks = self.pool.get_new_blocks(num_needed)
        request.block_table.extend(new_blocks)
        self._cache_full_blocks(request, num_computed, min(num_total, request.num_tokens))
        return new_blocks

    def free(self, request: Request) -> None:
        """Release all blocks of the request, tail first, and clear its block table.

        Its full blocks stay cached until evicted; `block_hashes` is kept.
        """
        self.pool.free_blocks(reversed(request.block_table))
        request.block_table.clear()

    def _block_hash(self, request: Request, index: int) -> int:
        hashes = request.block_hashes
        size = self.block_size
        while len(hashes) <= index:
            start = len(hashes) * size
            parent = hashes[-1] if hashes else None
            hashes.append(hash_block_tokens(parent, request.all_token_ids[start : start + size]))
        return hashes[index]

    def _check_prefix_blocks(self, request: Request, blocks: list[int]) -> None:
        first = len(request.block_table)
        for offset, block in enumerate(blocks):
            if self.pool.block_hash(block) != self._block_hash(request, first + offset):
                raise BlockPoolError(f"prefix block {block} was evicted or belongs elsewhere")

    def _cache_full_blocks(self, request: Request, num_cached_tokens: int, num_tokens: int) -> None:
        if not self.enable_prefix_caching:
            return
        for index in range(num_cached_tokens // self.block_size, num_tokens // self.block_size):
            block_hash = self._block_hash(request, index)
            self.pool.cache_full_block(request.block_table[index], block_hash)
