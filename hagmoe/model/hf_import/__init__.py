"""Import Hugging Face checkpoints of the standard top-k MoE families (Mixtral, Qwen2-MoE,
Qwen3-MoE, OLMoE) as HAG-MoE's `router = "linear"` special case.

Light on purpose (config mapping and detection only), so `hagmoe.model.checkpoint` can use it;
the weight conversion is `hagmoe.model.hf_import.convert` (`load_folder`, `load_hf_model`,
`import_hf`)."""

from __future__ import annotations

from hagmoe.model.hf_import.config_map import native_config
from hagmoe.model.hf_import.detect import hf_model_type
from hagmoe.model.hf_import.registry import SUPPORTED_MODEL_TYPES

__all__ = ["SUPPORTED_MODEL_TYPES", "hf_model_type", "native_config"]
