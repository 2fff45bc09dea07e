"""Linear layers that run decode-sized float32 CPU batches on hagmoe's own kernel, where MKL's
small-M GEMM reads weights at a fraction of memory bandwidth (docs/benchmarks.md)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from hagmoe.kernels import cpu

SMALL_ROWS = 16  # up to this many rows the kernel beats MKL on the CI machine


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear(x, weight, bias) for x [m, k]; the CPU kernel takes m <= SMALL_ROWS."""
    if (
        x.dim() == 2
        and x.shape[0] <= SMALL_ROWS
        and x.shape[1] % cpu.LANES == 0
        and cpu.enabled_for(x)
    ):
        return cpu.linear(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters and names) whose forward goes through `linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
