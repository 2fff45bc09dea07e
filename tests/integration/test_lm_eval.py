"""lm-eval's `local-completions` model (LocalCompletionsAPI) against a real server on the
bundled model: a loglikelihood task from a local JSONL file gives the per-example
loglikelihoods the engine computes offline (prompt logprobs through EngineCore) to 1e-4, and a
generate_until task gives the engine's own greedy text. The tasks and data are written here;
nothing is downloaded (HF hub and datasets offline, the tokenizer from the bundled
tokenizer.json).

What lm-eval sends (lm_eval/models/openai_completions.py, 0.4.x), one POST /v1/completions per
batch: loglikelihood `{model, prompt, temperature: 0, max_tokens: 1, logprobs: 1, seed,
echo: true}` and reads `choices[i].logprobs.token_logprobs[ctxlen:-1]` (and `top_logprobs`
for is_greedy), choices sorted by `index`; generate_until `{prompt, model, max_tokens,
temperature: 0, stop: [...until, eos], seed}` and reads `choices[i].text` by `index`. `prompt`
is `[[ids...], ...]` (one list per request in the batch) with tokenized requests, else a string
(batch_size 1) or a list of strings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import lm_eval
import pytest
from lm_eval.models.openai_completions import LocalCompletionsAPI
from lm_eval.tasks import TaskManager

import hagmoe
from hagmoe.engine.config import EngineConfig
from hagmoe.engine.llm import LLM
from hagmoe.engine.sampling_params import SamplingParams
from loadtests.server_process import ServeProcess

MODEL = "bundled"
FOLDER = Path(hagmoe.__file__).parent / "assets"
TOL = 1e-4
MAX_GEN = 8
UNTIL = ["\n"]
SUCCESS = 'outcome="success",route="/v1/completions"'
DOCS = [
    {"context": "The king said to the", "target": " queen"},
    {"context": "To be or not to", "target": " be, that is the question"},
    {"context": "Friends, Romans,", "target": " countrymen"},
    {"context": "All the world's a", "target": " stage"},
    {"context": "What light through yonder window", "target": " breaks?"},
    {"context": "Now is the winter of our", "target": " discontent"},
    {"context": "A horse! A horse! My kingdom for a", "target": " horse!"},
    {"context": "The lady doth protest too much,", "target": " methinks."},
    {"context": "The king said to the queen", "target": ","},  # the model's own argmax
]


@pytest.fixture(scope="module")
def offline() -> LLM:
    """The same model, dtype and tokenizer in the offline engine."""
    return LLM(FOLDER, config=EngineConfig(dtype="float32", max_num_seqs=len(DOCS)))


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A loglikelihood and a generate_until task over one local JSONL file."""
    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    dataset = {
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": str(data), "cache_dir": str(folder / "cache")},
        "test_split": "train",
        "doc_to_text": "{{context}}",
        "doc_to_target": "{{target}}",
    }
    ll = {
        "task": "hagmoe_ll",
        **dataset,
        "output_type": "loglikelihood",
        "metric_list": [{"metric": "perplexity"}, {"metric": "acc"}],
    }
    gen = {
        "task": "hagmoe_gen",
        **dataset,
        "output_type": "generate_until",
        "generation_kwargs": {"until": UNTIL, "max_gen_toks": MAX_GEN},
        "metric_list": [{"metric": "exact_match"}],
    }
    # JSON is YAML: the task files need no YAML writer.
    (folder / "hagmoe_ll.yaml").write_text(json.dumps(ll))
    (folder / "hagmoe_gen.yaml").write_text(json.dumps(gen))
    return folder


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder transformers' AutoTokenizer loads offline: the bundled tokenizer.json and a
    tokenizer_config.json naming the fast tokenizer class and the EOS token."""
    folder = tmp_path_factory.mktemp("lm-eval-tokenizer")
    shutil.copy(FOLDER / "tokenizer.json", folder / "tokenizer.json")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")


def _offline_loglikelihood(llm: LLM, context: list[int], continuation: list[int]) -> Any:
    """Sum of the continuation's prompt logprobs, and whether each token is the argmax."""
    engine = llm.engine
    params = SamplingParams(max_new_tokens=1, temperature=0.0, ignore_eos=True, prompt_logprobs=1)
    engine.add_request("ll", context + continuation, params)
    found = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            found = found or out.prompt_logprobs
    assert found is not None
    scored = found[len(context) :]
    assert all(lp is not None for lp in scored)
    total = sum(lp.logprob for lp in scored if lp is not None)
    greedy = all(next(iter(lp.top)) == lp.token_id for lp in scored if lp is not None)
    return total, greedy


# batch_size 1 sends one prompt per request (`prompt: [[ids]]`, or a string untokenized);
# num_concurrent 4 sends four such requests at once, so the server batches them in the engine;
# batch_size > 1 sends a list of prompts in one request (token-id lists, or strings), a batch
# whose choices come back in prompt order (`index`); 9 documents: batches 4, 4, 1 and 3, 3, 3.
SETTINGS = {
    "tokens": {"batch_size": 1, "num_concurrent": 1, "tokenized_requests": True},
    "text": {"batch_size": 1, "num_concurrent": 1, "tokenized_requests": False},
    "concurrent": {"batch_size": 1, "num_concurrent": 4, "tokenized_requests": True},
    "batch-tokens": {"batch_size": 4, "num_concurrent": 1, "tokenized_requests": True},
    "batch-text": {"batch_size": 3, "num_concurrent": 1, "tokenized_requests": False},
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_lm_eval_local_completions_matches_the_offline_engine(
    bundled: ServeProcess, offline: LLM, tasks: Path, hf_tokenizer: Path, setting: str
) -> None:
    calls = bundled.metric("hagmoe_requests_total", SUCCESS)
    lm = LocalCompletionsAPI(
        model=MODEL,
        base_url=bundled.url + "/v1/completions",
        tokenizer=str(hf_tokenizer),
        tokenizer_backend="huggingface",
        max_length=512,
        max_retries=1,
        timeout=60,
        **SETTINGS[setting],
    )
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=["hagmoe_ll", "hagmoe_gen"],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
    )
    assert results is not None
    samples = results["samples"]
    # one request per batch of each task: the batches really were sent as batches
    per_task = -(-len(DOCS) // SETTINGS[setting]["batch_size"])
    assert bundled.metric("hagmoe_requests_total", SUCCESS) - calls == 2 * per_task

    ll = sorted(samples["hagmoe_ll"], key=lambda s: s["doc_id"])
    assert len(ll) == len(DOCS)
    for s in ll:
        doc = DOCS[s["doc_id"]]
        [(context, continuation)] = s["arguments"]
        assert (context, continuation) == (doc["context"], doc["target"])
        [[(got, got_greedy)]] = s["resps"]
        ctx_ids, cont_ids = lm._encode_pair(context, continuation)
        want, want_greedy = _offline_loglikelihood(offline, ctx_ids, cont_ids)
        assert abs(got - want) < TOL, (s["doc_id"], got, want)
        assert got_greedy == want_greedy
    assert any(s["resps"][0][0][1] for s in ll) and not all(s["resps"][0][0][1] for s in ll)
    assert results["results"]["hagmoe_ll"]["acc,none"] == pytest.approx(
        sum(bool(s["resps"][0][0][1]) for s in ll) / len(ll)
    )

    gen = sorted(samples["hagmoe_gen"], key=lambda s: s["doc_id"])
    assert len(gen) == len(DOCS)
    params = SamplingParams(max_new_tokens=MAX_GEN, temperature=0.0, stop=[*UNTIL, "<|endoftext|>"])
    expected = offline.generate([d["context"] for d in DOCS], params)
    for s, want_gen in zip(gen, expected, strict=True):
        [[text]] = s["resps"]
        assert isinstance(text, str) and text == want_gen.text, (s["doc_id"], text)
    assert "exact_match,none" in results["results"]["hagmoe_gen"]
