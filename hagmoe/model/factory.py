"""Random-weight models for tests and benchmarks."""

from __future__ import annotations

import math

import torch
from torch import nn

from hagmoe.model.config import ModelConfig, named_config
from hagmoe.model.model import HagMoEModel


def random_model(
    config: ModelConfig | str,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> HagMoEModel:
    """A model with deterministic random weights (same seed, same weights, on any machine).

    Projections are drawn with std 1/sqrt(fan_in) so attention is neither flat nor one-hot and
    routing varies; gamma and mu_H are set non-trivially so feedback and dynamic K are exercised."""
    cfg = named_config(config) if isinstance(config, str) else config
    with torch.device("meta"):
        model = HagMoEModel(cfg)
    model = model.to_empty(device="cpu").to(torch.float32)
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in sorted(model.state_dict(keep_vars=True).items()):
        with torch.no_grad():
            tensor.copy_(_draw(name, tensor, gen))
    return model.to(device=device, dtype=dtype).eval()


def _draw(name: str, tensor: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    shape = tensor.shape
    if name.endswith("norm.weight"):
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if name.endswith(".bias"):
        return 0.02 * torch.randn(shape, generator=gen)
    if name.endswith("entropy_mean"):
        return torch.full(shape, 0.6)
    if name.endswith("gamma"):
        return torch.full(shape, 0.5)
    if name.startswith(("embed", "pos_embed")):
        return torch.randn(shape, generator=gen)
    fan_in = shape[-1]
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)


def init_weights(model: HagMoEModel, seed: int = 0) -> None:
    """Training initialisation: std 0.02 projections, unit norms, gamma = 0, mu_H = 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if name.endswith("norm.weight"):
                tensor.fill_(1.0)
            elif name.endswith((".bias", "gamma", "entropy_mean")):
                tensor.zero_()
            else:
                tensor.copy_(0.02 * torch.randn(tensor.shape, generator=gen))
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
