"""The engine's client interface: all the server may know of the engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from hagmoe.engine.outputs import RequestOutput
from hagmoe.engine.request import Request
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model.tokenizer import Tokenizer

if TYPE_CHECKING:
    from hagmoe.engine.engine_core import EngineCore


@dataclass(slots=True, frozen=True)
class ModelInfo:
    """What /info, /v1/models and GetModelInfo report."""

    model_id: str
    model_type: str
    router: str
    vocab_size: int
    num_layers: int
    num_experts: int
    num_groups: int
    max_experts_per_token: int  # k_max (attention router) or top_k (linear)
    max_model_len: int
    block_size: int
    num_blocks: int
    kv_cache_bytes_per_token: int
    device: str
    dtype: str
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_bytes: int = 0  # the resolved cache: num_blocks x bytes per block

    @classmethod
    def from_core(cls, core: EngineCore, model_id: str = "hagmoe") -> ModelInfo:
        cfg, eng = core.model.config, core.config
        assert eng.max_model_len is not None and eng.num_blocks is not None
        return cls(
            model_id=model_id,
            model_type=cfg.model_type,
            router=cfg.router,
            vocab_size=cfg.vocab_size,
            num_layers=cfg.num_layers,
            num_experts=cfg.num_experts,
            num_groups=cfg.num_groups,
            max_experts_per_token=cfg.max_experts_per_token,
            max_model_len=eng.max_model_len,
            block_size=eng.block_size,
            num_blocks=eng.num_blocks,
            kv_cache_bytes_per_token=eng.bytes_per_token(cfg),
            device=str(core.model.device),
            dtype=eng.dtype,
            max_num_seqs=eng.max_num_seqs,
            max_num_batched_tokens=eng.max_num_batched_tokens,
            kv_cache_bytes=eng.kv_cache_size_bytes,
        )


class EngineClient(Protocol):
    """make_requests (validates) -> generate (async stream of outputs), abort, health, model
    info."""

    @property
    def tokenizer(self) -> Tokenizer | None: ...

    @property
    def is_alive(self) -> bool: ...

    def model_info(self) -> ModelInfo: ...

    def make_requests(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        n: int = 1,
        request_id: str | None = None,
        deadline: float | None = None,
        priority: int = 0,
    ) -> list[Request]:
        """Validate (the one validation) and build n sibling requests of one prompt (one
        prefill; seed + i each), opaque to the caller."""
        ...

    def generate(self, request: Request) -> AsyncIterator[RequestOutput]: ...

    def abort(self, request_id: str) -> None: ...
