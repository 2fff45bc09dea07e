"""Engine configuration: cache size, batch limits, device and dtype."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

import torch

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
    """Limits of one engine. The KV cache size is `num_blocks`, or `kv_cache_bytes` if given."""

    block_size: int = 16
    num_blocks: int | None = None  # default: enough for max_num_seqs full-length sequences
    kv_cache_bytes: int | None = None
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
        if self.kv_cache_bytes is not None:
            self.num_blocks = self.kv_cache_bytes // per_block
        elif self.num_blocks is None:
            blocks_per_seq = -(-self.max_model_len // self.block_size)
            self.num_blocks = self.max_num_seqs * blocks_per_seq
        if self.num_blocks < 1:
            raise ConfigError(
                f"KV cache of {self.kv_cache_bytes} bytes holds no block of "
                f"{per_block} bytes; raise kv_cache_bytes"
            )
        return self

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
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        enable_prefix_caching=settings.enable_prefix_caching,
        device=settings.device,
        dtype=settings.dtype,
        quantization=settings.quantization,
    )
    return dataclasses.replace(config, **overrides)
