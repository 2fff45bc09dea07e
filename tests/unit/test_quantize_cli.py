"""`hagmoe quantize SRC DST`: the folder's tensors and scales, loading it checked like any
checkpoint, and serving it through the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hagmoe.cli import main
from hagmoe.engine.config import EngineConfig
from hagmoe.engine.llm import LLM
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.errors import CheckpointError
from hagmoe.model import named_config, random_model
from hagmoe.model.checkpoint import save_model
from hagmoe.quantization.checkpoint import load_quantized


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("f32")
    save_model(random_model(named_config("tiny"), seed=7), folder)
    return folder


@pytest.mark.parametrize(("fmt", "group"), [("int8", "32"), ("int8", "0"), ("bf16", "32")])
def test_quantize_save_load_generate(source: Path, tmp_path: Path, fmt: str, group: str) -> None:
    assert (
        main(["quantize", str(source), str(tmp_path), "--format", fmt, "--group-size", group]) == 0
    )
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization"]["dtype"] == {"int8": "int8", "bf16": "bfloat16"}[fmt]
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        q = f.get_slice("layers.0.attn.q_proj.weight")
        assert q.get_dtype() == {"int8": "I8", "bf16": "BF16"}[fmt]
        assert f.get_slice("layers.0.router.coarse.weight").get_dtype() == "F32"
    assert ("layers.0.experts.w3_scale" in names) == (fmt == "int8")
    params = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True)
    prompts = [[3, 4, 5, 6]]
    ref = LLM(source, config=EngineConfig(block_size=4, num_blocks=32)).generate(prompts, params)
    llm = LLM(tmp_path, config=EngineConfig(block_size=4, num_blocks=32))
    got = llm.generate(prompts, params)
    assert llm.engine.model.head_packed is not None
    same = sum(a == b for a, b in zip(got[0].token_ids, ref[0].token_ids, strict=True))
    assert same >= 4
    via_flag = LLM(source, config=EngineConfig(block_size=4, num_blocks=32, quantization=fmt))
    if group == "32":  # the same weights whether quantised at load or read from the folder
        assert via_flag.generate(prompts, params)[0].token_ids == got[0].token_ids


def test_broken_quantised_folder_is_a_clear_error(source: Path, tmp_path: Path) -> None:
    assert main(["quantize", str(source), str(tmp_path)]) == 0
    path = tmp_path / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors = {n: f.get_tensor(n) for n in f.keys()}  # noqa: SIM118
    del tensors["layers.1.experts.w2_scale"]
    tensors["layers.0.attn.q_proj.weight"] = tensors["layers.0.attn.q_proj.weight"].float()
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError) as err:
        load_quantized(tmp_path)
    message = str(err.value)
    assert "missing tensor 'layers.1.experts.w2_scale'" in message
    assert "unexpected tensor 'extra.weight'" in message
    assert "layers.0.attn.q_proj.weight" in message and "I8" in message
