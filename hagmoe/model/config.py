"""The model configuration: every key of MODEL.md's config.json table, with its default."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hagmoe.errors import ConfigError
from hagmoe.model.imported_keys import validate_imported_keys

MODEL_TYPE = "hagmoe"
ROUTERS = ("attention", "linear")
POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")


@dataclass(slots=True)
class ModelConfig:
    """A HAG-MoE configuration. Keys and defaults follow MODEL.md; `None` means "derive"."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_size: int
    num_groups: int
    experts_per_group: int
    model_type: str = MODEL_TYPE
    num_kv_heads: int | None = None
    head_dim: int | None = None
    router: str = "attention"
    k_min: int = 1
    k_max: int = 4
    top_k: int = 2
    normalize_topk: bool = False
    entropy_alpha: float = 10.0
    num_coarse_heads: int | None = None
    feedback_dim: int | None = None
    position: str = "learned"
    rope_theta: float = 10000.0
    max_position: int = 2048
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    attn_bias: bool = True
    tie_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # Keys of imported MoE families (MODEL.md rows); the defaults leave HAG-MoE unchanged.
    attn_out_bias: bool | None = None
    qk_norm_type: str | None = None
    clip_qkv: float | None = None
    sliding_window: int | None = None
    rope_scaling: dict[str, Any] | None = None
    shared_expert_size: int = 0
    shared_expert_gate: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._validate_sizes()
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if self.head_dim is None:
            _check(
                self.hidden_size % self.num_heads == 0,
                "head_dim",
                None,
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; set head_dim",
            )
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_coarse_heads is None:
            self.num_coarse_heads = self.num_heads // 2
        if self.feedback_dim is None:
            self.feedback_dim = self.hidden_size // 8
        if self.attn_out_bias is None:
            self.attn_out_bias = self.attn_bias
        self.validate()

    # Derived sizes, named as in MODEL.md's notation.
    @property
    def num_experts(self) -> int:
        """N = G * M."""
        return self.num_groups * self.experts_per_group

    @property
    def kv_heads(self) -> int:
        assert self.num_kv_heads is not None
        return self.num_kv_heads

    @property
    def hd(self) -> int:
        assert self.head_dim is not None
        return self.head_dim

    @property
    def coarse_heads(self) -> int:
        assert self.num_coarse_heads is not None
        return self.num_coarse_heads

    @property
    def feedback(self) -> int:
        assert self.feedback_dim is not None
        return self.feedback_dim

    @property
    def max_experts_per_token(self) -> int:
        """The most experts one token can use: k_max (attention router) or top_k (linear)."""
        return self.k_max if self.router == "attention" else self.top_k

    @property
    def num_routing_values(self) -> int:
        """Routing values cached per token and layer: G + N (attention router), else 0."""
        return self.num_groups + self.num_experts if self.router == "attention" else 0

    @property
    def cache_values_per_token(self) -> int:
        """Floats the serving cache holds per token and layer: 2 * Hkv * hd + routing values."""
        return 2 * self.kv_heads * self.hd + self.num_routing_values

    def validate(self) -> None:
        """Raise ConfigError naming the first key whose value breaks the contract."""
        _check(
            self.model_type == MODEL_TYPE,
            "model_type",
            self.model_type,
            f"unknown model_type; expected {MODEL_TYPE!r}",
        )
        self._validate_sizes()
        _check(self.router in ROUTERS, "router", self.router, f"must be one of {ROUTERS}")
        _check(self.position in POSITIONS, "position", self.position, f"must be one of {POSITIONS}")
        _check(self.norm in NORMS, "norm", self.norm, f"must be one of {NORMS}")
        _check(
            1 <= self.kv_heads <= self.num_heads and self.num_heads % self.kv_heads == 0,
            "num_kv_heads",
            self.num_kv_heads,
            f"must divide num_heads ({self.num_heads})",
        )
        _check(self.hd >= 1, "head_dim", self.head_dim, "must be a positive integer")
        _check(
            self.position != "rope" or self.hd % 2 == 0,
            "head_dim",
            self.head_dim,
            "must be even with position = 'rope'",
        )
        _check(self.rope_theta > 0, "rope_theta", self.rope_theta, "must be positive")
        _check(self.norm_eps > 0, "norm_eps", self.norm_eps, "must be positive")
        _check(self.feedback >= 0, "feedback_dim", self.feedback_dim, "must be >= 0")
        _check(
            math.isfinite(self.entropy_alpha), "entropy_alpha", self.entropy_alpha, "must be finite"
        )
        if self.router == "attention":
            _check(self.k_min >= 1, "k_min", self.k_min, "must be >= 1")
            _check(
                self.k_min <= self.k_max <= self.experts_per_group,
                "k_max",
                self.k_max,
                f"must lie in [k_min={self.k_min}, experts_per_group={self.experts_per_group}]",
            )
            _check(
                1 <= self.coarse_heads < self.num_heads,
                "num_coarse_heads",
                self.num_coarse_heads,
                f"must lie in [1, num_heads - 1 = {self.num_heads - 1}] (coarse and fine heads both needed)",
            )
        else:
            _check(
                1 <= self.top_k <= self.num_experts,
                "top_k",
                self.top_k,
                f"must lie in [1, num_experts={self.num_experts}]",
            )
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, key)
            _check(
                value is None or 0 <= value < self.vocab_size,
                key,
                value,
                f"must be null or in [0, vocab_size={self.vocab_size})",
            )
        validate_imported_keys(self)

    def _validate_sizes(self) -> None:
        for key in _POSITIVE_INTS:
            value = getattr(self, key)
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                key,
                value,
                "must be a positive integer",
            )
        for key in _OPTIONAL_INTS:
            value = getattr(self, key)
            _check(
                value is None or (isinstance(value, int) and not isinstance(value, bool)),
                key,
                value,
                "must be an integer",
            )
        for key in ("entropy_alpha", "rope_theta", "norm_eps"):
            value = getattr(self, key)
            _check(
                isinstance(value, int | float) and not isinstance(value, bool),
                key,
                value,
                "must be a number",
            )

    def to_dict(self) -> dict[str, Any]:
        """The config.json content: every key, defaults resolved, extra keys kept."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from config.json content. Unknown keys are kept in `extra` and written back."""
        if "model_type" not in data:
            raise ConfigError("config key 'model_type' is missing; expected 'hagmoe'")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        for key in _REQUIRED:
            if key not in data:
                raise ConfigError(f"config key {key!r} is missing (required)")
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        try:
            return cls(**kwargs, extra=extra)
        except TypeError as exc:  # a value of the wrong kind for arithmetic above
            raise ConfigError(f"invalid config: {exc}") from exc

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        """Read config.json; errors name the file."""
        return cls.from_dict(read_json_config(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some keys changed (derived keys re-derived unless given)."""
        data = self.to_dict()
        data.update(changes)
        return ModelConfig.from_dict(data)


_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "ffn_size",
    "num_groups",
    "experts_per_group",
)
_POSITIVE_INTS = (
    *_REQUIRED,
    "max_position",
    "k_min",
    "k_max",
    "top_k",
)
_OPTIONAL_INTS = (
    "num_kv_heads",
    "head_dim",
    "num_coarse_heads",
    "feedback_dim",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sliding_window",
)


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key!r} = {value!r}: {why}")


# Named configurations. small / medium / large follow MODEL.md's table; the research description
# gives no vocabulary or expert FFN size, so we chose V = 32,000 and F as below (fine-grained
# experts, F shrinking as N grows). "bench" is the anchor shape of shared/anchors; "tiny" is for tests.
_TOPK: dict[str, Any] = dict(  # what hf_import's config_map gives a Mixtral
    router="linear",
    normalize_topk=True,
    feedback_dim=0,
    position="rope",
    norm="rmsnorm",
    attn_bias=False,
    tie_embeddings=False,
    max_position=4096,
)
NAMED_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=320,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        ffn_size=96,
        num_groups=2,
        experts_per_group=4,
        k_min=1,
        k_max=3,
        feedback_dim=8,
        max_position=512,
    ),
    "bench": dict(
        vocab_size=4096,
        hidden_size=256,
        num_layers=4,
        num_heads=8,
        ffn_size=512,
        num_groups=4,
        experts_per_group=4,
        k_min=1,
        k_max=4,
        feedback_dim=32,
    ),
    # Issue 18's CPU shapes, the standard top-k family (Mixtral's layout): S is the bench shape
    # with a linear router, M is granite-1b-a400m's class (1.3 B parameters, 0.41 B a token).
    "topk-s": dict(
        vocab_size=4096,
        hidden_size=256,
        num_layers=4,
        num_heads=8,
        ffn_size=512,
        num_groups=1,
        experts_per_group=16,
        **_TOPK,
        top_k=2,
    ),
    "topk-m": dict(
        vocab_size=32000,
        hidden_size=1024,
        num_layers=24,
        num_heads=16,
        num_kv_heads=8,
        ffn_size=512,
        num_groups=1,
        experts_per_group=32,
        **_TOPK,
        top_k=8,
    ),
    "small": dict(
        vocab_size=32000,
        hidden_size=512,
        num_layers=12,
        num_heads=8,
        ffn_size=1024,
        num_groups=4,
        experts_per_group=4,
        k_min=1,
        k_max=4,
        feedback_dim=64,
    ),
    "medium": dict(
        vocab_size=32000,
        hidden_size=1024,
        num_layers=24,
        num_heads=16,
        ffn_size=1024,
        num_groups=8,
        experts_per_group=8,
        k_min=1,
        k_max=6,
        feedback_dim=128,
    ),
    "large": dict(
        vocab_size=32000,
        hidden_size=2048,
        num_layers=36,
        num_heads=32,
        ffn_size=1024,
        num_groups=16,
        experts_per_group=16,
        k_min=1,
        k_max=8,
        feedback_dim=256,
    ),
}


def named_config(name: str, **overrides: Any) -> ModelConfig:
    """One of NAMED_CONFIGS, with optional key overrides."""
    if name not in NAMED_CONFIGS:
        raise ConfigError(f"unknown config name {name!r}; choose one of {sorted(NAMED_CONFIGS)}")
    return ModelConfig.from_dict({"model_type": MODEL_TYPE, **NAMED_CONFIGS[name], **overrides})


def read_json_config(path: str | Path) -> dict[str, Any]:
    """A config JSON file as a dict; ConfigError naming the file when unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must hold a JSON object")
    return data
