"""hagmoe: serving HAG-MoE and top-k MoE language models."""

from __future__ import annotations

__version__ = "0.1.0"
