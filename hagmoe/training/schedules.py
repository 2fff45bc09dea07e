"""Everything that changes with the step: learning rate, lam ramps, K warm-up, sequence-length
curriculum, and the running mean mu_H of the normalised coarse entropy.

Legend: T flat tokens of a step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hagmoe.model.config import ModelConfig
from hagmoe.model.model import HagMoEModel
from hagmoe.model.router import AttentionRouter
from hagmoe.model.routing import LayerRouting
from hagmoe.training.config import ObjectiveConfig, OptimizerConfig, Phase
from hagmoe.training.objective import LossWeights
from hagmoe.training.reduce import LOCAL, BatchReduce


def lr_at(step: int, opt: OptimizerConfig, total_steps: int) -> float:
    """Linear warm-up to opt.lr over warmup_steps (step 0 gets lr / warmup_steps), then cosine
    decay reaching opt.min_lr at the last step (total_steps - 1)."""
    if step < opt.warmup_steps:
        return opt.lr * (step + 1) / opt.warmup_steps
    span = max(1, total_steps - 1 - opt.warmup_steps)
    progress = min(1.0, (step - opt.warmup_steps) / span)
    return opt.min_lr + 0.5 * (opt.lr - opt.min_lr) * (1.0 + math.cos(math.pi * progress))


def ramp(step: int, ramp_steps: int) -> float:
    """0 at step 0, rising linearly to 1 at ramp_steps (1 throughout when ramp_steps <= 0)."""
    return 1.0 if ramp_steps <= 0 else min(1.0, step / ramp_steps)


def loss_weights(step: int, objective: ObjectiveConfig) -> LossWeights:
    """Every lam of the objective at this step of its ramp."""
    r = ramp(step, objective.ramp_steps)
    return LossWeights(
        group=r * objective.lam_group,
        expert=r * objective.lam_expert,
        div=r * objective.lam_div,
        gamma=r * objective.lam_gamma,
        z=r * objective.lam_z,
        div_cap=objective.div_cap,
    )


def k_override_at(step: int, model: ModelConfig, k_warmup_steps: int) -> int | None:
    """k_min while step < k_warmup_steps (attention router), else None (dynamic K)."""
    if model.router == "attention" and step < k_warmup_steps:
        return model.k_min
    return None


def phase_at(step: int, curriculum: list[Phase]) -> Phase:
    """The first phase with step < until_step; the last phase once all have ended."""
    for phase in curriculum:
        if step < phase.until_step:
            return phase
    return curriculum[-1]


@torch.no_grad()
def update_entropy_means(
    model: HagMoEModel,
    routing: list[LayerRouting],
    mask: Tensor,
    momentum: float,
    initialise: bool,
    reduce: BatchReduce = LOCAL,
) -> list[float]:
    """Move each attention-routed layer's mu_H (`router.entropy_mean`) toward the mean of Hn over
    the tokens in mask [T] (bool): mu_H <- momentum mu_H + (1 - momentum) mean, or mu_H <- mean
    when initialise (the first step, so mu_H does not start from its init value 0); the mean is
    over the global batch when `reduce` says it is split across ranks. Returns the new values
    (one per attention-routed layer)."""
    values: list[float] = []
    for layer, r in zip(model.layers, routing, strict=True):
        router = layer.router
        if not isinstance(router, AttentionRouter):
            continue
        batch = reduce.global_mean(r.entropy[mask]).to(router.entropy_mean.dtype)
        new = batch if initialise else momentum * router.entropy_mean + (1 - momentum) * batch
        router.entropy_mean.copy_(new)
        values.append(float(router.entropy_mean))
    return values


def scored_positions(batch: int, seq_len: int, device: torch.device | str = "cpu") -> Tensor:
    """[B*T] bool: the flat tokens whose Hn is a measurement (position >= 1; Hn[0] is 0 by
    definition, log(1) having no entropy to normalise)."""
    return (torch.arange(seq_len, device=device) >= 1).repeat(batch)
