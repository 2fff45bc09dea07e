"""Build the one AsyncEngine a server process shares."""

from __future__ import annotations

import torch

from hagmoe.engine.async_engine import AsyncEngine
from hagmoe.engine.config import EngineConfig
from hagmoe.engine.llm import load_engine
from server.settings import Settings


def build_engine(settings: Settings) -> AsyncEngine:
    """Load the model folder onto the device; the engine thread is not started yet."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    config = EngineConfig(
        block_size=settings.block_size,
        num_blocks=settings.num_blocks,
        kv_cache_bytes=settings.kv_cache_bytes,
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        enable_prefix_caching=settings.enable_prefix_caching,
        device=settings.device,
        dtype=settings.dtype,
        collect_routing_stats=True,
    )
    return AsyncEngine(load_engine(settings.model, None, config))
