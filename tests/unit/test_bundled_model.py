"""The bundled model in hagmoe/assets: what `hagmoe serve` serves with no --model."""

from __future__ import annotations

from pathlib import Path

import hagmoe
from hagmoe.engine.llm import LLM
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model import load_config

ASSETS = Path(hagmoe.__file__).parent / "assets"


def test_bundled_model_is_a_small_hagmoe_with_its_tokenizer_and_card() -> None:
    config = load_config(ASSETS)
    assert config.router == "attention" and config.feedback > 0 and config.k_max > config.k_min
    assert sum(p.stat().st_size for p in ASSETS.iterdir()) <= 25 * 2**20
    assert {"config.json", "model.safetensors", "tokenizer.json", "MODEL_CARD.md"} <= {
        p.name for p in ASSETS.iterdir()
    }


def test_bundled_model_writes_english_words() -> None:
    out = LLM(ASSETS).generate(["ROMEO:\n"], SamplingParams(max_new_tokens=30, temperature=0.0))
    words = out[0].text.split()
    assert len(words) >= 8
    common = {"I", "the", "and", "a", "to", "of", "my", "is", "you", "not", "be", "that", "am"}
    assert sum(w.strip(",.;:!?'") in common for w in words) >= 3
