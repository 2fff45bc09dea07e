"""The experts of one layer: the CPU MoE kernel up to this machine's crossover, else torch's
grouped path (kernels/torch_experts.py: tokens grouped by expert, one matmul chain per active
expert, dynamic K by masking).

Legend: T tokens, K max experts per token, N experts, F expert FFN size, d hidden size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hagmoe.kernels import cpu
from hagmoe.kernels.packed import PackedExperts
from hagmoe.kernels.torch_experts import grouped_swiglu
from hagmoe.kernels.tuning import moe_kernel_wins
from hagmoe.model.config import ModelConfig
from hagmoe.quantization.format import WeightFormat


class Experts(nn.Module):
    """N SwiGLU experts E(x) = w3 (silu(w1 x) * (w2 x)), stored stacked as in MODEL.md, or
    only in the kernels' packed form once `pack_in_place` dropped the parameters."""

    packed: PackedExperts | None = None

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        n, f, d = config.num_experts, config.ffn_size, config.hidden_size
        self.w1 = nn.Parameter(torch.empty(n, f, d))  # gate projection
        self.w2 = nn.Parameter(torch.empty(n, f, d))  # up projection
        self.w3 = nn.Parameter(torch.empty(n, d, f))  # down projection

    def forward(self, x: Tensor, experts: Tensor, scores: Tensor) -> Tensor:
        """sum_k scores[t, k] * E_{experts[t, k]}(x[t]) for x [T, d], experts/scores [T, K] (-1 = none)."""
        if self.packed is not None:
            if self.packed.runs(x, experts):
                return self.packed(x, experts, scores)
            w1, w2, w3 = self.packed.dequantize(x.dtype)
        elif self._use_kernel(x, experts):
            panels = cpu.expert_panels(self.w1, self.w2, self.w3)
            return cpu.moe_swiglu(x, experts, scores, *panels)
        else:
            w1, w2, w3 = self.w1, self.w2, self.w3
        return grouped_swiglu(x, experts, scores, w1, w2, w3)

    def pack_cpu_weights(self) -> None:
        """Pack the weights for the CPU kernel now rather than on the first call (a copy kept
        beside the parameters; nothing to do once packed in place)."""
        if self.packed is None and self._kernel_shapes():
            cpu.expert_panels(self.w1, self.w2, self.w3)

    def pack_in_place(self, fmt: WeightFormat) -> bool:
        """Keep only the weights packed in `fmt` (w1, w2, w3 become None); False, and nothing
        changes, where the kernels do not take this layer's sizes."""
        if self.packed is not None:
            return True
        if not self._kernel_shapes():
            return False
        self.packed = PackedExperts.from_weights(self.w1, self.w2, self.w3, fmt)
        self.w1 = self.w2 = self.w3 = None  # type: ignore[assignment]
        return True

    def _kernel_shapes(self) -> bool:
        _, f, d = self.w1.shape
        return PackedExperts.fits(f, d)

    def _use_kernel(self, x: Tensor, experts: Tensor) -> bool:
        """The CPU kernel wins while experts see few pairs each (decode and mixed steps), up to
        this machine's crossover (tuning)."""
        return (
            self._kernel_shapes()
            and cpu.enabled_for(x)
            and moe_kernel_wins(experts, self.w1.shape[0])
        )
