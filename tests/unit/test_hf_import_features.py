"""Optional features of the families against transformers: sliding window, rope scaling (linear,
yarn, and the 4.x `rope_scaling` spelling), q/k/v clipping and attention biases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.llm import LLM
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model.hf_import.convert import load_hf_model
from tests.unit.hf_tiny_models import (
    hf_logits,
    hf_model,
    relative_error,
    save_hf_folder,
)

TOL = 1e-4
PROMPTS = [[7, 30, 44, 2, 91, 15, 60, 8, 13], [120, 5, 77, 19, 4, 66, 31, 90, 12, 45, 3, 88, 21]]
YARN = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "mixtral-sliding-window": ("mixtral", {"sliding_window": 4}),
    "qwen3-sliding-window": ("qwen3_moe", {"use_sliding_window": True, "sliding_window": 5}),
    "qwen3-yarn": ("qwen3_moe", {"rope_parameters": YARN}),
    "qwen2-linear-rope": (
        "qwen2_moe",
        {"rope_parameters": {"rope_type": "linear", "factor": 2.5, "rope_theta": 500.0}},
    ),
    "olmoe-clip-and-biases": ("olmoe", {"clip_qkv": 0.4, "attention_bias": True}),
    "qwen3-biases": ("qwen3_moe", {"attention_bias": True}),
    "qwen2-no-qkv-bias": ("qwen2_moe", {"qkv_bias": False}),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    family, overrides = CASES[request.param]
    model = hf_model(family, seed=5, **overrides)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder, safe_serialization=True)
    return request.param, model, folder


def test_logits_match_transformers(case: tuple) -> None:
    _, model, folder = case
    ours = load_hf_model(folder)
    for ids in PROMPTS:
        with torch.no_grad():
            got = ours.forward_full(torch.tensor([ids])).logits[0]
        assert relative_error(got, hf_logits(model, ids)) < TOL


def test_feature_reaches_the_native_config(case: tuple) -> None:
    name, _, folder = case
    config = load_hf_model(folder).config
    expected = {
        "mixtral-sliding-window": config.sliding_window == 4,
        "qwen3-sliding-window": config.sliding_window == 5,
        "qwen3-yarn": config.rope_scaling is not None and config.rope_scaling["type"] == "yarn",
        "qwen2-linear-rope": config.rope_scaling == {"type": "linear", "factor": 2.5},
        "olmoe-clip-and-biases": config.clip_qkv == 0.4 and config.attn_out_bias is True,
        "qwen3-biases": config.attn_bias and config.attn_out_bias,
        "qwen2-no-qkv-bias": not config.attn_bias and not config.attn_out_bias,
    }
    assert expected[name]


@pytest.mark.parametrize("name", ["mixtral-sliding-window", "qwen3-sliding-window"])
def test_greedy_decoding_with_a_sliding_window(name: str, tmp_path: Path) -> None:
    """Decode steps (one query row) and prefill chunks narrow the window as transformers does."""
    family, overrides = CASES[name]
    model = hf_model(family, seed=7, **overrides)
    save_hf_folder(model, tmp_path)
    engine_config = EngineConfig(block_size=4, max_num_batched_tokens=5)
    params = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True)
    completions = LLM(tmp_path, config=engine_config).generate(PROMPTS, params)
    for ids, completion in zip(PROMPTS, completions, strict=True):
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=8)
        assert completion.token_ids == out[0, len(ids) :].tolist()


def test_yarn_in_the_4x_spelling_reads_the_same(tmp_path: Path) -> None:
    """4.x files keep rope_theta at the top and yarn under rope_scaling with "type"."""
    model = hf_model("qwen3_moe", seed=6, rope_parameters=YARN)
    model.save_pretrained(tmp_path / "new", safe_serialization=True)
    data = json.loads((tmp_path / "new" / "config.json").read_text())
    params = data.pop("rope_parameters")
    old = {"type": "yarn", "factor": params["factor"]}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(
        json.dumps({**data, "rope_theta": params["rope_theta"], "rope_scaling": old})
    )
    (tmp_path / "old" / "model.safetensors").symlink_to(tmp_path / "new" / "model.safetensors")
    assert load_hf_model(tmp_path / "old").config == load_hf_model(tmp_path / "new").config
