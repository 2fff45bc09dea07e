"""Dense Hugging Face Llama / Qwen2 folder -> HAG-MoE folder (docs/upcycle.md): every expert is
the dense FFN times (1 + noise * n), n ~ N(0, 1) drawn per weight from `seed`; router weights
are zero, so scores are uniform and the experts' down projections are scaled to undo that; the
feedback gamma is 0. With noise = 0 and K fixed, the first forward equals the dense model's.

Legend: N experts, F FFN size, d hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hagmoe.errors import CheckpointError, ConfigError
from hagmoe.model.checkpoint import save_model
from hagmoe.model.config import MODEL_TYPE, ModelConfig
from hagmoe.model.factory import init_weights
from hagmoe.model.hf_import.assemble import stored_dtype
from hagmoe.model.hf_import.config_map import first_token_id
from hagmoe.model.hf_import.detect import read_config_json
from hagmoe.model.hf_import.rope_params import rope_settings
from hagmoe.model.hf_import.source_config import SourceConfig
from hagmoe.model.hf_import.tokenizer_files import copy_tokenizer_files
from hagmoe.model.hf_import.weight_files import WeightFiles
from hagmoe.model.model import HagMoEModel

DENSE_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
    },
    "qwen2": {
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
    },
}
DENSE_MODEL_TYPES = tuple(sorted(DENSE_DEFAULTS))
_FFN = (("w1", "gate_proj"), ("w2", "up_proj"), ("w3", "down_proj"))
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(slots=True, frozen=True)
class UpcycleOptions:
    """The MoE shape and router of the upcycled model."""

    router: str = "attention"  # "attention" (HAG-MoE) or "linear" (top-k, renormalised)
    num_groups: int = 2  # G; 1 for router = "linear"
    experts_per_group: int = 4  # M
    k_min: int = 1  # attention router
    k_max: int = 1
    top_k: int = 1  # linear router
    noise: float = 0.01  # relative std of the multiplicative expert noise
    seed: int = 0


@dataclass(slots=True, frozen=True)
class UpcycleResult:
    """What `upcycle` wrote."""

    source_model_type: str
    config: ModelConfig
    tokenizer_files: list[str]


def dense_config(data: dict[str, Any], opts: UpcycleOptions) -> ModelConfig:
    """The HAG-MoE config of a dense Llama / Qwen2 config.json; ConfigError names what cannot be
    kept."""
    model_type = data.get("model_type")
    if model_type not in DENSE_DEFAULTS:
        raise ConfigError(
            f"model_type {model_type!r} cannot be upcycled; supported: {', '.join(DENSE_MODEL_TYPES)}"
        )
    src = SourceConfig(str(model_type), data, DENSE_DEFAULTS[str(model_type)])
    _reject(src)
    d, heads = src.require("hidden_size"), src.require("num_attention_heads")
    theta, scaling = rope_settings(src)
    qwen = model_type == "qwen2"
    keys: dict[str, Any] = {
        "model_type": MODEL_TYPE,
        "vocab_size": src.require("vocab_size"),
        "hidden_size": d,
        "num_layers": src.require("num_hidden_layers"),
        "num_heads": heads,
        "num_kv_heads": src.get("num_key_value_heads") or heads,
        "head_dim": src.get("head_dim") or d // heads,
        "ffn_size": src.require("intermediate_size"),
        "position": "rope",
        "rope_theta": theta,
        "rope_scaling": scaling,
        "max_position": src.require("max_position_embeddings"),
        "norm": "rmsnorm",
        "norm_eps": float(src.require("rms_norm_eps")),
        "attn_bias": True if qwen else bool(src.get("attention_bias")),
        "attn_out_bias": False if qwen else bool(src.get("attention_bias")),
        "tie_embeddings": bool(src.get("tie_word_embeddings")),
        "bos_token_id": src.get("bos_token_id"),
        "eos_token_id": first_token_id(src.get("eos_token_id")),
        "pad_token_id": src.get("pad_token_id"),
        **_router_keys(opts),
    }
    return ModelConfig.from_dict(keys)


def _router_keys(opts: UpcycleOptions) -> dict[str, Any]:
    if opts.router == "linear":
        return {
            "router": "linear",
            "num_groups": 1,
            "experts_per_group": opts.num_groups * opts.experts_per_group,
            "top_k": opts.top_k,
            "normalize_topk": True,
            "feedback_dim": 0,
        }
    if opts.router != "attention":
        raise ConfigError(f"router = {opts.router!r}; expected 'attention' or 'linear'")
    return {
        "router": "attention",
        "num_groups": opts.num_groups,
        "experts_per_group": opts.experts_per_group,
        "k_min": opts.k_min,
        "k_max": opts.k_max,
    }


def _reject(src: SourceConfig) -> None:
    if src.get("hidden_act") != "silu":
        src.unsupported("hidden_act", src.get("hidden_act"), "experts are SwiGLU (silu) only")
    if src.get("mlp_bias"):
        src.unsupported("mlp_bias", True, "expert projections have no bias")
    if src.get("use_sliding_window"):
        src.unsupported("use_sliding_window", True, "the attention router has no window")
    if src.data.get("quantization_config"):
        src.unsupported("quantization_config", src.data["quantization_config"], "quantized weights")


def upcycled_model(
    folder: str | Path, opts: UpcycleOptions, dtype: torch.dtype | None = None
) -> HagMoEModel:
    """The HAG-MoE model upcycled from the dense folder, in eval mode on the CPU in `dtype`
    (default: the stored dtype). CheckpointError for a missing or misshapen tensor."""
    if opts.noise < 0:
        raise ConfigError(f"noise = {opts.noise}; expected >= 0")
    config = dense_config(read_config_json(Path(folder)), opts)
    with torch.device("meta"):
        model = HagMoEModel(config)
    model = model.to_empty(device="cpu").to(torch.float32)
    init_weights(model, seed=opts.seed)
    gen = torch.Generator().manual_seed(opts.seed)
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    with WeightFiles(folder) as files:
        target = dtype or stored_dtype(files)
        for native, name in _dense_names(config).items():
            state[native] = _read(files, name, expected[native].shape)
        for layer in range(config.num_layers):
            state.update(_layer_experts(files, config, layer, opts, gen))
    for name, tensor in expected.items():
        if ".router." in name:
            state[name] = torch.zeros_like(tensor)
        state.setdefault(name, tensor)
    model.load_state_dict(state)
    return model.to(target).eval()


def _dense_names(config: ModelConfig) -> dict[str, str]:
    """Native name -> dense checkpoint name of every tensor copied unchanged."""
    names = {"embed.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight"}
    if not config.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    for layer in range(config.num_layers):
        src, dst = f"model.layers.{layer}.", f"layers.{layer}."
        names[dst + "attn_norm.weight"] = src + "input_layernorm.weight"
        names[dst + "moe_norm.weight"] = src + "post_attention_layernorm.weight"
        for proj in _ATTENTION:
            names[f"{dst}attn.{proj}.weight"] = f"{src}self_attn.{proj}.weight"
            if config.attn_out_bias if proj == "o_proj" else config.attn_bias:
                names[f"{dst}attn.{proj}.bias"] = f"{src}self_attn.{proj}.bias"
    return names


def _layer_experts(
    files: WeightFiles, config: ModelConfig, layer: int, opts: UpcycleOptions, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """experts.w1/w2/w3 [N, ...]: the dense FFN per expert with noise; w3 scaled by 1 / (sum of
    the scores a token gets from a zero router)."""
    n, f, d = config.num_experts, config.ffn_size, config.hidden_size
    shapes = {"w1": (f, d), "w2": (f, d), "w3": (d, f)}
    out = {}
    for native, name in _FFN:
        dense = _read(files, f"model.layers.{layer}.mlp.{name}.weight", shapes[native])
        stacked = dense.expand(n, *dense.shape).clone()
        if opts.noise > 0:
            stacked *= 1 + opts.noise * torch.randn(stacked.shape, generator=gen)
        if native == "w3":
            stacked /= _score_sum(config)
        out[f"layers.{layer}.experts.{native}"] = stacked
    return out


def _score_sum(config: ModelConfig) -> float:
    """The scores' sum for a uniform softmax: 1 when renormalised, else k_min / M."""
    if config.router == "linear":
        return 1.0 if config.normalize_topk else config.top_k / config.num_experts
    return config.k_min / config.experts_per_group


def _read(files: WeightFiles, name: str, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    if name not in files.names():
        raise CheckpointError(f"cannot upcycle {files.folder}: missing tensor {name!r}")
    tensor = files.get(name).to(torch.float32)
    if tuple(tensor.shape) != tuple(shape):
        raise CheckpointError(
            f"cannot upcycle {files.folder}: {name} has shape {list(tensor.shape)}; "
            f"expected {list(shape)}"
        )
    return tensor


def upcycle(
    src: str | Path, dst: str | Path, opts: UpcycleOptions, dtype: torch.dtype | None = None
) -> UpcycleResult:
    """Write the HAG-MoE folder upcycled from the dense folder `src` into `dst` (config.json,
    model.safetensors, the tokenizer files `src` has). `src` is never written."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.resolve() == src.resolve():
        raise CheckpointError(f"upcycle destination {dst} is the source folder; choose another")
    model = upcycled_model(src, opts, dtype=dtype)
    save_model(model, dst)
    copied = copy_tokenizer_files(src, dst)
    return UpcycleResult(str(read_config_json(src)["model_type"]), model.config, copied)
