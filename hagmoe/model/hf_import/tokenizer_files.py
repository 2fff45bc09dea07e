"""The tokenizer files an imported folder keeps from its Hugging Face source."""

from __future__ import annotations

import shutil
from pathlib import Path

from hagmoe.errors import CheckpointError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the tokenizer files `src` has into `dst`; returns the names copied."""
    copied = []
    for name in TOKENIZER_FILES:
        path = Path(src) / name
        if path.is_file():
            try:
                shutil.copyfile(path, Path(dst) / name)
            except OSError as exc:
                raise CheckpointError(f"cannot copy {path} to {dst}: {exc}") from exc
            copied.append(name)
    return copied
