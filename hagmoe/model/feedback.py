"""Expert-identity feedback: x_out = h + o * (1 + gamma * tanh(W_r sum_k s_k w_{e_k})).

Legend: T tokens, K max experts per token, N experts, R feedback dim, d hidden size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hagmoe.model.config import ModelConfig
from hagmoe.model.linear import Linear


class Feedback(nn.Module):
    """Scales the MoE output by the chosen experts' identity embeddings."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.expert_embed = nn.Parameter(torch.empty(config.num_experts, config.feedback))
        self.proj = Linear(config.feedback, config.hidden_size, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, o: Tensor, experts: Tensor, scores: Tensor) -> Tensor:
        """o [T, d] -> o * (1 + gamma * tanh(r)), with experts/scores [T, K] (-1 / 0 = none)."""
        emb = self.expert_embed[experts.clamp_min(0)]  # [T, K, R]
        mix = (scores.unsqueeze(-1) * emb).sum(1)  # [T, R]
        return o * (1 + self.gamma * torch.tanh(self.proj(mix)))
