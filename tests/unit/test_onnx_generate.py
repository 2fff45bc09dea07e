"""Generation on ONNX Runtime equals the hagmoe engine's: greedy and seeded sampling, rows that
finish at different steps, stop tokens, and the `export-onnx` / `generate --backend` commands."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from hagmoe.cli import main
from hagmoe.engine.config import EngineConfig
from hagmoe.engine.errors import InvalidRequestError
from hagmoe.engine.llm import LLM
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model import HagMoEModel, named_config, random_model, save_model
from hagmoe.onnx import OnnxGenerator, export_onnx


@pytest.fixture(scope="module")
def model() -> HagMoEModel:
    return random_model(named_config("tiny", num_kv_heads=2), seed=7)


@pytest.fixture(scope="module")
def generator(model: HagMoEModel, tmp_path_factory: pytest.TempPathFactory) -> OnnxGenerator:
    folder = tmp_path_factory.mktemp("onnx")
    export_onnx(model, folder)
    return OnnxGenerator(folder, providers=["CPUExecutionProvider"], threads=1)


def _prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(320) for _ in range(rng.randint(1, 24))] for _ in range(n)]


def _engine(model: HagMoEModel) -> LLM:
    return LLM(model, config=EngineConfig(block_size=4, num_blocks=96))


def test_greedy_tokens_equal_engine(model: HagMoEModel, generator: OnnxGenerator) -> None:
    prompts = _prompts(5, seed=1)
    params = [
        SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True)
        for n in (12, 3, 8, 1, 12)
    ]
    want = [c.token_ids for c in _engine(model).generate(prompts, params)]
    got = generator.generate(prompts, params)
    assert [c.token_ids for c in got] == want
    assert [len(c.token_ids) for c in got] == [12, 3, 8, 1, 12]
    assert all(c.finish_reason == "length" for c in got)


def test_seeded_sampling_equals_engine(model: HagMoEModel, generator: OnnxGenerator) -> None:
    prompts = _prompts(3, seed=2)
    params = [
        SamplingParams(
            max_new_tokens=10, temperature=8.0, top_k=40, top_p=0.95, seed=s, ignore_eos=True
        )
        for s in (11, 12, 13)
    ]  # the random model's logits span tens of nats: a high temperature makes draws matter
    want = [c.token_ids for c in _engine(model).generate(prompts, params)]
    got = [c.token_ids for c in generator.generate(prompts, params)]
    assert got == want
    assert all(len(set(tokens)) > 2 for tokens in got)
    again = [c.token_ids for c in generator.generate(prompts[::-1], params[::-1])]
    assert again == got[::-1]


def test_stop_token_and_logprobs(generator: OnnxGenerator) -> None:
    prompt = _prompts(1, seed=3)[0]
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True)
    full = generator.generate([prompt], greedy)[0].token_ids
    stop = full[3]
    first = full.index(stop)
    params = SamplingParams(
        max_new_tokens=8, temperature=0.0, ignore_eos=True, stop_token_ids=[stop], logprobs=2
    )
    done = generator.generate([prompt], params)[0]
    assert done.token_ids == full[: first + 1]
    assert (done.finish_reason, done.stop_reason) == ("stop", stop)
    assert [lp.token_id for lp in done.logprobs] == done.token_ids
    assert all(len(lp.top) == 2 and lp.logprob <= 0 for lp in done.logprobs)


def test_invalid_prompt_names_the_field(generator: OnnxGenerator) -> None:
    with pytest.raises(InvalidRequestError, match="prompt"):
        generator.generate([[]])
    with pytest.raises(InvalidRequestError, match="vocab_size"):
        generator.generate([[5, 320]])
    with pytest.raises(InvalidRequestError, match="temperature"):
        generator.generate([[5]], SamplingParams(temperature=-1.0))


def test_cli_export_and_generate_match_torch_backend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, out = tmp_path / "ckpt", tmp_path / "onnx"
    byte_model = random_model(named_config("tiny", vocab_size=259), seed=8)  # byte-level vocab
    save_model(byte_model, ckpt)
    assert main(["export-onnx", str(ckpt), str(out)]) == 0
    assert (out / "manifest.json").is_file() and (out / "decode.onnx").is_file()
    capsys.readouterr()
    args = ["hello world", "--max-new-tokens", "6", "--num-blocks", "64", "--block-size", "4"]
    assert main(["generate", "--model", str(ckpt), *args]) == 0
    torch_text = capsys.readouterr().out
    assert main(["generate", "--backend", "onnxruntime", "--model", str(out), *args]) == 0
    assert capsys.readouterr().out == torch_text
    assert torch_text.strip()
