"""Hugging Face checkpoint folder -> native HAG-MoE model, in memory or written as a native folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hagmoe.errors import CheckpointError
from hagmoe.model.checkpoint import load_model, save_model
from hagmoe.model.config import ModelConfig
from hagmoe.model.hf_import.assemble import build_tensor, check_plan, stored_dtype
from hagmoe.model.hf_import.config_map import native_config
from hagmoe.model.hf_import.detect import hf_model_type, read_config_json
from hagmoe.model.hf_import.registry import family_for
from hagmoe.model.hf_import.tensor_plan import tensor_plan
from hagmoe.model.hf_import.tokenizer_files import copy_tokenizer_files
from hagmoe.model.hf_import.weight_files import WeightFiles
from hagmoe.model.model import HagMoEModel


@dataclass(slots=True, frozen=True)
class ImportResult:
    """What `import_hf` wrote."""

    source_model_type: str
    config: ModelConfig
    tokenizer_files: list[str]  # tokenizer files copied from the source


def load_hf_model(
    folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> HagMoEModel:
    """The native model of a Hugging Face folder, in eval mode on `device` in `dtype` (default:
    the stored dtype of the embedding). ConfigError for a config the native model cannot
    reproduce; CheckpointError for missing, unexpected or misshapen tensors (all checked on the
    file headers before any tensor is read)."""
    folder = Path(folder)
    data = read_config_json(folder)
    config = native_config(data)
    family = family_for(data.get("model_type"))
    with torch.device("meta"):
        model = HagMoEModel(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    with WeightFiles(folder) as files:
        plan = tensor_plan(config, family, files.names())
        check_plan(plan, files, expected, config.tie_embeddings)
        target = dtype or stored_dtype(files)
        state = {
            name: build_tensor(source, files, torch.device(device), target)
            for name, source in plan.items()
        }
    model.load_state_dict(state, assign=True)
    return model.eval()


def load_folder(
    folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> HagMoEModel:
    """A native checkpoint folder, or a Hugging Face folder of a supported family converted on
    load (detected by its config.json model_type)."""
    if hf_model_type(folder) is not None:
        return load_hf_model(folder, device=device, dtype=dtype)
    return load_model(folder, device=device, dtype=dtype)


def import_hf(
    src: str | Path,
    dst: str | Path,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int | None = None,
) -> ImportResult:
    """Convert the Hugging Face folder `src` into the native folder `dst` (config.json, weights,
    and the tokenizer files `src` has). `src` is never written."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.resolve() == src.resolve():
        raise CheckpointError(f"import destination {dst} is the source folder; choose another")
    model = load_hf_model(src, dtype=dtype)
    save_model(model, dst, max_shard_bytes=max_shard_bytes)
    copied = copy_tokenizer_files(src, dst)
    model_type = str(read_config_json(src)["model_type"])
    return ImportResult(model_type, model.config, copied)
