"""Tile configs of the fused MoE kernels per shape, as vLLM keeps them: for each
(experts E, expert FFN size F, hidden size d) a table keyed by the step's token count M, the
entry nearest M chosen; shapes not listed take DEFAULT_CONFIG (or the small-M one).

The entries are starting points taken by analogy with vLLM's H100/H200 tables for the same
E and comparable N (bf16 weights), not yet measured on this project's kernels: tune them on the
card (scripts/gpu_check.py reports the step times they give) and replace them here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MoeTileConfig:
    """One launch configuration of the two grouped GEMMs (vLLM's field names, lower case)."""

    block_size_m: int  # routed pairs per tile; the sorted pairs are padded to a multiple of it
    block_size_n: int  # output columns per tile
    block_size_k: int  # inner size per loop step
    num_warps: int = 4
    num_stages: int = 3


DEFAULT_CONFIG = MoeTileConfig(64, 64, 32, num_warps=4, num_stages=3)
SMALL_M_CONFIG = MoeTileConfig(16, 64, 64, num_warps=4, num_stages=4)  # decode-sized steps

_DECODE = {
    1: MoeTileConfig(16, 64, 128, num_warps=4, num_stages=4),
    16: MoeTileConfig(16, 64, 128, num_warps=4, num_stages=4),
    64: MoeTileConfig(16, 128, 64, num_warps=4, num_stages=4),
    256: MoeTileConfig(32, 128, 64, num_warps=8, num_stages=3),
    1024: MoeTileConfig(64, 128, 64, num_warps=8, num_stages=3),
    4096: MoeTileConfig(128, 128, 64, num_warps=8, num_stages=3),
}

CONFIGS: dict[tuple[int, int, int], dict[int, MoeTileConfig]] = {
    (64, 1024, 2048): _DECODE,  # OLMoE-1B-7B: 64 experts, top-8
    (8, 14336, 4096): _DECODE,  # Mixtral-8x7B: 8 experts, top-2
    (16, 512, 256): {1: MoeTileConfig(16, 32, 64), 64: MoeTileConfig(16, 64, 64)},  # "bench"
    (16, 1024, 512): {1: MoeTileConfig(16, 64, 64), 64: MoeTileConfig(32, 64, 64)},  # "small"
}


def tile_config(num_experts: int, ffn_size: int, hidden_size: int, tokens: int) -> MoeTileConfig:
    """The table's entry for this shape nearest `tokens` (vLLM's rule), else the default."""
    table = CONFIGS.get((num_experts, ffn_size, hidden_size))
    if table is None:
        return SMALL_M_CONFIG if tokens <= 64 else DEFAULT_CONFIG
    return table[min(table, key=lambda m: abs(m - tokens))]
