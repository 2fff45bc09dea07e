"""Linear layers that run serving-sized float32 CPU batches on hagmoe's own kernel over packed
weight panels, where MKL's small-M GEMM runs well below the machine's peak
(docs/benchmarks.md); packed for serving, they hold only the panels (float32, bf16 or int8)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from hagmoe.kernels import cpu
from hagmoe.kernels.packed import PackedLinear
from hagmoe.kernels.tuning import tuning
from hagmoe.quantization.format import WeightFormat


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear(x, weight, bias) for x [m, k]; the CPU kernel takes the rows it beats F.linear
    at on this machine (tuning) when weight is a parameter (its packed copy is kept with it)."""
    if (
        x.dim() == 2
        and isinstance(weight, nn.Parameter)
        and cpu.enabled_for(x)
        and x.shape[0] <= tuning().plain_rows
    ):
        return cpu.linear(x, cpu.linear_panels(weight), weight.shape[0], bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters and names) whose forward goes through `linear`, or through
    its packed weight once `pack_in_place` dropped the parameter."""

    packed: PackedLinear | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.packed is not None:
            return self.packed(x, self.bias)
        return linear(x, self.weight, self.bias)

    def pack_cpu_weights(self) -> None:
        """Pack the weight for the CPU kernel now rather than on the first call (a copy kept
        beside the parameter; nothing to do once packed in place)."""
        if self.packed is None:
            cpu.linear_panels(self.weight)

    def pack_in_place(self, fmt: WeightFormat) -> None:
        """Keep only the weight packed in `fmt` (the parameter `weight` becomes None)."""
        if self.packed is None:
            self.packed = PackedLinear.from_weight(self.weight, fmt)
            self.weight = None  # type: ignore[assignment]
