"""Training HAG-MoE models: corpus and tokenizer, objective, schedules, trainer, experiments."""

from __future__ import annotations

from hagmoe.training.config import (
    DataConfig,
    ObjectiveConfig,
    OptimizerConfig,
    Phase,
    ScheduleConfig,
    TrainConfig,
)
from hagmoe.training.errors import DataError, ResumeError
from hagmoe.training.evaluation import EvalResult, evaluate
from hagmoe.training.objective import LossTerms, LossWeights, objective
from hagmoe.training.trainer import Trainer, TrainResult

__all__ = [
    "DataConfig",
    "DataError",
    "EvalResult",
    "LossTerms",
    "LossWeights",
    "ObjectiveConfig",
    "OptimizerConfig",
    "Phase",
    "ResumeError",
    "ScheduleConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "evaluate",
    "objective",
]
