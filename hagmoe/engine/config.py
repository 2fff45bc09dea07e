"""Engine configuration: cache size, batch limits, device and dtype."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from hagmoe.engine.memory import (
    DEFAULT_MEMORY_UTILIZATION,
    CacheSize,
    available_memory,
    log_cache_size,
    size_cache,
)
from hagmoe.errors import ConfigError
from hagmoe.model.config import ModelConfig
from hagmoe.quantization.format import QUANTIZATIONS

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}

SCHEDULING_POLICIES = ("fcfs", "priority")


@dataclass(slots=True)
class EngineConfig:
    """Limits of one engine. The KV cache size is `num_blocks`, or `kv_cache_bytes` if given;
    by default what memory_utilization x the memory available after the weights holds, at most
    max_num_seqs full-length sequences (hagmoe.engine.memory has the rule)."""

    block_size: int = 16
    num_blocks: int | None = None  # default: sized from the memory (see the class docstring)
    kv_cache_bytes: int | None = None
    memory_utilization: float = DEFAULT_MEMORY_UTILIZATION  # the cache's share of what is free
    available_memory_bytes: int | None = None  # None: measured on the device at resolve()
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_model_len: int | None = None  # default: the model's max_position
    enable_prefix_caching: bool = True
    device: str = "cpu"
    dtype: str = "float32"
    seed: int | None = None  # the shared generator of unseeded requests
    collect_routing_stats: bool = False  # per-step expert / group counts (the server's metrics)
    scheduling_policy: str = "fcfs"  # or "priority": lowest Request.priority first
    keep_logits: bool = False  # keep each step's sampled-position logits (tests, debugging)
    quantization: str = "none"  # CPU weights: "none" (float32), "bf16" or "int8" (weight-only)
    # set by resolve(): the size chosen, and why
    cache_size: CacheSize | None = field(default=None, repr=False, compare=False)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def resolve(self, model: ModelConfig) -> EngineConfig:
        """Validate against the model and fill the derived sizes; returns self."""
        if self.dtype not in DTYPES:
            raise ConfigError(f"engine dtype {self.dtype!r}: choose one of {sorted(DTYPES)}")
        if self.scheduling_policy not in SCHEDULING_POLICIES:
            raise ConfigError(
                f"scheduling_policy {self.scheduling_policy!r}: choose one of "
                f"{list(SCHEDULING_POLICIES)}"
            )
        if self.quantization not in QUANTIZATIONS:
            raise ConfigError(
                f"quantization {self.quantization!r}: choose one of {list(QUANTIZATIONS)}"
            )
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"engine {name} = {getattr(self, name)}: must be >= 1")
        limit = model.max_position
        if self.max_model_len is None:
            self.max_model_len = limit
        if not 1 <= self.max_model_len <= limit and model.position == "learned":
            raise ConfigError(f"max_model_len = {self.max_model_len}: must lie in [1, {limit}]")
        per_block = self.bytes_per_block(model)
        done = self.cache_size
        if done and (done.num_blocks, done.bytes_per_block) == (self.num_blocks, per_block):
            return self  # resolved before (an LLM or EngineCore given this config again)
        available = self.available_memory_bytes
        if available is None:
            available = available_memory(self.device)
        size = size_cache(
            bytes_per_block=per_block,
            block_size=self.block_size,
            max_num_seqs=self.max_num_seqs,
            max_model_len=self.max_model_len,
            num_blocks=self.num_blocks,
            kv_cache_bytes=self.kv_cache_bytes,
            available_bytes=available,
            memory_utilization=self.memory_utilization,
        )
        self.num_blocks, self.cache_size = size.num_blocks, size
        log_cache_size(size, self.max_num_seqs)
        return self

    @property
    def kv_cache_size_bytes(self) -> int:
        """The resolved cache's bytes (0 before resolve())."""
        return 0 if self.cache_size is None else self.cache_size.num_bytes

    def bytes_per_token(self, model: ModelConfig) -> int:
        """Cache bytes per token: all layers' K, V and routing values."""
        return model.num_layers * model.cache_values_per_token * self.torch_dtype.itemsize

    def bytes_per_block(self, model: ModelConfig) -> int:
        return self.block_size * self.bytes_per_token(model)


class EngineSettings(Protocol):
    """What an entry point's flags or settings say of the engine (`hagmoe serve`, `generate`,
    `bench`)."""

    block_size: int
    num_blocks: int | None
    kv_cache_bytes: int | None
    memory_utilization: float
    available_memory_bytes: int | None
    max_model_len: int | None
    max_num_seqs: int
    max_num_batched_tokens: int
    enable_prefix_caching: bool
    device: str
    dtype: str
    quantization: str
    threads: int | None


def engine_config(settings: EngineSettings, **overrides: Any) -> EngineConfig:
    """The one settings -> EngineConfig mapping of every entry point; `overrides` name
    EngineConfig fields. Sets torch's CPU thread count when `threads` is given."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    config = EngineConfig(
        block_size=settings.block_size,
        num_blocks=settings.num_blocks,
        kv_cache_bytes=settings.kv_cache_bytes,
        memory_utilization=settings.memory_utilization,
        available_memory_bytes=settings.available_memory_bytes,
        max_model_len=settings.max_model_len,
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        enable_prefix_caching=settings.enable_prefix_caching,
        device=settings.device,
        dtype=settings.dtype,
        quantization=settings.quantization,
    )
    return dataclasses.replace(config, **overrides)
