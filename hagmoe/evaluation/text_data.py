"""Evaluation text: documents from .txt / .jsonl files and strided scoring windows over them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hagmoe.errors import HagMoEError


class EvalDataError(HagMoEError):
    """An evaluation file or window setting that cannot be used."""


@dataclass(slots=True, frozen=True)
class Window:
    """Tokens ids[start:end] of one document, of which the last `scored` are scored as targets
    (the prediction of token t uses tokens start..t-1 of the window)."""

    start: int
    end: int
    scored: int


def load_documents(path: str | Path) -> list[str]:
    """A .txt file is one document; a .jsonl file has one JSON object with a "text" string per
    non-blank line. EvalDataError names the file and line of anything else."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalDataError(f"cannot read evaluation file {path}: {exc}") from exc
    if path.suffix != ".jsonl":
        return [raw]
    docs: list[str] = []
    for n, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalDataError(f"{path}:{n}: not JSON: {exc}") from exc
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise EvalDataError(f'{path}:{n}: expected an object with a string "text" field')
        docs.append(row["text"])
    return docs


def strided_windows(length: int, context: int, stride: int) -> list[Window]:
    """Windows of at most `context` tokens over a document of `length` tokens, each starting
    `stride` after the previous, scoring only targets the previous window did not: every token
    but the first is scored exactly once."""
    if context < 2:
        raise EvalDataError(f"context must be >= 2, got {context}")
    if not 1 <= stride <= context - 1:
        raise EvalDataError(f"stride must lie in [1, context - 1 = {context - 1}], got {stride}")
    windows: list[Window] = []
    scored_to = 1  # first target not yet scored
    start = 0
    while scored_to < length:
        end = min(start + context, length)
        windows.append(Window(start, end, end - scored_to))
        scored_to = end
        start += stride
    return windows
