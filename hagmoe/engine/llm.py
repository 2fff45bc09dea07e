"""The offline, synchronous API: `LLM(model).generate(prompts, params)`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.outputs import LayerDecision, RequestOutput
from hagmoe.engine.request import TokenLogprob
from hagmoe.engine.sampling_params import SamplingParams, params_per_prompt
from hagmoe.errors import CheckpointError
from hagmoe.model.model import HagMoEModel
from hagmoe.model.tokenizer import Tokenizer


@dataclass(slots=True)
class Completion:
    """One prompt's finished generation."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    num_cached_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    routing: list[list[LayerDecision]] = field(default_factory=list)
    time_to_first_token: float | None = None
    latency: float | None = None

    def add(self, out: RequestOutput) -> None:
        self.token_ids += out.new_token_ids
        self.text += out.new_text
        self.logprobs += out.logprobs
        self.routing += out.routing
        if out.finished:
            self.finish_reason, self.stop_reason = out.finish_reason, out.stop_reason
            self.num_cached_tokens = out.num_cached_tokens
            if out.first_token_time is not None:
                self.time_to_first_token = out.first_token_time - out.arrival_time
            if out.finished_time is not None:
                self.latency = out.finished_time - out.arrival_time


def load_engine(
    model: str | Path | HagMoEModel,
    tokenizer: Tokenizer | None = None,
    config: EngineConfig | None = None,
) -> EngineCore:
    """An EngineCore over a model folder (native, or Hugging Face converted on load) or a model
    object, on the config's device and dtype. A model it loads itself, and any model when
    config.quantization is not "none", is packed in place for the CPU kernels."""
    config = config or EngineConfig()
    owned = not isinstance(model, HagMoEModel)
    if isinstance(model, HagMoEModel):
        model = model.to(device=config.device, dtype=config.torch_dtype)
    else:
        folder = Path(model)
        model = _load_folder(folder, config)
        cfg = model.config
        tokenizer = tokenizer or Tokenizer.load(
            folder,
            vocab_size=cfg.vocab_size,
            bos_token_id=cfg.bos_token_id,
            eos_token_id=cfg.eos_token_id,
            pad_token_id=cfg.pad_token_id,
        )
    if config.quantization != "none" or owned:
        model = _pack(model, config.quantization)
    return EngineCore(model.eval(), tokenizer, config)


def _load_folder(folder: Path, config: EngineConfig) -> HagMoEModel:
    """A native, quantised (CPU, float32 only) or Hugging Face folder's model."""
    from hagmoe.model.hf_import.convert import load_folder
    from hagmoe.quantization.checkpoint import is_quantized, load_quantized

    if not is_quantized(folder):
        return load_folder(folder, device=config.device, dtype=config.torch_dtype)
    if torch.device(config.device).type != "cpu" or config.torch_dtype != torch.float32:
        raise CheckpointError(f"{folder} is quantised: it serves on the CPU in float32 only")
    return load_quantized(folder)


def _pack(model: HagMoEModel, quantization: str) -> HagMoEModel:
    """The engine's own model (loaded from a folder), or one it was asked to quantise: packed in
    place for the CPU kernels (hagmoe.quantization.serving), so the weights are held once."""
    from hagmoe.kernels import cpu
    from hagmoe.quantization.format import WeightFormat
    from hagmoe.quantization.serving import pack_for_serving

    if quantization == "none" and (
        model.device.type != "cpu" or model.dtype != torch.float32 or cpu.library() is None
    ):
        return model
    return pack_for_serving(model, WeightFormat.named(quantization))


class LLM:
    """Runs batches of prompts to completion with continuous batching."""

    def __init__(
        self,
        model: str | Path | HagMoEModel,
        tokenizer: Tokenizer | None = None,
        config: EngineConfig | None = None,
    ) -> None:
        self.engine = load_engine(model, tokenizer, config)
        self._ids = itertools.count()

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[Completion]:
        """Generate for every prompt (text or token ids); results in prompt order."""
        per_prompt = params_per_prompt(params, len(prompts))
        completions: dict[str, Completion] = {}
        for prompt, p in zip(prompts, per_prompt, strict=True):
            ids = self.encode(prompt)
            rid = f"offline-{next(self._ids)}"
            self.engine.add_request(rid, ids, p)
            completions[rid] = Completion(rid, ids)
        while self.engine.has_unfinished_requests():
            for out in self.engine.step():
                completions[out.request_id].add(out)
        return list(completions.values())

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if not isinstance(prompt, str):
            return list(prompt)
        if self.engine.tokenizer is None:
            raise ValueError("text prompts need a tokenizer; pass token ids instead")
        return self.engine.tokenizer.encode(prompt)
