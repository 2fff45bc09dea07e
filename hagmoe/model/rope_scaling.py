"""Rotary frequencies with optional context scaling: the `rope_scaling` config key.

`rope_scaling` is null (plain rope) or an object with a "type":
- "linear": {"type": "linear", "factor": f}: every frequency divided by f (positions / f).
- "yarn": {"type": "yarn", "factor": f, "original_max_position": n, "beta_fast": 32, "beta_slow": 1,
  "attention_factor": a, "truncate": true}: YaRN as transformers computes it (frequencies blended
  between interpolation and extrapolation over a linear ramp; cos and sin scaled by a).
  beta_fast, beta_slow, attention_factor and truncate are optional (defaults as shown; a defaults
  to 0.1 * ln(f) + 1 when f > 1, else 1).

Legend: hd head dim.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

import torch
from torch import Tensor

from hagmoe.errors import ConfigError

ROPE_SCALING_TYPES = ("linear", "yarn")
_KEYS = {
    "linear": ({"type", "factor"}, set()),
    "yarn": (
        {"type", "factor", "original_max_position"},
        {"beta_fast", "beta_slow", "attention_factor", "truncate"},
    ),
}


def validate_rope_scaling(scaling: dict[str, Any] | None) -> None:
    """Raise ConfigError naming `rope_scaling` (and the field) when the object breaks the contract."""
    if scaling is None:
        return
    if not isinstance(scaling, dict) or scaling.get("type") not in ROPE_SCALING_TYPES:
        kind = scaling.get("type") if isinstance(scaling, dict) else scaling
        _fail(f"type {kind!r} is not supported; use null or one of {ROPE_SCALING_TYPES}")
    required, optional = _KEYS[scaling["type"]]
    missing, unknown = required - scaling.keys(), scaling.keys() - required - optional
    if missing or unknown:
        _fail(f"{scaling['type']} needs {sorted(required)} (optional {sorted(optional)})")
    for key in ("factor", "beta_fast", "beta_slow", "attention_factor"):
        value = scaling.get(key, 1.0)
        if not (isinstance(value, int | float) and not isinstance(value, bool) and value > 0):
            _fail(f"{key} = {value!r} must be a positive number")
    original = scaling.get("original_max_position", 1)
    if not (isinstance(original, int) and not isinstance(original, bool) and original >= 1):
        _fail(f"original_max_position = {original!r} must be a positive integer")
    if not isinstance(scaling.get("truncate", True), bool):
        _fail(f"truncate = {scaling['truncate']!r} must be true or false")


def rope_frequencies(
    head_dim: int,
    theta: float,
    scaling: dict[str, Any] | None,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, float]:
    """Inverse frequencies [hd/2] in `dtype`, and the factor that scales cos and sin."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).to(dtype) / head_dim
    base = theta**exponents  # [hd/2]
    if scaling is None:
        return 1.0 / base, 1.0
    factor = float(scaling["factor"])
    if scaling["type"] == "linear":
        return (1.0 / base) / factor, 1.0
    return _yarn(base, head_dim, theta, factor, scaling)


def _yarn(
    base: Tensor, head_dim: int, theta: float, factor: float, scaling: dict[str, Any]
) -> tuple[Tensor, float]:
    extrapolation, interpolation = 1.0 / base, 1.0 / (factor * base)  # [hd/2] each
    low, high = _correction_range(
        float(scaling.get("beta_fast", 32.0)),
        float(scaling.get("beta_slow", 1.0)),
        head_dim,
        theta,
        int(scaling["original_max_position"]),
        bool(scaling.get("truncate", True)),
    )
    if low == high:
        high += 0.001
    ramp = (torch.arange(head_dim // 2, dtype=base.dtype, device=base.device) - low) / (high - low)
    keep = 1 - ramp.clamp(0, 1)  # [hd/2] share of the extrapolated frequency
    inv_freq = interpolation * (1 - keep) + extrapolation * keep
    default_attention = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    return inv_freq, float(scaling.get("attention_factor", default_attention))


def _correction_range(
    beta_fast: float, beta_slow: float, dim: int, theta: float, original: int, truncate: bool
) -> tuple[float, float]:
    def dim_of(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


def _fail(why: str) -> NoReturn:
    raise ConfigError(f"config key 'rope_scaling': {why}")
