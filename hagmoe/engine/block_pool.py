"""Reference-counted pool of fixed-size KV cache blocks with an LRU free queue and a hash map.

Block ids only: the cache tensors live in the model runner. Every block is either used (ref > 0)
or free (ref == 0, in the free queue). A free block may still carry a hash: it keeps its cached
contents until it is evicted, which happens when `get_new_blocks` pops it from the queue.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from hagmoe.errors import HagMoEError


class BlockPoolError(HagMoEError, RuntimeError):
    """A caller broke the pool's contract (allocating past the free count, double free)."""


class BlockPool:
    """Blocks 0..num_blocks-1 with reference counts, an LRU free queue and hash -> block."""

    def __init__(self, num_blocks: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts: list[int] = [0] * num_blocks
        self._block_hashes: list[int | None] = [None] * num_blocks
        self._free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[int, int] = {}

    @property
    def num_free_blocks(self) -> int:
        """Blocks with ref count 0, whether they still hold cached contents or not."""
        return len(self._free_queue)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks (used or free) registered in the hash map."""
        return len(self._cached)

    @property
    def usage(self) -> float:
        """Fraction of blocks with ref count > 0, in [0, 1]."""
        return 1.0 - len(self._free_queue) / self.num_blocks

    def ref_count(self, block: int) -> int:
        """How many holders reference `block`."""
        return self._ref_counts[block]

    def block_hash(self, block: int) -> int | None:
        """The hash `block` is cached under, or None if it is not in the hash map."""
        return self._block_hashes[block]

    def get_cached_block(self, block_hash: int) -> int | None:
        """The block cached under `block_hash` (used or free), or None. Takes no reference."""
        if not self.enable_prefix_caching:
            return None
        return self._cached.get(block_hash)

    def touch(self, blocks: Iterable[int]) -> None:
        """Take one reference on each block, removing free ones from the free queue."""
        for block in blocks:
            if self._ref_counts[block] == 0:
                del self._free_queue[block]
            self._ref_counts[block] += 1

    def get_new_blocks(self, n: int) -> list[int]:
        """Pop `n` blocks from the front of the free queue (evicting their hashes), ref = 1.

        Raises BlockPoolError if fewer than `n` blocks are free; callers check first.
        """
        if n > len(self._free_queue):
            raise BlockPoolError(f"asked for {n} blocks, only {len(self._free_queue)} free")
        blocks: list[int] = []
        for _ in range(n):
            block, _ = self._free_queue.popitem(last=False)
            self._evict(block)
            self._ref_counts[block] = 1
            blocks.append(block)
        return blocks

    def free_blocks(self, blocks: Iterable[int]) -> None:
        """Drop one reference on each block; those reaching 0 join the queue's back in order.

        Pass a request's tail blocks first so they are evicted before its head blocks.
        Raises BlockPoolError on a block that is already free.
        """
        for block in blocks:
            if self._ref_counts[block] <= 0:
                raise BlockPoolError(f"block {block} freed while already free")
            self._ref_counts[block] -= 1
            if self._ref_counts[block] == 0:
                self._free_queue[block] = None

    def cache_full_block(self, block: int, block_hash: int) -> None:
        """Register a full `block` under `block_hash` for prefix reuse.

        No-op when prefix caching is off, when the block is already cached, or when another
        block already holds `block_hash` (the existing mapping is kept; `block` stays private).
        """
        if not self.enable_prefix_caching or self._block_hashes[block] is not None:
            return
        if block_hash in self._cached:
            return
        self._cached[block_hash] = block
        self._block_hashes[block] = block_hash

    def _evict(self, block: int) -> None:
        block_hash = self._block_hashes[block]
        if block_hash is not None:
            del self._cached[block_hash]
            self._block_hashes[block] = None

    def check_integrity(self) -> None:
        """Raise AssertionError naming the first broken invariant of refs, queue and hash map."""
        num_used = 0
        for block, ref in enumerate(self._ref_counts):
            assert ref >= 0, f"block {block} has negative ref count {ref}"
            in_queue = block in self._free_queue
            assert (ref == 0) == in_queue, f"block {block}: ref {ref} but in free queue={in_queue}"
            num_used += ref > 0
        assert len(self._free_queue) + num_used == self.num_blocks, (
            f"free {len(self._free_queue)} + used {num_used} != total {self.num_blocks}"
        )
        for block_hash, block in self._cached.items():
            assert self._block_hashes[block] == block_hash, f"hash map entry of block {block}"
        num_hashed = sum(h is not None for h in self._block_hashes)
        assert num_hashed == len(self._cached), (
            f"{num_hashed} blocks carry a hash but the hash map has {len(self._cached)}"
        )
        assert self.enable_prefix_caching or not self._cached, "hashes with prefix caching off"
