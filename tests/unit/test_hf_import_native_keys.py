"""The config keys imported families add, on native models (no transformers needed): validation,
defaults that change nothing, checkpoint round trips, and MODEL.md's engine exactness (float64)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model import (
    ConfigError,
    HagMoEModel,
    load_model,
    named_config,
    random_model,
    save_model,
)
from hagmoe.model.rope import rope_cos_sin
from hagmoe.model.rope_scaling import rope_frequencies

TOL = 1e-9
LINEAR: dict[str, Any] = dict(
    router="linear", position="rope", norm="rmsnorm", feedback_dim=0, num_kv_heads=2, top_k=2
)
YARN = {"type": "yarn", "factor": 4.0, "original_max_position": 16}
FEATURES: dict[str, dict[str, Any]] = {
    "qwen2-like": dict(
        LINEAR,
        attn_out_bias=False,
        shared_expert_size=40,
        shared_expert_gate=True,
        sliding_window=5,
    ),
    "qwen3-like": dict(LINEAR, attn_bias=False, qk_norm_type="head", rope_scaling=YARN),
    "olmoe-like": dict(
        LINEAR,
        attn_bias=False,
        qk_norm_type="projection",
        clip_qkv=1.5,
        rope_scaling={"type": "linear", "factor": 2.0},
    ),
}


def _model(seed: int = 3, dtype: torch.dtype = torch.float64, **keys: Any) -> HagMoEModel:
    return random_model(named_config("tiny", **keys), seed=seed, dtype=dtype)


INVALID = [
    ({"qk_norm_type": "rms"}, "qk_norm_type"),
    ({"clip_qkv": -1.0}, "clip_qkv"),
    ({"clip_qkv": True}, "clip_qkv"),
    ({"sliding_window": 0, "router": "linear"}, "sliding_window"),
    ({"sliding_window": 4}, "sliding_window' = 4: needs router = 'linear'"),
    ({"sliding_window": 2.5, "router": "linear"}, "sliding_window"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}, "position": "rope"}, "'dynamic'"),
    ({"rope_scaling": {"type": "linear"}, "position": "rope"}, "linear needs"),
    ({"rope_scaling": {"type": "linear", "factor": 0}, "position": "rope"}, "factor = 0"),
    ({"rope_scaling": {"type": "yarn", "factor": 2.0}, "position": "rope"}, "yarn needs"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "needs position = 'rope'"),
    ({"shared_expert_size": -1}, "shared_expert_size"),
    ({"shared_expert_gate": True}, "shared_expert_gate' = True: needs shared_expert_size"),
    ({"attn_out_bias": "yes"}, "attn_out_bias"),
]


@pytest.mark.parametrize(("keys", "match"), INVALID)
def test_invalid_values_name_key_and_value(keys: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        named_config("tiny", **keys)


def test_defaults_leave_native_models_unchanged() -> None:
    cfg = named_config("tiny")
    assert (cfg.qk_norm_type, cfg.clip_qkv, cfg.sliding_window, cfg.rope_scaling) == (None,) * 4
    assert (cfg.shared_expert_size, cfg.shared_expert_gate) == (0, False)
    assert (
        cfg.attn_out_bias is True and named_config("tiny", attn_bias=False).attn_out_bias is False
    )
    names = set(_model().state_dict())
    assert "layers.0.attn.o_proj.bias" in names
    assert not any("q_norm" in n or "k_norm" in n or "shared_expert" in n for n in names)


def test_linear_rope_scaling_divides_positions() -> None:
    positions = torch.arange(40)
    cos, sin = rope_cos_sin(positions, 16, 500.0, torch.float64, {"type": "linear", "factor": 4.0})
    ref_cos, ref_sin = rope_cos_sin(positions / 4.0, 16, 500.0, torch.float64)
    assert torch.allclose(cos, ref_cos, atol=1e-12) and torch.allclose(sin, ref_sin, atol=1e-12)


def test_yarn_keeps_high_frequencies_and_scales_attention() -> None:
    cpu = torch.device("cpu")
    plain, _ = rope_frequencies(16, 10000.0, None, torch.float64, cpu)
    inv_freq, attention = rope_frequencies(16, 10000.0, YARN, torch.float64, cpu)
    assert attention == pytest.approx(0.1 * math.log(4.0) + 1.0)
    assert inv_freq[0] == plain[0]  # fastest rotation: extrapolated (kept)
    assert torch.allclose(inv_freq[2:], plain[2:] / 4.0, rtol=1e-12)  # slow ones: interpolated
    cos, _ = rope_cos_sin(torch.arange(3), 16, 10000.0, torch.float64, YARN)
    assert torch.allclose(cos[0], torch.full((16,), attention, dtype=torch.float64))


def test_wide_sliding_window_changes_nothing_and_narrow_one_does() -> None:
    ids = torch.randint(0, 320, (2, 14), generator=torch.Generator().manual_seed(0))
    plain = _model(**LINEAR).forward_full(ids).logits
    wide = _model(**LINEAR, sliding_window=14).forward_full(ids).logits
    narrow = _model(**LINEAR, sliding_window=3).forward_full(ids).logits
    assert torch.equal(plain, wide)
    assert torch.equal(plain[:, :3], narrow[:, :3]) and not torch.allclose(plain, narrow)


def test_zero_shared_expert_adds_nothing() -> None:
    ids = torch.randint(0, 320, (1, 9), generator=torch.Generator().manual_seed(1))
    model = _model(**LINEAR, shared_expert_size=24, shared_expert_gate=True)
    plain = _model(**LINEAR)
    with torch.no_grad():
        for layer in model.layers:
            layer.shared_expert.w3.zero_()
    state = {k: v for k, v in model.state_dict().items() if "shared_expert" not in k}
    plain.load_state_dict(state)
    assert torch.equal(model.forward_full(ids).logits, plain.forward_full(ids).logits)


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    model = _model(dtype=torch.float32, **FEATURES[name])
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.config == model.config
    ids = torch.arange(12)[None]
    assert torch.equal(loaded.forward_full(ids).logits, model.forward_full(ids).logits)


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_engine_matches_full_forward(name: str) -> None:
    """Chunked prefill, batching, decode and a prefix-cache hit against forward_full (float64)."""
    model = _model(**FEATURES[name])
    options: dict[str, Any] = dict(dtype="float64", keep_logits=True, block_size=4)
    engine = EngineCore(model, None, EngineConfig(**options, max_num_batched_tokens=7))
    gen = torch.Generator().manual_seed(2)
    shared = torch.randint(0, 320, (12,), generator=gen).tolist()
    waves = [[shared], [[*shared, 9, 4, 1], torch.randint(0, 320, (5,), generator=gen).tolist()]]
    params = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
    checked = 0
    for wave, prompts in enumerate(waves):
        requests = {
            f"w{wave}r{i}": engine.add_request(f"w{wave}r{i}", p, params)
            for i, p in enumerate(prompts)
        }
        while engine.has_unfinished_requests():
            for out in engine.step():
                seq = requests[out.request_id].all_token_ids[:-1]
                ref = model.forward_full(torch.tensor([seq])).logits[0, -1]
                got = engine.last_logits[out.request_id]
                assert (got - ref).abs().max() / ref.abs().max() < TOL
                checked += 1
    assert checked == 6 * 3
    assert engine.kv_cache.stats.hits >= 12
