"""The safetensors tensors of a Hugging Face folder (model.safetensors, or the shards that
model.safetensors.index.json lists), read through memory maps one tensor at a time."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from hagmoe.errors import CheckpointError

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class WeightFiles:
    """Name -> tensor over a folder's safetensors files; use as a context manager (the files stay
    mapped while it is open)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._where = _locate(self.folder)  # tensor name -> file
        self._stack = ExitStack()
        self._handles: dict[Path, Any] = {}

    def __enter__(self) -> WeightFiles:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stack.close()
        self._handles.clear()

    def names(self) -> set[str]:
        return set(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._read(name, lambda h: h.get_slice(name).get_shape()))

    def dtype(self, name: str) -> str:
        return str(self._read(name, lambda h: h.get_slice(name).get_dtype()))

    def get(self, name: str) -> torch.Tensor:
        """The tensor as stored (dtype and shape), copied out of the mapping."""
        tensor: torch.Tensor = self._read(name, lambda h: h.get_tensor(name))
        return tensor

    def _read(self, name: str, read: Callable[[Any], Any]) -> Any:
        handle = self._handle(name)
        try:
            return read(handle)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(
                f"cannot read tensor {name!r} from {self._where[name]}: {exc}"
            ) from exc

    def _handle(self, name: str) -> Any:
        path = self._where[name]
        if path not in self._handles:
            try:
                self._handles[path] = self._stack.enter_context(
                    safe_open(str(path), framework="pt", device="cpu")
                )
            except (SafetensorError, OSError) as exc:
                raise CheckpointError(f"cannot read weights file {path}: {exc}") from exc
        return self._handles[path]


def _locate(folder: Path) -> dict[str, Path]:
    single, index = folder / WEIGHTS_FILE, folder / INDEX_FILE
    if single.is_file():
        return dict.fromkeys(_header_names(single), single)
    if index.is_file():
        return _indexed(folder, index)
    others = sorted(p.name for p in folder.glob("*.bin")) + sorted(
        p.name for p in folder.glob("*.pt")
    )
    found = f" (found {', '.join(others)}: re-save with safe_serialization=True)" if others else ""
    raise CheckpointError(f"{folder} has no {WEIGHTS_FILE} or {INDEX_FILE}{found}")


def _indexed(folder: Path, index: Path) -> dict[str, Path]:
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise CheckpointError(f"cannot read shard index {index}: {exc}") from exc
    if not isinstance(weight_map, dict) or not all(
        isinstance(f, str) and Path(f).name == f for f in weight_map.values()
    ):
        raise CheckpointError(f'{index} needs a "weight_map" of tensor name -> file in {folder}')
    where = {name: folder / file for name, file in weight_map.items()}
    for path in set(where.values()):
        if not path.is_file():
            raise CheckpointError(f"{index} lists shard {path.name}, which is not in {folder}")
    return where


def _header_names(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read weights file {path}: {exc}") from exc
