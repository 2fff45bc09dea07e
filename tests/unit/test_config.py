"""ModelConfig follows MODEL.md's config.json table: defaults, validation, round trips, sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hagmoe.model import NAMED_CONFIGS, ConfigError, ModelConfig, named_config

REQUIRED: dict[str, Any] = {
    "model_type": "hagmoe",
    "vocab_size": 100,
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "ffn_size": 32,
    "num_groups": 2,
    "experts_per_group": 4,
}


def test_defaults_are_resolved() -> None:
    cfg = ModelConfig.from_dict(REQUIRED)
    assert cfg.num_kv_heads == 4
    assert cfg.head_dim == 16
    assert cfg.num_coarse_heads == 2
    assert cfg.feedback_dim == 8
    assert cfg.num_experts == 8


def test_documented_defaults() -> None:
    cfg = ModelConfig.from_dict(REQUIRED)
    assert (cfg.router, cfg.k_min, cfg.k_max, cfg.top_k, cfg.normalize_topk) == (
        ("attention", 1, 4, 2, False)
    )
    assert (cfg.entropy_alpha, cfg.position, cfg.rope_theta, cfg.max_position) == (
        (10.0, "learned", 10000.0, 2048)
    )
    assert (cfg.norm, cfg.norm_eps, cfg.attn_bias, cfg.tie_embeddings) == (
        ("layernorm", 1e-5, True, True)
    )
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (None, None, None)


def test_explicit_values_win_over_derived_defaults() -> None:
    cfg = ModelConfig.from_dict(
        {**REQUIRED, "num_kv_heads": 2, "head_dim": 8, "num_coarse_heads": 1, "feedback_dim": 0}
    )
    assert (cfg.num_kv_heads, cfg.head_dim, cfg.num_coarse_heads, cfg.feedback_dim) == (2, 8, 1, 0)


INVALID: list[tuple[str, dict[str, Any]]] = [
    ("router", dict(router="mixture")),
    ("position", dict(position="alibi")),
    ("norm", dict(norm="batchnorm")),
    ("num_kv_heads", dict(num_kv_heads=3)),
    ("k_max", dict(k_max=5)),
    ("k_max", dict(k_min=3, k_max=2)),
    ("k_min", dict(k_min=0)),
    ("num_coarse_heads", dict(num_coarse_heads=4)),
    ("num_coarse_heads", dict(num_coarse_heads=0)),
    ("top_k", dict(router="linear", top_k=9)),
    ("top_k", dict(router="linear", top_k=0)),
    ("vocab_size", dict(vocab_size=-1)),
    ("hidden_size", dict(hidden_size=-64)),
    ("num_layers", dict(num_layers=-2)),
    ("num_heads", dict(num_heads=-4)),
    ("ffn_size", dict(ffn_size=-32)),
    ("num_groups", dict(num_groups=-2)),
    ("experts_per_group", dict(experts_per_group=-4)),
    ("feedback_dim", dict(feedback_dim=-8)),
    ("head_dim", dict(head_dim=-16)),
    ("max_position", dict(max_position=-1)),
    ("num_layers", dict(num_layers=0)),
    ("num_heads", dict(num_heads=0)),
    ("model_type", dict(model_type="llama")),
    ("eos_token_id", dict(eos_token_id=100)),
]


@pytest.mark.parametrize(("key", "change"), INVALID, ids=[f"{k}={v}" for k, v in INVALID])
def test_invalid_value_names_key_and_value(key: str, change: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_dict({**REQUIRED, **change})
    message = str(err.value)
    assert key in message
    assert repr(change[key]) in message


def test_k_min_above_k_max_names_both() -> None:
    with pytest.raises(ConfigError, match=r"k_max.*2.*k_min=3"):
        ModelConfig.from_dict({**REQUIRED, "k_min": 3, "k_max": 2})


@pytest.mark.parametrize("key", sorted(REQUIRED))
def test_missing_required_key(key: str) -> None:
    data = {k: v for k, v in REQUIRED.items() if k != key}
    with pytest.raises(ConfigError, match=key):
        ModelConfig.from_dict(data)


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        ModelConfig.from_dict({**REQUIRED, "router": "nope"})


def test_round_trip_keeps_every_key_and_extras() -> None:
    data = {
        **REQUIRED,
        "position": "rope",
        "num_kv_heads": 2,
        "qk_norm": True,
        "shared_experts": {"count": 1},
    }
    cfg = ModelConfig.from_dict(data)
    assert cfg.extra == {"qk_norm": True, "shared_experts": {"count": 1}}
    out = cfg.to_dict()
    assert out["qk_norm"] is True and out["shared_experts"] == {"count": 1}
    assert "extra" not in out
    assert out["head_dim"] == 16 and out["feedback_dim"] == 8
    again = ModelConfig.from_dict(out)
    assert again == cfg
    assert again.to_dict() == out


def test_save_and_load_file(tmp_path: Path) -> None:
    cfg = named_config("tiny", router="linear", top_k=3, extra_key="kept")
    path = tmp_path / "config.json"
    cfg.save(path)
    loaded = ModelConfig.from_file(path)
    assert loaded == cfg
    assert loaded.extra == {"extra_key": "kept"}


def test_unreadable_file_raises_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json"):
        ModelConfig.from_file(path)


def test_replace_rederives_defaults() -> None:
    cfg = named_config("tiny")
    assert cfg.replace(num_heads=8, head_dim=None).head_dim == 8
    assert cfg.replace(feedback_dim=0).feedback_dim == 0


SIZES = {
    "small": (12, 512, 8, 4, 4, 1, 4, 64),
    "medium": (24, 1024, 16, 8, 8, 1, 6, 128),
    "large": (36, 2048, 32, 16, 16, 1, 8, 256),
}


@pytest.mark.parametrize("name", ["tiny", "bench", "small", "medium", "large"])
def test_named_config_exists(name: str) -> None:
    assert name in NAMED_CONFIGS
    cfg = named_config(name)
    assert cfg.model_type == "hagmoe" and cfg.router == "attention"


@pytest.mark.parametrize("name", sorted(SIZES))
def test_named_config_matches_model_md_sizes(name: str) -> None:
    cfg = named_config(name)
    got = (cfg.num_layers, cfg.hidden_size, cfg.num_heads)
    got += (cfg.num_groups, cfg.experts_per_group, cfg.k_min, cfg.k_max, cfg.feedback_dim)
    assert got == SIZES[name]
    assert cfg.num_experts == cfg.num_groups * cfg.experts_per_group


def test_named_config_overrides_and_unknown_name() -> None:
    assert named_config("tiny", num_kv_heads=2).num_kv_heads == 2
    with pytest.raises(ConfigError, match="huge"):
        named_config("huge")
