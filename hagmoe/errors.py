"""The root of hagmoe's error tree, and the errors every package shares: configs, checkpoints, tokenizers."""

from __future__ import annotations


class HagMoEError(Exception):
    """Base of every error hagmoe raises on purpose."""


class ConfigError(HagMoEError, ValueError):
    """A config key is missing or holds a value outside its contract; the message names it."""


class CheckpointError(HagMoEError):
    """A checkpoint folder cannot be read or written as MODEL.md specifies."""


class TokenizerError(HagMoEError):
    """A tokenizer file cannot be read or a token id is out of range."""
