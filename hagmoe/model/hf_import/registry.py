"""The transformers model types the importer reads, by name."""

from __future__ import annotations

from typing import Any

from hagmoe.errors import ConfigError
from hagmoe.model.hf_import.family import Family
from hagmoe.model.hf_import.mixtral import MIXTRAL
from hagmoe.model.hf_import.olmoe import OLMOE
from hagmoe.model.hf_import.qwen2_moe import QWEN2_MOE
from hagmoe.model.hf_import.qwen3_moe import QWEN3_MOE

FAMILIES: dict[str, Family] = {f.model_type: f for f in (MIXTRAL, QWEN2_MOE, QWEN3_MOE, OLMOE)}
SUPPORTED_MODEL_TYPES = tuple(sorted(FAMILIES))


def family_for(model_type: Any) -> Family:
    """The family of `model_type`; ConfigError naming it and the supported ones otherwise."""
    if model_type not in FAMILIES:
        raise ConfigError(
            f"model_type {model_type!r} cannot be imported from Hugging Face; "
            f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return FAMILIES[model_type]
