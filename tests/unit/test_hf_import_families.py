"""Each supported family, as transformers builds it, imported and compared with transformers:
logits (float32, 1e-4 relative), greedy generations through the engine, tokenizer ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoTokenizer

from hagmoe.cli import main
from hagmoe.engine.llm import LLM
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model import Tokenizer, load_config, load_model
from hagmoe.model.hf_import.convert import load_hf_model
from tests.unit.hf_tiny_models import (
    CHAT_TEMPLATE,
    EOS,
    FAMILIES,
    PROMPTS,
    hf_logits,
    hf_model,
    relative_error,
    save_hf_folder,
)

TOL = 1e-4
FAMILY_NAMES = sorted(FAMILIES)


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(family, transformers model, its saved folder)."""
    model = hf_model(request.param)
    folder = save_hf_folder(model, tmp_path_factory.mktemp(request.param))
    return request.param, model, folder


def _prompt_ids(folder: Path) -> list[list[int]]:
    hf_tok = AutoTokenizer.from_pretrained(folder)
    return [hf_tok(p, add_special_tokens=False).input_ids for p in PROMPTS]


def test_family_features_are_imported(saved: tuple) -> None:
    family, model, folder = saved
    config = load_hf_model(folder).config
    hf = model.config
    assert (config.router, config.num_groups, config.feedback) == ("linear", 1, 0)
    assert config.num_experts == hf.num_experts and config.top_k == hf.num_experts_per_tok
    assert config.kv_heads == 2 < config.num_heads  # GQA
    assert not config.tie_embeddings
    expected = {
        "mixtral": (None, 0, True),
        "qwen2_moe": (None, 48, False),
        "qwen3_moe": ("head", 0, True),
        "olmoe": ("projection", 0, False),
    }[family]
    assert (config.qk_norm_type, config.shared_expert_size, config.normalize_topk) == expected


def test_logits_match_transformers(saved: tuple) -> None:
    """A right-padded batch of varied-length prompts against transformers, prompt by prompt."""
    _, model, folder = saved
    ours = load_hf_model(folder)
    prompts = _prompt_ids(folder)
    assert len({len(p) for p in prompts}) == len(prompts)
    width = max(len(p) for p in prompts)
    batch = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
    with torch.no_grad():
        logits = ours.forward_full(batch).logits
    for row, ids in enumerate(prompts):
        ref = hf_logits(model, ids)
        assert relative_error(logits[row, : len(ids)], ref) < TOL


def test_greedy_generation_matches_transformers(saved: tuple) -> None:
    _, model, folder = saved
    params = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True)
    completions = LLM(folder).generate(PROMPTS, params)
    for ids, completion in zip(_prompt_ids(folder), completions, strict=True):
        assert completion.prompt_token_ids == ids
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=8)
        assert completion.token_ids == out[0, len(ids) :].tolist()


def test_tokenizer_matches_transformers(saved: tuple) -> None:
    _, _, folder = saved
    ours, theirs = Tokenizer.load(folder), AutoTokenizer.from_pretrained(folder)
    for text in [*PROMPTS, "unseen words: zebra quartz", "<s>hello</s>"]:
        ids = theirs(text, add_special_tokens=False).input_ids
        assert ours.encode(text) == ids
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
    assert ours.eos_token_id == EOS and ours.chat_template == CHAT_TEMPLATE


def test_import_hf_writes_an_equivalent_native_folder(saved: tuple, tmp_path: Path) -> None:
    _, model, folder = saved
    assert main(["import-hf", str(folder), str(tmp_path / "native")]) == 0
    native = load_model(tmp_path / "native")
    assert load_config(tmp_path / "native").model_type == "hagmoe"
    ids = _prompt_ids(folder)[2]
    with torch.no_grad():
        got = native.forward_full(torch.tensor([ids])).logits[0]
    assert relative_error(got, hf_logits(model, ids)) < TOL
    tok = Tokenizer.load(tmp_path / "native")
    assert tok.encode(PROMPTS[0]) == _prompt_ids(folder)[0]
    assert tok.chat_template == CHAT_TEMPLATE
    assert load_config(folder) == native.config  # a Hugging Face folder reads as its conversion


def test_tied_embeddings(tmp_path: Path) -> None:
    model = hf_model("qwen3_moe", seed=1, tie_word_embeddings=True)
    folder = save_hf_folder(model, tmp_path / "tied")
    ours = load_hf_model(folder)
    assert ours.config.tie_embeddings and ours.lm_head is None
    ids = _prompt_ids(folder)[1]
    with torch.no_grad():
        got = ours.forward_full(torch.tensor([ids])).logits[0]
    assert relative_error(got, hf_logits(model, ids)) < TOL
