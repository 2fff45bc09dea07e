"""The per-step forward context: where a layer's keys, values and routing values come from.

Legend: T flat tokens of the step, B sequences of a segment, Q query rows per sequence,
L key positions per sequence, w values per token of one cache part.

A step's tokens are flat ([T]); attention runs per *segment*, a padded [B, Q] view of the
queries of B sequences, each seeing key positions 0..L-1 of its own sequence. In dense mode
(training, reference) the keys are this step's own tokens; in paged mode (serving) each layer
first writes its new K, V and routing values into the cache at `slot_mapping`, then reads
whole blocks back through each sequence's `block_table` (L = blocks x block_size; positions past
the sequence's length are masked like future ones), or, on the CPU, attends to them in place
(hagmoe/kernels: decode rows and prefill chunks of short contexts). A layer's cache has two parts: KV (K then V,
2*Hkv*hd values per token) and, for the attention router, RV (the G + N routing values).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import torch
from torch import Tensor

from hagmoe.kernels.decode_layer import DecodeRouting
from hagmoe.model.rope import rope_table
from hagmoe.model.routing import LayerRouting

T = TypeVar("T")


@dataclass(slots=True)
class Segment:
    """Queries of B sequences padded to Q rows; key position j is visible iff j <= query_pos."""

    query_pos: Tensor  # [B, Q] position of each query row (pad rows: 0)
    token_index: Tensor | None = (
        None  # [B, Q] flat token of each row; None: rows are tokens in order
    )
    valid: Tensor | None = None  # [B, Q] bool, real rows; None: all rows are real
    block_table: Tensor | None = None  # [B, nb] cache block of key positions; None: dense mode
    block_size: int = 0  # key positions per block (paged mode)
    _mask: Tensor | None = field(default=None, init=False)

    @property
    def num_keys(self) -> int:
        """L: key positions each row's sequence offers (this step's, or its blocks')."""
        if self.block_table is None:
            return self.query_pos.shape[1]
        return self.block_table.shape[1] * self.block_size

    @property
    def mask(self) -> Tensor:
        """[B, 1, Q, L] bool, built on first use (the one-call decode layers need none)."""
        if self._mask is None:
            j = torch.arange(self.num_keys, device=self.query_pos.device)
            self._mask = (j[None, None, :] <= self.query_pos[:, :, None]).unsqueeze(1)
        return self._mask

    def take(self, x: Tensor) -> Tensor:
        """Flat rows [T, ...] -> padded [B, Q, ...]."""
        if self.token_index is None:
            return x.view(*self.query_pos.shape, *x.shape[1:])
        return x[self.token_index]

    def put(self, out: Tensor, y: Tensor) -> None:
        """Write padded rows y [B, Q, ...] back into flat out [T, ...] (real rows only), in
        out's dtype (the Triton router sums come in float32 under a bfloat16 model)."""
        y = y.to(out.dtype)
        if self.token_index is None:
            out.copy_(y.reshape(out.shape))
        elif self.valid is None:
            out[self.token_index.reshape(-1)] = y.reshape(-1, *y.shape[2:])
        else:
            out[self.token_index[self.valid]] = y[self.valid]


@dataclass(frozen=True, slots=True)
class TrainingOptions:
    """What the training objective asks of a forward beyond serving: routing keeps its logits
    and divergences (LayerRouting's training fields), attention feeds the router detached or
    not, and K may be forced for every token (the trainer's K warm-up)."""

    detach_routing_attention: bool = True
    k_override: int | None = None


@dataclass(slots=True)
class ForwardContext:
    """Everything one forward pass needs beyond token ids; the model sees nothing else."""

    positions: Tensor  # [T] position of each token inside its sequence
    segments: list[Segment]
    kv_caches: list[list[Tensor]] | None = None  # per layer, per part [num_slots, w]; None: dense
    slot_mapping: Tensor | None = None  # [T] cache slot each token writes to
    return_routing: bool = False  # fill `routing` with each layer's decisions
    training: TrainingOptions | None = None  # the training objective's forward; None: serving
    routing: list[LayerRouting] = field(default_factory=list)
    # every layer's decisions [L, T, ...] of a one-call decode
    decode_routing: DecodeRouting | None = None
    _cached: dict[Hashable, Any] = field(default_factory=dict, init=False, repr=False)

    @property
    def keeps_routing(self) -> bool:
        """Whether layers append their decisions to `routing` (asked for, or for training)."""
        return self.return_routing or self.training is not None

    @classmethod
    def dense(
        cls,
        batch: int,
        seq_len: int,
        device: torch.device | str = "cpu",
        *,
        return_routing: bool = False,
        training: TrainingOptions | None = None,
    ) -> ForwardContext:
        """Full-sequence causal context for [B, T] tokens (right padding is harmless)."""
        pos = torch.arange(seq_len, device=device).expand(batch, seq_len)
        return cls(
            positions=pos.reshape(-1),
            segments=[Segment(query_pos=pos)],
            return_routing=return_routing,
            training=training,
        )

    def cached(self, key: Hashable, make: Callable[[], T]) -> T:
        """make(), computed once per forward pass (what every layer derives alike)."""
        if key not in self._cached:
            self._cached[key] = make()
        return cast(T, self._cached[key])

    def rope(
        self, head_dim: int, theta: float, dtype: torch.dtype, scaling: dict[str, Any] | None
    ) -> tuple[Tensor, Tensor]:
        """cos, sin [T, hd] of `positions` (rope_table), looked up once per forward pass."""
        return self.cached(
            ("rope", head_dim, theta, dtype, repr(scaling)),
            lambda: rope_table(self.positions, head_dim, theta, dtype, scaling),
        )

    @property
    def decode_segment(self) -> Segment | None:
        """The step's one segment when it is a paged decode step (one row per sequence, the
        flat tokens in order); else None. Decided once per forward pass."""
        return self.cached("decode_segment", self._decode_segment)

    def _decode_segment(self) -> Segment | None:
        if self.kv_caches is None or len(self.segments) != 1:
            return None
        seg = self.segments[0]
        plain = seg.token_index is None and seg.valid is None and seg.block_table is not None
        return seg if plain and seg.query_pos.shape[1] == 1 else None

    def write(self, layer: int, part: int, values: Tensor) -> None:
        """Store this step's values [T, w] in cache part `part` of `layer` (paged mode only)."""
        if self.kv_caches is not None:
            assert self.slot_mapping is not None
            self.kv_caches[layer][part].index_copy_(0, self.slot_mapping, values)

    def read(self, layer: int, seg: Segment, part: int, values: Tensor) -> Tensor:
        """Per-sequence key-side values [B, L, w]: from the cache (paged) or this step (dense)."""
        if self.kv_caches is None or seg.block_table is None:
            return seg.take(values)
        cache = self.kv_caches[layer][part]  # [num_slots, w]
        b, nb = seg.block_table.shape
        width = cache.shape[1]
        blocks = cache.view(-1, seg.block_size * width).index_select(0, seg.block_table.view(-1))
        return blocks.view(b, nb * seg.block_size, width)
