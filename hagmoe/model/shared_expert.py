"""The shared expert of Qwen2-MoE style layers: one SwiGLU expert every token uses, optionally
scaled by a sigmoid gate, added to the routed experts' output (before feedback).

Legend: T tokens, d hidden size, Fs shared expert FFN size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hagmoe.model.config import ModelConfig
from hagmoe.model.linear import Linear, linear


class SharedExpert(nn.Module):
    """S(u) = w3 (silu(w1 u) * (w2 u)), times sigmoid(gate u) when `shared_expert_gate`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        fs, d = config.shared_expert_size, config.hidden_size
        self.w1 = nn.Parameter(torch.empty(fs, d))  # gate projection
        self.w2 = nn.Parameter(torch.empty(fs, d))  # up projection
        self.w3 = nn.Parameter(torch.empty(d, fs))  # down projection
        self.gate = Linear(d, 1, bias=False) if config.shared_expert_gate else None

    def forward(self, u: Tensor) -> Tensor:
        """u [T, d] -> [T, d]."""
        out = linear(F.silu(linear(u, self.w1)) * linear(u, self.w2), self.w3)
        if self.gate is None:
            return out
        return torch.sigmoid(self.gate(u)) * out  # gate [T, 1]
