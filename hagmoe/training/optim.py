"""AdamW with parameter groups, and gradient clipping.

Weight decay applies to every matrix (attention, routers, experts, feedback projection, token and
position embeddings, lm_head) and not to vectors and scalars (norms, biases, gamma) nor to the
experts' identity embeddings `feedback.expert_embed`, whose scale the feedback path reads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hagmoe.training.config import OptimizerConfig

EXPERT_EMBED = "feedback.expert_embed"


def decays(name: str, param: nn.Parameter) -> bool:
    """Whether weight decay applies to a parameter (see the module docstring)."""
    return param.ndim >= 2 and not name.endswith(EXPERT_EMBED)


def _grouped(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], ...]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [(n, p) for n, p in named if decays(n, p)], [
        (n, p) for n, p in named if not decays(n, p)
    ]


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.AdamW:
    """AdamW over two groups (decay / no decay); the learning rate is set per step by the trainer."""
    decay, no_decay = _grouped(model)
    groups: list[dict[str, Any]] = [
        {"params": [p for _, p in decay], "weight_decay": cfg.weight_decay},
        {"params": [p for _, p in no_decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def optimizer_param_names(model: nn.Module) -> list[str]:
    """Parameter names in build_optimizer's order: optimizer.state_dict() numbers them 0, 1, ..."""
    decay, no_decay = _grouped(model)
    return [n for n, _ in decay + no_decay]


def clip_gradients(model: nn.Module, cfg: OptimizerConfig) -> float:
    """Clip each layer's expert_embed gradient to norm expert_embed_grad_clip, then all gradients
    together to grad_clip (each step skipped when its limit is 0). Returns the global gradient
    norm before the global clip (whole-model norm under FSDP too)."""
    if cfg.expert_embed_grad_clip > 0:
        for name, param in model.named_parameters():
            if name.endswith(EXPERT_EMBED) and param.grad is not None:
                torch.nn.utils.clip_grad_norm_(param, cfg.expert_embed_grad_clip)
    params = [p for p in model.parameters() if p.grad is not None]
    limit = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    total = torch.nn.utils.clip_grad_norm_(params, limit)
    full = getattr(total, "full_tensor", None)  # a DTensor under FSDP
    return float(full() if full is not None else total)
