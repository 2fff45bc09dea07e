"""Weight formats of the CPU serving path and their config.json entry (`"quantization"`).

int8 is symmetric weight-only quantisation per output row and per group of `group_size` inner
indices (0: one group, the whole row), scales in float32 or bfloat16 (hagmoe/kernels/quant.py
gives the exact rounding); bfloat16 rounds each weight to nearest even. Activations and
accumulation stay float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hagmoe.errors import ConfigError

QUANTIZATIONS = ("none", "bf16", "int8")  # --quantization
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8}
SCALE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
GROUP_SIZES = (0, 32, 64)  # 0: per output channel
DEFAULT_GROUP_SIZE = 32
CONFIG_KEY = "quantization"  # config.json key of a quantised folder


@dataclass(frozen=True, slots=True)
class WeightFormat:
    """How the quantised weights (linears, experts, head) are stored."""

    dtype: str = "float32"  # "float32", "bfloat16" or "int8"
    group_size: int = 0  # int8: inner indices per scale; 0: the whole row
    scale_dtype: str = "float32"  # int8 scales: "float32" or "bfloat16"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"quantization dtype {self.dtype!r}: choose one of {list(DTYPES)}")
        if self.group_size not in GROUP_SIZES:
            raise ConfigError(
                f"quantization group_size {self.group_size!r}: choose one of {list(GROUP_SIZES)}"
            )
        if self.scale_dtype not in SCALE_DTYPES:
            raise ConfigError(
                f"quantization scale_dtype {self.scale_dtype!r}: choose one of {list(SCALE_DTYPES)}"
            )

    @classmethod
    def named(
        cls,
        name: str,
        group_size: int = DEFAULT_GROUP_SIZE,
        scale_dtype: str = "float32",
    ) -> WeightFormat:
        """The format of a --quantization choice ("none" is float32)."""
        if name not in QUANTIZATIONS:
            raise ConfigError(f"quantization {name!r}: choose one of {list(QUANTIZATIONS)}")
        if name == "int8":
            return cls("int8", group_size, scale_dtype)
        return cls("bfloat16" if name == "bf16" else "float32")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return SCALE_DTYPES[self.scale_dtype]

    @property
    def is_float32(self) -> bool:
        return self.dtype == "float32"

    def group_for(self, inner: int) -> int:
        """The group size over an inner size of `inner`."""
        return self.group_size or inner

    def to_dict(self) -> dict[str, Any]:
        """The config.json entry."""
        out: dict[str, Any] = {"dtype": self.dtype}
        if self.dtype == "int8":
            out.update(group_size=self.group_size, scale_dtype=self.scale_dtype)
        return out

    @classmethod
    def from_dict(cls, data: object) -> WeightFormat:
        """Parse the config.json entry; ConfigError naming the key when it is malformed."""
        if not isinstance(data, dict) or not isinstance(data.get("dtype"), str):
            raise ConfigError(f'config key {CONFIG_KEY!r} must be an object with a "dtype"')
        unknown = set(data) - {"dtype", "group_size", "scale_dtype"}
        if unknown:
            raise ConfigError(f"config key {CONFIG_KEY!r} has unknown fields {sorted(unknown)}")
        group = data.get("group_size", 0)
        if not isinstance(group, int) or isinstance(group, bool):
            raise ConfigError(f"config key {CONFIG_KEY}.group_size must be an integer")
        return cls(data["dtype"], group, str(data.get("scale_dtype", "float32")))
