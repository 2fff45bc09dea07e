"""A transformers config.json as the importer reads it: absent keys take the defaults of the
family's transformers config class, and every refusal names the key, its value and why."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from hagmoe.errors import ConfigError


@dataclass(slots=True, frozen=True)
class SourceConfig:
    """config.json content of one Hugging Face checkpoint of a supported family."""

    model_type: str
    data: Mapping[str, Any]
    defaults: Mapping[str, Any]

    def get(self, key: str) -> Any:
        """The file's value (even null), else the family default, else None."""
        return self.data[key] if key in self.data else self.defaults.get(key)

    def first(self, *keys: str) -> Any:
        """The value of the first key present in the file, else the first key's default."""
        for key in keys:
            if key in self.data:
                return self.data[key]
        return self.defaults.get(keys[0])

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise ConfigError(f"{self.model_type} config.json: key {key!r} is missing or null")
        return value

    def unsupported(self, key: str, value: Any, why: str) -> NoReturn:
        raise ConfigError(
            f"{self.model_type} config.json: {key} = {value!r} is not supported: {why}"
        )
