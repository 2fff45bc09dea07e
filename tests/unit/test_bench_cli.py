"""`hagmoe bench` and `hagmoe generate` through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hagmoe.cli import main
from hagmoe.engine.config import EngineConfig
from hagmoe.engine.llm import LLM
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model import Tokenizer, named_config, random_model, save_model


def test_bench_reports_engine_and_both_baselines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--config",
            "tiny",
            "--concurrency",
            "2",
            "--num-requests",
            "4",
            "--input-len",
            "8",
            "--output-len",
            "3",
            "6",
            "--repeats",
            "3",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "cache bytes/token=" in text and "engine / naive recompute" in text
    rows = json.loads(out.read_text())
    assert [r["system"] for r in rows] == ["hagmoe engine", "static batching", "naive recompute"]
    assert rows[0]["output_tokens"] == rows[1]["output_tokens"]
    for row in rows[:2]:  # engine and static batching: the median of three alternating runs
        assert len(row["seconds_all"]) == 3 and sorted(row["seconds_all"])[1] == row["seconds"]
    assert len(rows[2]["seconds_all"]) == 0
    assert all(r["tokens_per_second"] > 0 for r in rows)


def test_generate_from_a_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = random_model(named_config("tiny", vocab_size=300), seed=0)
    save_model(model, tmp_path, tokenizer=Tokenizer.byte_level(300))
    assert main(["generate", "--model", str(tmp_path), "--max-new-tokens", "5", "Hi"]) == 0
    expected = LLM(tmp_path).generate(["Hi"], SamplingParams(max_new_tokens=5, temperature=0.0))
    assert capsys.readouterr().out == expected[0].text + "\n"


def test_bfloat16_engine_tracks_float32_forward() -> None:
    model = random_model(named_config("tiny"), seed=1)
    llm = LLM(model, config=EngineConfig(dtype="bfloat16", keep_logits=True))
    prompt = list(range(10, 30))
    out = llm.generate([prompt], SamplingParams(max_new_tokens=1, temperature=0.0))[0]
    assert len(out.token_ids) == 1
    got = next(iter(llm.engine.last_logits.values())).float()
    with torch.no_grad():
        ref = random_model(named_config("tiny"), seed=1).forward_full(torch.tensor([prompt]))
    ref_logits = ref.logits[0, -1]
    assert float((got - ref_logits).abs().max() / ref_logits.abs().max()) < 0.05
