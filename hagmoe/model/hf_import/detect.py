"""Tell a Hugging Face checkpoint folder from a native one by its config.json `model_type`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hagmoe.model.config import MODEL_TYPE, read_json_config

CONFIG_FILE = "config.json"


def read_config_json(folder: str | Path) -> dict[str, Any]:
    """The folder's config.json as a dict; ConfigError naming the file when unreadable."""
    return read_json_config(Path(folder) / CONFIG_FILE)


def hf_model_type(folder: str | Path) -> str | None:
    """The config.json `model_type` when it is a string other than "hagmoe" (a foreign checkpoint,
    supported or not), else None (native, or no config.json / no model_type to go by)."""
    if not (Path(folder) / CONFIG_FILE).is_file():
        return None
    model_type = read_config_json(folder).get("model_type")
    return model_type if isinstance(model_type, str) and model_type != MODEL_TYPE else None
