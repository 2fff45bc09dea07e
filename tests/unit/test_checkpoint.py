"""Checkpoint folders: save -> load round trips bit-exactly; each kind of damage has its own error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hagmoe.model import (
    CheckpointError,
    ConfigError,
    HagMoEModel,
    ModelConfig,
    Tokenizer,
    load_config,
    load_model,
    named_config,
    random_model,
    save_model,
)

LINEAR = dict(
    router="linear",
    position="rope",
    norm="rmsnorm",
    tie_embeddings=False,
    num_kv_heads=2,
    attn_bias=False,
    feedback_dim=0,
)
CONFIGS = {"attention-learned": {}, "linear-rope-rmsnorm-untied-gqa": LINEAR}


def _logits(model: HagMoEModel) -> torch.Tensor:
    ids = torch.randint(
        0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        return model.forward_full(ids).logits


def _assert_same(loaded: HagMoEModel, original: HagMoEModel) -> None:
    want, got = original.state_dict(), loaded.state_dict()
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name
    assert torch.equal(_logits(loaded), _logits(original))


def _weights(folder: Path) -> Path:
    return folder / "model.safetensors"


def _edit_weights(folder: Path, change: dict[str, torch.Tensor | None]) -> None:
    tensors = load_file(_weights(folder))
    for name, tensor in change.items():
        if tensor is None:
            del tensors[name]
        else:
            tensors[name] = tensor
    save_file(tensors, _weights(folder), metadata={"format": "pt"})


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    save_model(random_model(named_config("tiny"), seed=3), tmp_path / "ckpt")
    return tmp_path / "ckpt"


@pytest.mark.parametrize("overrides", list(CONFIGS.values()), ids=list(CONFIGS))
def test_round_trip_is_bit_exact(tmp_path: Path, overrides: dict[str, object]) -> None:
    model = random_model(named_config("tiny", **overrides), seed=7)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert not loaded.training
    assert loaded.config == model.config
    _assert_same(loaded, model)


def test_files_use_model_md_names(tmp_path: Path) -> None:
    save_model(random_model(named_config("tiny"), seed=0), tmp_path / "tied")
    save_model(random_model(named_config("tiny", **LINEAR), seed=0), tmp_path / "untied")
    with safe_open(_weights(tmp_path / "tied"), "pt") as handle:
        tied = set(handle.keys())
        assert handle.metadata() == {"format": "pt"}
    with safe_open(_weights(tmp_path / "untied"), "pt") as handle:
        untied = set(handle.keys())
    assert {
        "layers.0.router.fine.weight",
        "layers.1.router.entropy_mean",
        "pos_embed.weight",
    } <= tied
    assert "lm_head.weight" not in tied
    assert {"lm_head.weight", "layers.0.router.gate.weight"} <= untied
    assert not any("feedback" in name or "pos_embed" in name for name in untied)


def test_sharded_save_loads_identically(tmp_path: Path) -> None:
    model = random_model(named_config("tiny"), seed=5)
    save_model(model, tmp_path, max_shard_bytes=64 * 1024)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not _weights(tmp_path).exists()
    names: set[str] = set()
    for shard in shards:
        with safe_open(tmp_path / shard, "pt") as handle:
            assert handle.metadata() == {"format": "pt"}
            assert all(index["weight_map"][name] == shard for name in handle.keys())  # noqa: SIM118
            names |= set(handle.keys())
    assert names == set(index["weight_map"])
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert index["metadata"]["total_size"] == total
    _assert_same(load_model(tmp_path), model)


def test_resave_unsharded_replaces_shards(tmp_path: Path) -> None:
    model = random_model(named_config("tiny"), seed=5)
    save_model(model, tmp_path, max_shard_bytes=64 * 1024)
    save_model(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    _assert_same(load_model(tmp_path), model)


def test_bfloat16_round_trip(tmp_path: Path) -> None:
    model = random_model(named_config("tiny"), seed=2, dtype=torch.bfloat16)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.dtype == torch.bfloat16
    _assert_same(loaded, model)


def test_load_with_dtype_converts(tmp_path: Path) -> None:
    model = random_model(named_config("tiny"), seed=2)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path, dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in loaded.state_dict().values())
    _assert_same(loaded, model.to(torch.float64))


def test_load_config_and_tokenizer_saved_beside(tmp_path: Path) -> None:
    model = random_model(named_config("tiny"), seed=0)
    save_model(model, tmp_path, tokenizer=Tokenizer.byte_level(320))
    assert load_config(tmp_path) == model.config
    assert isinstance(load_config(tmp_path), ModelConfig)
    assert Tokenizer.load(tmp_path).is_byte_level


def test_truncated_file(saved: Path) -> None:
    data = _weights(saved).read_bytes()
    _weights(saved).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated or corrupt"):
        load_model(saved)


def test_garbage_file(saved: Path) -> None:
    _weights(saved).write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated or corrupt"):
        load_model(saved)


def test_integer_tensor(saved: Path) -> None:
    _edit_weights(saved, {"final_norm.weight": torch.ones(64, dtype=torch.int32)})
    with pytest.raises(CheckpointError, match=r"'final_norm\.weight' .*has dtype I32"):
        load_model(saved)


def test_wrong_shape(saved: Path) -> None:
    _edit_weights(saved, {"embed.weight": torch.zeros(320, 32)})
    with pytest.raises(
        CheckpointError,
        match=r"tensor 'embed\.weight': expected shape \[320, 64\], found \[320, 32\]",
    ):
        load_model(saved)


def test_missing_tensor(saved: Path) -> None:
    _edit_weights(saved, {"layers.1.experts.w3": None})
    with pytest.raises(
        CheckpointError,
        match=r"missing tensor 'layers\.1\.experts\.w3' \(expected shape \[8, 64, 96\]\)",
    ):
        load_model(saved)


def test_extra_tensor(saved: Path) -> None:
    _edit_weights(saved, {"lm_head.weight": torch.zeros(320, 64)})
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'lm_head\.weight'") as err:
        load_model(saved)
    assert "missing" not in str(err.value)


def test_unknown_model_type(saved: Path) -> None:
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ConfigError, match="model_type"):
        load_model(saved)


def test_missing_config(saved: Path) -> None:
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"has no config\.json"):
        load_model(saved)


def test_missing_folder_and_weights(tmp_path: Path, saved: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    _weights(saved).unlink()
    with pytest.raises(CheckpointError, match="has no weights"):
        load_model(saved)


def test_index_names_missing_shard(tmp_path: Path) -> None:
    save_model(random_model(named_config("tiny"), seed=0), tmp_path, max_shard_bytes=64 * 1024)
    missing = tmp_path / "model-00002-of-{:05d}.safetensors".format(
        len(list(tmp_path.glob("model-*")))
    )
    missing.unlink()
    with pytest.raises(CheckpointError, match=rf"shard '{missing.name}', which does not exist"):
        load_model(tmp_path)


def test_index_names_tensor_absent_from_shard(tmp_path: Path) -> None:
    save_model(random_model(named_config("tiny"), seed=0), tmp_path, max_shard_bytes=64 * 1024)
    path = tmp_path / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"]["final_norm.weight"] = first
    path.write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError, match=r"'final_norm\.weight' to shard .* does not contain it"
    ):
        load_model(tmp_path)
