"""The two baselines of the comparison, run in this process on the same requests as the server:

- naive HAG-MoE: the full forward recomputed for every new token, in static batches
  (hagmoe.bench.baselines.naive_generate; what the public research code does);
- Hugging Face transformers `generate()` on a Mixtral of the model's shape (top-2 of the same
  number of experts), greedy, in static batches left-padded to the longest prompt and run to the
  longest output of the batch; only each request's own output_len tokens count.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from hagmoe.bench.baselines import naive_generate
from hagmoe.bench.offline import BenchResult
from hagmoe.model.config import ModelConfig
from hagmoe.model.model import HagMoEModel

NAIVE = "naive HAG-MoE (recompute)"
HF_MIXTRAL = "HF transformers Mixtral (static)"
INSTALL_HINT = "pip install -e '.[bench]' (or pass --skip-hf)"


class BaselineUnavailable(RuntimeError):
    """A baseline cannot run here (its package is missing)."""


def require_transformers() -> None:
    """Raise BaselineUnavailable, saying how to install it, when transformers is missing."""
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise BaselineUnavailable(
            f"the HF Mixtral baseline needs transformers, which is not installed: {INSTALL_HINT}"
        ) from exc


def naive_baseline(
    model: HagMoEModel, prompts: Sequence[list[int]], lens: Sequence[int], batch_size: int
) -> BenchResult:
    start = time.perf_counter()
    outs = naive_generate(model, prompts, lens, batch_size)
    return _result(NAIVE, batch_size, outs, lens, time.perf_counter() - start)


def mixtral_config(cfg: ModelConfig) -> Any:
    """A MixtralConfig of the HAG-MoE model's shape: hidden, layers, heads, experts, FFN, vocab."""
    require_transformers()
    from transformers import MixtralConfig

    return MixtralConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.kv_heads,
        num_local_experts=cfg.num_experts,
        num_experts_per_tok=2,
        max_position_embeddings=cfg.max_position,
        pad_token_id=0,
        eos_token_id=None,
        bos_token_id=None,
    )


def hf_mixtral(cfg: ModelConfig, seed: int) -> Any:
    """A random-weight MixtralForCausalLM (torch seed `seed`), float32, eval mode, warmed up."""
    require_transformers()
    from transformers import MixtralForCausalLM

    torch.manual_seed(seed)
    model = MixtralForCausalLM(mixtral_config(cfg)).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    hf_static_generate(model, [[1, 2, 3, 4]], [2], 1)
    return model


@torch.inference_mode()
def hf_static_generate(
    model: Any, prompts: Sequence[list[int]], lens: Sequence[int], batch_size: int
) -> list[list[int]]:
    """Greedy `generate()` in static batches; each request's first output_len new tokens."""
    results: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        batch, want = prompts[start : start + batch_size], lens[start : start + batch_size]
        width, steps = max(map(len, batch)), max(want)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, prompt in enumerate(batch):  # left padding, as decoder-only generation needs
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
        )
        if out.shape[1] != width + steps:
            raise RuntimeError(f"generate() stopped early: {out.shape[1] - width} of {steps}")
        results += [out[row, width : width + n].tolist() for row, n in enumerate(want)]
    return results


def hf_baseline(
    model: Any, prompts: Sequence[list[int]], lens: Sequence[int], batch_size: int
) -> BenchResult:
    start = time.perf_counter()
    outs = hf_static_generate(model, prompts, lens, batch_size)
    return _result(HF_MIXTRAL, batch_size, outs, lens, time.perf_counter() - start)


def _result(
    system: str, batch: int, outs: list[list[int]], lens: Sequence[int], seconds: float
) -> BenchResult:
    useful = [len(o) for o in outs]
    if useful != list(lens):
        raise RuntimeError(f"{system}: produced {sum(useful)} tokens, wanted {sum(lens)}")
    return BenchResult(system, batch, len(outs), sum(useful), seconds)
