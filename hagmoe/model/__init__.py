"""The HAG-MoE model: config, layers, forward, checkpoints, tokenizer, random factory."""

from __future__ import annotations

from hagmoe.errors import CheckpointError, ConfigError, HagMoEError, TokenizerError
from hagmoe.model.checkpoint import load_config, load_model, save_model
from hagmoe.model.config import NAMED_CONFIGS, ModelConfig, named_config
from hagmoe.model.factory import init_weights, random_model
from hagmoe.model.forward_context import ForwardContext, Segment, TrainingOptions
from hagmoe.model.model import FullOutput, HagMoEModel
from hagmoe.model.routing import LayerRouting
from hagmoe.model.tokenizer import Tokenizer

__all__ = [
    "NAMED_CONFIGS",
    "CheckpointError",
    "ConfigError",
    "ForwardContext",
    "FullOutput",
    "HagMoEError",
    "HagMoEModel",
    "LayerRouting",
    "ModelConfig",
    "Segment",
    "Tokenizer",
    "TokenizerError",
    "TrainingOptions",
    "init_weights",
    "load_config",
    "load_model",
    "named_config",
    "random_model",
    "save_model",
]
