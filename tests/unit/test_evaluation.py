"""hagmoe.evaluation: strided windows, scores against a float64 hand computation, file formats,
backends and the `hagmoe eval` command."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hagmoe.evaluation import evaluate_files, load_documents, strided_windows
from hagmoe.evaluation.text_data import EvalDataError
from hagmoe.model import random_model
from hagmoe.model.checkpoint import save_model
from hagmoe.model.config import named_config
from hagmoe.model.model import HagMoEModel
from hagmoe.model.tokenizer import Tokenizer

torch.set_num_threads(1)

TEXT = "To be, or not to be: that is the question. Whether 'tis nobler in the mind"


@pytest.fixture(scope="module")
def model() -> HagMoEModel:
    config = named_config("tiny", vocab_size=259, max_position=128)
    return random_model(config, seed=0, dtype=torch.float64)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.byte_level()


@pytest.mark.parametrize(
    ("length", "context", "stride"), [(2, 4, 3), (10, 4, 3), (37, 8, 2), (50, 16, 15), (5, 64, 32)]
)
def test_strided_windows_score_every_token_but_the_first_once(
    length: int, context: int, stride: int
) -> None:
    scored: list[int] = []
    for w in strided_windows(length, context, stride):
        assert w.end - w.start <= context
        assert 1 <= w.scored <= w.end - w.start - 1
        scored += range(w.end - w.scored, w.end)
    assert scored == list(range(1, length))


def test_window_settings_are_checked() -> None:
    with pytest.raises(EvalDataError, match="stride"):
        strided_windows(10, 4, 4)
    with pytest.raises(EvalDataError, match="context"):
        strided_windows(10, 1, 1)


def _hand_scores(model: HagMoEModel, tokenizer: Tokenizer, text: str) -> tuple[float, int, int]:
    prefix = (
        tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    )
    ids = [prefix, *tokenizer.encode(text)]
    nats, correct = 0.0, 0
    with torch.no_grad():
        logits = (
            model.forward_full(torch.tensor([ids])).logits[0].double()
        )  # one window: whole text
    for t in range(1, len(ids)):
        logp = torch.log_softmax(logits[t - 1], dim=-1)
        nats -= float(logp[ids[t]])
        correct += int(int(logp.argmax()) == ids[t])
    return nats, correct, len(ids) - 1


def test_scores_match_a_hand_computation_and_striding_changes_only_context(
    model: HagMoEModel, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    path = tmp_path / "a.txt"
    path.write_text(TEXT)
    nats, correct, count = _hand_scores(model, tokenizer, TEXT)
    whole = evaluate_files(model, tokenizer, [path], context=128, stride=64).total.as_dict()
    nbytes = len(TEXT.encode("utf-8"))
    assert whole["tokens"] == count and whole["bytes"] == nbytes
    assert whole["nats"] == pytest.approx(nats, rel=1e-12)
    assert whole["bpb"] == pytest.approx(nats / (math.log(2) * nbytes), rel=1e-12)
    assert whole["perplexity"] == pytest.approx(math.exp(nats / count), rel=1e-12)
    assert whole["token_accuracy"] == correct / count
    strided = evaluate_files(model, tokenizer, [path], context=16, stride=5).total.as_dict()
    assert strided["tokens"] == count
    assert strided["nats"] != pytest.approx(nats, rel=1e-9)  # shorter context, other scores
    assert strided["nats"] == pytest.approx(nats, rel=0.5)


def test_strided_windows_see_the_preceding_context(
    model: HagMoEModel, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    path = tmp_path / "a.txt"
    path.write_text(TEXT)
    ids = [tokenizer.bos_token_id, *tokenizer.encode(TEXT)]
    context, stride = 16, 5
    want = 0.0
    with torch.no_grad():
        for w in strided_windows(len(ids), context, stride):
            logits = model.forward_full(torch.tensor([ids[w.start : w.end]])).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            for t in range(w.end - w.scored, w.end):
                want -= float(logp[t - 1 - w.start, ids[t]])
    got = evaluate_files(model, tokenizer, [path], context=context, stride=stride, batch_size=3)
    assert got.total.nats == pytest.approx(want, rel=1e-12)


def test_jsonl_documents_are_scored_separately(
    model: HagMoEModel, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    a, b = TEXT[:30], TEXT[30:]
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": a}) + "\n\n" + json.dumps({"text": b, "id": 2}) + "\n")
    assert load_documents(path) == [a, b]
    report = evaluate_files(model, tokenizer, [path], context=128, stride=64)
    na, _, ca = _hand_scores(model, tokenizer, a)
    nb, _, cb = _hand_scores(model, tokenizer, b)
    assert report.total.tokens == ca + cb
    assert report.total.nats == pytest.approx(na + nb, rel=1e-12)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": 1}\n')
    with pytest.raises(EvalDataError, match=r"bad.jsonl:1"):
        load_documents(bad)


def test_engine_backend_agrees_with_full(
    model: HagMoEModel, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    path = tmp_path / "a.txt"
    path.write_text(TEXT)
    full = evaluate_files(model, tokenizer, [path], context=16, stride=8)
    engine = evaluate_files(
        model, tokenizer, [path], context=16, stride=8, batch_size=3, backend="engine"
    )
    assert engine.total.tokens == full.total.tokens
    assert engine.total.correct == full.total.correct
    assert engine.total.nats == pytest.approx(full.total.nats, rel=1e-5)
    with pytest.raises(EvalDataError, match="backend"):
        evaluate_files(model, tokenizer, [path], backend="onnx")


def test_cli_writes_json(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    config = named_config("tiny", vocab_size=259, max_position=64)
    save_model(random_model(config, seed=1), folder)
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": TEXT[::-1]}) + "\n")
    out = tmp_path / "r.json"
    cmd = [
        sys.executable,
        "-m",
        "hagmoe.cli",
        "eval",
        str(folder),
        "--data",
        str(tmp_path / "a.txt"),
        str(tmp_path / "b.jsonl"),
        "--json",
        str(out),
        "--context",
        "32",
        "--stride",
        "16",
        "--no-progress",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert [f["tokens"] for f in report["files"]] == [len(TEXT)] * 2
    assert report["total"]["tokens"] == 2 * len(TEXT)
    assert report["total"]["bytes"] == 2 * len(TEXT)
    assert report["total"]["bpb"] > 0 and 0 <= report["total"]["token_accuracy"] <= 1
