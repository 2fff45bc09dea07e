"""Checkpoint folders as MODEL.md specifies: config.json, safetensors weights (one file, or shards
with a Hugging Face style model.safetensors.index.json) and an optional tokenizer.json.

File tensor names are MODEL.md's, which are exactly the model's state_dict names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from hagmoe.errors import CheckpointError
from hagmoe.model.config import ModelConfig
from hagmoe.model.hf_import import SUPPORTED_MODEL_TYPES, hf_model_type, native_config
from hagmoe.model.hf_import.detect import read_config_json
from hagmoe.model.model import HagMoEModel
from hagmoe.model.tokenizer import Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_NAME = "model-{:05d}-of-{:05d}.safetensors"
SHARD_GLOB = "model-*-of-*.safetensors"

_FLOAT_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
_MAX_LISTED = 8


@dataclass(slots=True, frozen=True)
class _Entry:
    """One tensor as a file's header describes it."""

    path: Path
    shape: tuple[int, ...]
    dtype: str


@dataclass(slots=True, frozen=True)
class _Layout:
    """The weight files to read and, when sharded, the index's tensor -> file map."""

    files: list[Path]
    weight_map: dict[str, str] | None
    index: Path | None


def save_model(
    model: HagMoEModel,
    folder: str | Path,
    tokenizer: Tokenizer | None = None,
    max_shard_bytes: int | None = None,
) -> None:
    """Write config.json, the weights (sharded when they exceed max_shard_bytes) and the tokenizer.

    Tensors are saved contiguous, on the CPU, in their own dtype, with metadata {"format": "pt"}.
    Weight files of an earlier save into the same folder are removed first."""
    if max_shard_bytes is not None and max_shard_bytes < 1:
        raise CheckpointError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    folder = Path(folder)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        model.config.save(folder / CONFIG_FILE)
        _remove_weights(folder)
        _write_weights(folder, tensors, max_shard_bytes)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {folder}: {exc}") from exc
    if tokenizer is not None:
        tokenizer.save(folder)


def load_config(folder: str | Path) -> ModelConfig:
    """The folder's config.json; for a Hugging Face folder of a supported family, its converted
    native config. CheckpointError when the folder or file is missing; ConfigError when its
    content breaks the contract, e.g. a model_type neither native nor importable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    if not (folder / CONFIG_FILE).is_file():
        raise CheckpointError(f"checkpoint folder {folder} has no {CONFIG_FILE}")
    if hf_model_type(folder) is not None:
        return native_config(read_config_json(folder))
    return ModelConfig.from_file(folder / CONFIG_FILE)


def load_model(
    folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> HagMoEModel:
    """The folder's model, in eval mode on `device`, in `dtype` (default: the stored dtype of
    embed.weight). Every tensor's name, dtype and shape is checked against the config before any
    is read; a mismatch, a missing or corrupt file raises CheckpointError naming what is wrong."""
    if dtype is not None and not dtype.is_floating_point:
        raise CheckpointError(f"dtype must be a floating dtype, got {dtype}")
    folder = Path(folder)
    foreign = hf_model_type(folder) if folder.is_dir() else None
    if foreign in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{folder} is a Hugging Face {foreign} folder: load it with "
            "hagmoe.model.hf_import.convert.load_folder or convert it with `hagmoe import-hf`"
        )
    config = load_config(folder)
    if "quantization" in config.extra:
        raise CheckpointError(
            f"{folder} is a quantised folder (`hagmoe quantize`): load it with "
            "hagmoe.quantization.checkpoint.load_quantized, or serve it with `hagmoe serve`"
        )
    with torch.device("meta"):
        model = HagMoEModel(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    entries = _read_headers(_layout(folder))
    _check_entries(folder, entries, expected)
    target = dtype or _stored_dtype(entries)
    state = _read_tensors(entries, torch.device(device), target)
    model.load_state_dict(state, assign=True)
    _check_materialised(model, folder)
    return model.eval()


def _write_weights(
    folder: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int | None
) -> None:
    shards = _plan_shards(tensors, max_shard_bytes)
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(folder / WEIGHTS_FILE), metadata=metadata)
        return
    weight_map: dict[str, str] = {}
    for number, shard in enumerate(shards, start=1):
        file = SHARD_NAME.format(number, len(shards))
        save_file(shard, str(folder / file), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file))
    index = {
        "metadata": {"total_size": sum(_nbytes(t) for t in tensors.values())},
        "weight_map": weight_map,
    }
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _plan_shards(
    tensors: dict[str, torch.Tensor], max_bytes: int | None
) -> list[dict[str, torch.Tensor]]:
    """Consecutive tensors packed greedily; a tensor larger than max_bytes gets a shard alone."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = _nbytes(tensor)
        if max_bytes is not None and shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _remove_weights(folder: Path) -> None:
    for path in [folder / WEIGHTS_FILE, folder / INDEX_FILE, *folder.glob(SHARD_GLOB)]:
        path.unlink(missing_ok=True)


def _layout(folder: Path) -> _Layout:
    single, index = folder / WEIGHTS_FILE, folder / INDEX_FILE
    if single.is_file() and index.is_file():
        raise CheckpointError(
            f"checkpoint {folder} has both {WEIGHTS_FILE} and {INDEX_FILE}; remove the stale one"
        )
    if single.is_file():
        return _Layout([single], None, None)
    if not index.is_file():
        raise CheckpointError(
            f"checkpoint {folder} has no weights ({WEIGHTS_FILE} or {INDEX_FILE})"
        )
    weight_map = _read_index(index)
    for name, file in weight_map.items():
        if not (folder / file).is_file():
            raise CheckpointError(
                f"{index} maps tensor {name!r} to shard {file!r}, which does not exist in {folder}"
            )
    files = [folder / file for file in dict.fromkeys(weight_map.values())]
    return _Layout(files, weight_map, index)


def _read_index(index: Path) -> dict[str, str]:
    try:
        data = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read shard index {index}: {exc}") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(f, str) and f and Path(f).name == f for f in weight_map.values()
    ):
        raise CheckpointError(
            f'shard index {index} needs a "weight_map" object of '
            "tensor name -> file name in the same folder"
        )
    return weight_map


def _read_headers(layout: _Layout) -> dict[str, _Entry]:
    """Tensor name -> entry from the file headers (no tensor data read). With an index, a shard's
    tensors that the index does not list are not part of the checkpoint."""
    entries: dict[str, _Entry] = {}
    for path in layout.files:
        for name, shape, dtype in _header(path):
            if layout.weight_map is not None and layout.weight_map.get(name) != path.name:
                continue
            if name in entries:
                raise CheckpointError(
                    f"tensor {name!r} appears in both {entries[name].path} and {path}"
                )
            entries[name] = _Entry(path, shape, dtype)
    for name, file in (layout.weight_map or {}).items():
        if name not in entries:
            raise CheckpointError(
                f"{layout.index} maps tensor {name!r} to shard {file!r}, which does not contain it"
            )
    return entries


def _header(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            names = handle.keys()  # safe_open handles are not iterable
            slices = [(name, handle.get_slice(name)) for name in names]
            return [(name, tuple(s.get_shape()), str(s.get_dtype())) for name, s in slices]
    except SafetensorError as exc:
        raise CheckpointError(f"weights file {path} is truncated or corrupt: {exc}") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read weights file {path}: {exc}") from exc


def _check_entries(
    folder: Path, entries: dict[str, _Entry], expected: dict[str, tuple[int, ...]]
) -> None:
    """Every problem at once: non-float dtypes, missing and unexpected tensors, wrong shapes."""
    problems = [
        f"tensor {name!r} in {e.path.name} has dtype {e.dtype}; expected a floating "
        f"dtype ({', '.join(_FLOAT_DTYPES)})"
        for name, e in sorted(entries.items())
        if e.dtype not in _FLOAT_DTYPES
    ]
    problems += [
        f"missing tensor {name!r} (expected shape {_shape(shape)})"
        for name, shape in expected.items()
        if name not in entries
    ]
    problems += [
        f"unexpected tensor {name!r} in {e.path.name} (not part of a model with this config)"
        for name, e in sorted(entries.items())
        if name not in expected
    ]
    problems += [
        f"tensor {name!r}: expected shape {_shape(shape)}, found {_shape(entries[name].shape)}"
        for name, shape in expected.items()
        if name in entries and entries[name].shape != shape
    ]
    if problems:
        more = len(problems) - _MAX_LISTED
        listed = "; ".join(problems[:_MAX_LISTED]) + (f"; and {more} more" if more > 0 else "")
        raise CheckpointError(f"checkpoint {folder} does not match its {CONFIG_FILE}: {listed}")


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def _stored_dtype(entries: dict[str, _Entry]) -> torch.dtype:
    entry = entries.get("embed.weight") or next(iter(entries.values()), None)
    return _FLOAT_DTYPES[entry.dtype] if entry is not None else torch.float32


def _read_tensors(
    entries: dict[str, _Entry], device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Each tensor read from its memory-mapped file, converted and moved one at a time, always
    into fresh memory: views of the mapping would be unaligned (changing matmul rounding) and
    would tie the model to the file staying unchanged."""
    by_file: dict[Path, list[str]] = {}
    for name, entry in entries.items():
        by_file.setdefault(entry.path, []).append(name)
    state: dict[str, torch.Tensor] = {}
    for path, names in by_file.items():
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for name in names:
                    state[name] = handle.get_tensor(name).to(device=device, dtype=dtype, copy=True)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read weights file {path}: {exc}") from exc
    return state


def _check_materialised(model: HagMoEModel, folder: Path) -> None:
    tensors = [*model.named_parameters(), *model.named_buffers()]
    left = [name for name, t in tensors if t.is_meta]
    if left:
        raise CheckpointError(f"loading {folder} left tensors without values: {', '.join(left)}")
