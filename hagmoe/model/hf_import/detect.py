"""Tell a Hugging Face checkpoint folder from a native one by its config.json `model_type`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hagmoe.model.config import MODEL_TYPE
from hagmoe.model.errors import ConfigError

CONFIG_FILE = "config.json"


def read_config_json(folder: str | Path) -> dict[str, Any]:
    """The folder's config.json as a dict; ConfigError naming the file when unreadable."""
    path = Path(folder) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must hold a JSON object")
    return data


def hf_model_type(folder: str | Path) -> str | None:
    """The config.json `model_type` when it is a string other than "hagmoe" (a foreign checkpoint,
    supported or not), else None (native, or no config.json / no model_type to go by)."""
    if not (Path(folder) / CONFIG_FILE).is_file():
        return None
    model_type = read_config_json(folder).get("model_type")
    return model_type if isinstance(model_type, str) and model_type != MODEL_TYPE else None
