"""The importer's inputs: both expert layouts, sharded files, 4.x-style configs, and every refusal
(unsupported model_type or feature, missing / unexpected / misshapen tensors, no safetensors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file

from hagmoe.cli import main
from hagmoe.model import CheckpointError, ConfigError, load_model
from hagmoe.model.hf_import.convert import import_hf, load_folder, load_hf_model
from tests.unit.hf_tiny_models import hf_logits, hf_model, relative_error

TOL = 1e-4
IDS = [5, 17, 42, 8, 99, 3, 61, 7, 150, 12, 33]


def _logits_error(folder: Path, model: Any) -> float:
    with torch.no_grad():
        got = load_folder(folder).forward_full(torch.tensor([IDS])).logits[0]
    return relative_error(got, hf_logits(model, IDS))


def _save_fused(model: Any, folder: Path) -> Path:
    """transformers 5's in-memory layout written as is: experts.gate_up_proj / experts.down_proj."""
    folder.mkdir()
    model.config.save_pretrained(folder)
    state = {name: t.contiguous() for name, t in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _edit_config(folder: Path, **changes: Any) -> None:
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _edit_weights(folder: Path, drop: str | None = None, **add: torch.Tensor) -> None:
    path = folder / "model.safetensors"
    state = load_file(str(path))
    if drop is not None:
        del state[drop]
    save_file({**state, **add}, str(path), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    model = hf_model("qwen2_moe", seed=2)
    folder = tmp_path_factory.mktemp("qwen2") / "hf"
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_both_expert_layouts_give_the_same_model(family: str, tmp_path: Path) -> None:
    model = hf_model(family, seed=4)
    model.save_pretrained(tmp_path / "per_expert", safe_serialization=True)
    fused = _save_fused(model, tmp_path / "fused")
    with open(fused / "config.json") as f:
        assert json.load(f)["model_type"] == family
    assert "model.layers.0.mlp.experts.gate_up_proj" in load_file(str(fused / "model.safetensors"))
    saved = load_file(str(tmp_path / "per_expert" / "model.safetensors"))
    assert not any(name.endswith("gate_up_proj") for name in saved)
    a, b = load_hf_model(tmp_path / "per_expert"), load_hf_model(fused)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert _logits_error(fused, model) < TOL


def test_sharded_source_and_sharded_output(tmp_path: Path) -> None:
    model = hf_model("olmoe", seed=3)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True, max_shard_size="60KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "hf").glob("model-*.safetensors"))) > 1
    assert _logits_error(tmp_path / "hf", model) < TOL
    import_hf(tmp_path / "hf", tmp_path / "native", max_shard_bytes=100_000)
    assert (tmp_path / "native" / "model.safetensors.index.json").is_file()
    assert _logits_error(tmp_path / "native", model) < TOL


def test_transformers_4_config_style_reads_the_same(qwen2: tuple[Any, Path]) -> None:
    """rope_theta / rope_scaling at the top level and no qkv_bias key (4.x files) mean the same."""
    model, folder = qwen2
    data = json.loads((folder / "config.json").read_text())
    theta = data.pop("rope_parameters")["rope_theta"]
    assert data.pop("qkv_bias") is True
    old = folder.parent / "old"
    old.mkdir()
    (old / "config.json").write_text(
        json.dumps({**data, "rope_theta": theta, "rope_scaling": None})
    )
    (old / "model.safetensors").symlink_to(folder / "model.safetensors")
    assert load_hf_model(old).config == load_hf_model(folder).config
    assert _logits_error(old, model) < TOL


def test_unsupported_model_type_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    supported = "mixtral, olmoe, qwen2_moe, qwen3_moe"
    with pytest.raises(
        ConfigError, match=f"model_type 'llama'.*supported model types: {supported}"
    ):
        load_folder(tmp_path)
    with pytest.raises(ConfigError, match="'llama'"):
        import_hf(tmp_path, tmp_path / "out")


UNSUPPORTED = [
    ("qwen2_moe", {"decoder_sparse_step": 2}, "decoder_sparse_step = 2.*mixed dense/MoE"),
    ("qwen3_moe", {"mlp_only_layers": [1]}, r"mlp_only_layers = \[1\].*mixed dense/MoE"),
    (
        "qwen2_moe",
        {"use_sliding_window": True, "max_window_layers": 2, "layer_types": None},
        "layer_types.*mixed sliding-window and full-attention",
    ),
    (
        "mixtral",
        {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}},
        "rope_parameters = .* rope type 'dynamic' .supported: default, linear, yarn.",
    ),
    ("olmoe", {"hidden_act": "gelu"}, "hidden_act = 'gelu'"),
    ("qwen3_moe", {"partial_rotary_factor": 0.5}, "partial_rotary_factor = 0.5"),
    ("mixtral", {"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
    ("olmoe", {"num_experts": 0}, "num_experts = 0"),
]


@pytest.mark.parametrize(("family", "change", "match"), UNSUPPORTED)
def test_unsupported_feature_is_named(
    family: str, change: dict[str, Any], match: str, tmp_path: Path
) -> None:
    hf_model(family).config.save_pretrained(tmp_path)
    _edit_config(tmp_path, **change)
    with pytest.raises(ConfigError, match=f"{family} config.json: {match}"):
        load_hf_model(tmp_path)


def test_cli_reports_an_unsupported_checkpoint(tmp_path: Path, capsys: Any) -> None:
    hf_model("qwen3_moe").config.save_pretrained(tmp_path)
    _edit_config(tmp_path, mlp_only_layers=[0])
    assert main(["import-hf", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "hagmoe import-hf: error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_tensor_is_named(qwen2: tuple[Any, Path], tmp_path: Path) -> None:
    _, folder = qwen2
    copy = tmp_path / "hf"
    copy.mkdir()
    (copy / "config.json").write_text((folder / "config.json").read_text())
    save_file(load_file(str(folder / "model.safetensors")), str(copy / "model.safetensors"))
    _edit_weights(copy, drop="model.layers.1.mlp.experts.3.up_proj.weight")
    with pytest.raises(
        CheckpointError,
        match=r"missing tensor 'model.layers.1.mlp.experts.3.up_proj.weight' "
        r"\(needed for layers.1.experts.w2\)",
    ):
        load_hf_model(copy)


def test_unexpected_and_misshapen_tensors_are_named(
    qwen2: tuple[Any, Path], tmp_path: Path
) -> None:
    _, folder = qwen2
    copy = tmp_path / "hf"
    copy.mkdir()
    (copy / "config.json").write_text((folder / "config.json").read_text())
    save_file(load_file(str(folder / "model.safetensors")), str(copy / "model.safetensors"))
    _edit_weights(copy, **{"model.layers.0.mlp.extra_router.weight": torch.zeros(2, 64)})
    with pytest.raises(
        CheckpointError, match=r"unexpected tensor 'model.layers.0.mlp.extra_router"
    ):
        load_hf_model(copy)
    _edit_weights(
        copy,
        drop="model.layers.0.mlp.extra_router.weight",
        **{"model.layers.0.mlp.gate.weight": torch.zeros(5, 64)},
    )
    with pytest.raises(CheckpointError, match=r"layers.0.router.gate.weight shape \[5, 64\]"):
        load_hf_model(copy)


def test_no_safetensors_and_bad_destinations(qwen2: tuple[Any, Path], tmp_path: Path) -> None:
    _, folder = qwen2
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin.*safe_serialization=True"):
        load_hf_model(tmp_path)
    with pytest.raises(CheckpointError, match="is the source folder"):
        import_hf(folder, folder)
    with pytest.raises(CheckpointError, match=r"Hugging Face qwen2_moe folder.*import-hf"):
        load_model(folder)
