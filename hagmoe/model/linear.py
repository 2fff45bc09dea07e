"""Linear layers that run serving-sized float32 CPU batches on hagmoe's own kernel over packed
weight panels, where MKL's small-M GEMM runs well below the machine's peak
(docs/benchmarks.md)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from hagmoe.kernels import cpu

KERNEL_ROWS = 128  # up to this many rows the kernel beats MKL on the CI machine


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear(x, weight, bias) for x [m, k]; the CPU kernel takes m <= KERNEL_ROWS when weight
    is a parameter (its packed copy is kept with it)."""
    if (
        x.dim() == 2
        and x.shape[0] <= KERNEL_ROWS
        and isinstance(weight, nn.Parameter)
        and cpu.enabled_for(x)
    ):
        return cpu.linear(x, cpu.linear_panels(weight), weight.shape[0], bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters and names) whose forward goes through `linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)

    def pack_cpu_weights(self) -> None:
        """Pack the weight for the CPU kernel now rather than on the first call."""
        cpu.linear_panels(self.weight)
