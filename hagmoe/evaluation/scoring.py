"""Scoring: nats, bits per byte, perplexity and top-1 accuracy of a model over documents.

bits per byte = total nats / (ln 2 * UTF-8 bytes of the scored text), as in
hagmoe.training.evaluation. Each document is prefixed with the tokenizer's BOS (else EOS) token
when it has one, so every text token is a target and the scored text is the whole document;
without one the first token is context only and its bytes are not counted.

Legend: B windows in a batch, T tokens per window, V vocabulary size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.evaluation.text_data import EvalDataError, load_documents, strided_windows
from hagmoe.model.model import HagMoEModel
from hagmoe.model.tokenizer import Tokenizer

BACKENDS = ("full", "engine")
Window = tuple[list[int], int]  # a window's token ids, and how many of its last tokens score
Scorer = Callable[[list[Window], "FileScore"], None]


@dataclass(slots=True)
class FileScore:
    """Totals over one file (or all files)."""

    name: str
    tokens: int = 0
    bytes: int = 0
    nats: float = 0.0
    correct: int = 0

    def add(self, other: FileScore) -> None:
        self.tokens += other.tokens
        self.bytes += other.bytes
        self.nats += other.nats
        self.correct += other.correct

    def as_dict(self) -> dict[str, float | int | str]:
        tokens = max(self.tokens, 1)
        return {
            "name": self.name,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "nats": self.nats,
            "bpb": self.nats / (math.log(2) * max(self.bytes, 1)),
            "perplexity": math.exp(self.nats / tokens),
            "token_accuracy": self.correct / tokens,
        }


@dataclass(slots=True)
class EvalReport:
    """Per file and total scores, with the settings that produced them."""

    files: list[FileScore]
    total: FileScore
    settings: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "settings": self.settings,
            "files": [f.as_dict() for f in self.files],
            "total": self.total.as_dict(),
        }


def score_documents(
    model: HagMoEModel,
    tokenizer: Tokenizer,
    docs: Sequence[str],
    name: str,
    context: int,
    stride: int,
    batch_size: int = 8,
    progress: Any = None,
    scorer: Scorer | None = None,
) -> FileScore:
    """Totals of `docs` over strided windows (text_data.strided_windows), windows batched by
    length, document boundaries respected; `scorer` defaults to the full forward of `model`."""
    scorer = scorer or (lambda batch, score: _score_batch(model, batch, score))
    prefix = (
        tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    )
    score = FileScore(name)
    jobs: dict[int, list[Window]] = {}
    for text in docs:
        ids = tokenizer.encode(text)
        nbytes = len(text.encode("utf-8"))
        if prefix is not None:
            ids = [prefix, *ids]
        elif ids:
            nbytes -= len(tokenizer.decode(ids[:1], skip_special_tokens=False).encode("utf-8"))
        if len(ids) < 2:
            continue
        score.bytes += nbytes
        for w in strided_windows(len(ids), context, stride):
            jobs.setdefault(w.end - w.start, []).append((ids[w.start : w.end], w.scored))
    for group in jobs.values():
        for i in range(0, len(group), batch_size):
            scorer(group[i : i + batch_size], score)
            if progress is not None:
                progress.update(len(group[i : i + batch_size]))
    return score


@torch.no_grad()
def _score_batch(model: HagMoEModel, batch: list[Window], score: FileScore) -> None:
    ids = torch.tensor([b[0] for b in batch], dtype=torch.long, device=model.device)  # [B, T]
    logits = model.forward_full(ids).logits  # [B, T, V]
    logp = torch.log_softmax(logits.double(), dim=-1)  # [B, T, V]
    for row, (_, scored) in enumerate(batch):
        pred = logp[row, -scored - 1 : -1]  # [S, V]
        target = ids[row, -scored:]  # [S]
        score.nats -= float(pred.gather(1, target[:, None]).sum())
        score.correct += int((pred.argmax(-1) == target).sum())
        score.tokens += scored


def engine_scorer(model: HagMoEModel, context: int, batch_size: int) -> Scorer:
    """Score windows through the serving engine's prompt logprobs (prefix caching off), each
    window a request; its batch runs side by side in the engine's continuous batching."""
    limit = model.config.max_position
    if model.config.position == "learned" and context >= limit:
        raise EvalDataError(
            f"context {context}: the engine backend needs context < max_position {limit} "
            "(a request leaves room for one new token)"
        )
    config = EngineConfig(
        max_num_seqs=batch_size,
        max_model_len=context + 1,
        enable_prefix_caching=False,
        dtype=str(model.dtype).removeprefix("torch."),
    )
    core = EngineCore(model, None, config)
    params = SamplingParams(max_new_tokens=1, temperature=0.0, ignore_eos=True, prompt_logprobs=1)

    def score_batch(batch: list[Window], score: FileScore) -> None:
        for i, (ids, _) in enumerate(batch):
            core.add_request(f"w{i}", ids, params)
        found = {}
        while core.has_unfinished_requests():
            found.update(
                {o.request_id: o.prompt_logprobs for o in core.step() if o.prompt_logprobs}
            )
        for i, (_, scored) in enumerate(batch):
            for lp in found[f"w{i}"][-scored:]:
                assert lp is not None
                score.nats -= lp.logprob
                score.correct += int(next(iter(lp.top)) == lp.token_id)
            score.tokens += scored

    return score_batch


def evaluate_files(
    model: HagMoEModel,
    tokenizer: Tokenizer,
    paths: Sequence[str | Path],
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    backend: str = "full",
    progress: bool = False,
) -> EvalReport:
    """Bits per byte, perplexity and top-1 token accuracy of `model` over each file (.txt: one
    document; .jsonl: a "text" field per line) and in total. context defaults to the model's
    max_position, stride to half of it. backend "full": batched full forwards; "engine": the
    serving engine's prompt logprobs (its batching, paged cache and kernels)."""
    if backend not in BACKENDS:
        raise EvalDataError(f"backend must be one of {BACKENDS}, got {backend!r}")
    context = context or model.config.max_position
    if context > model.config.max_position:
        raise EvalDataError(
            f"context {context} exceeds the model's max_position {model.config.max_position}"
        )
    stride = stride or max(context // 2, 1)
    scorer = engine_scorer(model, context, batch_size) if backend == "engine" else None
    was_training = model.training
    model.eval()
    bar = _progress_bar(len(paths)) if progress else None
    files = []
    for path in paths:
        docs = load_documents(path)
        files.append(
            score_documents(
                model, tokenizer, docs, str(path), context, stride, batch_size, bar, scorer
            )
        )
    if bar is not None:
        bar.close()
    model.train(was_training)
    total = FileScore("total")
    for f in files:
        total.add(f)
    settings: dict[str, object] = {
        "context": context,
        "stride": stride,
        "batch_size": batch_size,
        "backend": backend,
    }
    return EvalReport(files, total, settings)


def _progress_bar(n_files: int) -> Any:
    from tqdm import tqdm

    return tqdm(unit="window", desc=f"eval ({n_files} files)")
