"""Validation of the config keys that imported MoE families add (MODEL.md rows): output-projection
bias, q/k norms, q/k/v clipping, sliding window, rope scaling, and the shared expert.

Every default leaves a native HAG-MoE model unchanged."""

from __future__ import annotations

from typing import Any, Protocol

from hagmoe.errors import ConfigError
from hagmoe.model.rope_scaling import validate_rope_scaling


class ImportedKeys(Protocol):
    """The ModelConfig keys checked here (a protocol, so this module need not import config)."""

    attn_out_bias: bool | None
    shared_expert_gate: bool
    qk_norm_type: str | None
    clip_qkv: float | None
    sliding_window: int | None
    router: str
    position: str
    rope_scaling: dict[str, Any] | None
    shared_expert_size: int


QK_NORM_TYPES = (None, "head", "projection")


def validate_imported_keys(config: ImportedKeys) -> None:
    """Raise ConfigError naming the first imported-family key whose value breaks the contract."""
    for key in ("attn_out_bias", "shared_expert_gate"):
        value = getattr(config, key)
        _check(isinstance(value, bool), key, value, "must be true or false")
    _check(
        config.qk_norm_type in QK_NORM_TYPES,
        "qk_norm_type",
        config.qk_norm_type,
        f"must be one of {QK_NORM_TYPES}",
    )
    _check(
        config.clip_qkv is None or (_is_number(config.clip_qkv) and config.clip_qkv > 0),
        "clip_qkv",
        config.clip_qkv,
        "must be null or a positive number",
    )
    _validate_window(config)
    _check(
        config.rope_scaling is None or config.position == "rope",
        "rope_scaling",
        config.rope_scaling,
        "needs position = 'rope'",
    )
    validate_rope_scaling(config.rope_scaling)
    _validate_shared_expert(config)


def _validate_window(config: ImportedKeys) -> None:
    window = config.sliding_window
    _check(window is None or window >= 1, "sliding_window", window, "must be null or >= 1")
    _check(
        window is None or config.router == "linear",
        "sliding_window",
        window,
        "needs router = 'linear' (the attention router's entropy spans every earlier token)",
    )


def _validate_shared_expert(config: ImportedKeys) -> None:
    size = config.shared_expert_size
    _check(
        isinstance(size, int) and not isinstance(size, bool) and size >= 0,
        "shared_expert_size",
        size,
        "must be a non-negative integer",
    )
    _check(
        size > 0 or not config.shared_expert_gate,
        "shared_expert_gate",
        config.shared_expert_gate,
        "needs shared_expert_size > 0",
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key!r} = {value!r}: {why}")
