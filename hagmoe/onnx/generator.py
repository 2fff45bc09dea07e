"""`OnnxGenerator`: prompts -> completions through the exported graphs on ONNX Runtime.

One right-padded prefill for all prompts, then one decode step per token for the sequences
still running (finished rows leave the batch). Sampling, stop rules and text follow the engine:
the same Sampler (so a seeded request draws the same tokens), EOS / stop tokens / stop strings /
max_new_tokens / max_position, and the incremental detokenizer.

Legend: B running sequences, T prompt positions, P cached positions, V vocab.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hagmoe.engine.detokenizer import IncrementalDetokenizer
from hagmoe.engine.request import Request, TokenLogprob
from hagmoe.engine.sampler import Sampler
from hagmoe.engine.sampling_params import SamplingParams, params_per_prompt, validate_prompt
from hagmoe.model.config import ModelConfig
from hagmoe.model.tokenizer import BYTE_PAD, Tokenizer
from hagmoe.onnx.session import OnnxSessions


@dataclass(slots=True)
class OnnxCompletion:
    """One prompt's finished generation (fields as hagmoe.engine.llm.Completion)."""

    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # "stop" or "length"
    stop_reason: str | int | None = None  # the stop string or stop token that ended it
    logprobs: list[TokenLogprob] = field(default_factory=list)


class OnnxGenerator:
    """Generates with an exported folder (see hagmoe.onnx.exporter) on ONNX Runtime."""

    def __init__(
        self,
        folder: str | Path,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
        tokenizer: Tokenizer | None = None,
        seed: int | None = None,
    ) -> None:
        """Open the graphs (CUDA when available, else CPU, unless `providers` is given); the
        tokenizer defaults to the folder's (byte-level over the model's vocab without one);
        `seed` seeds the sampler of unseeded requests."""
        self.sessions = OnnxSessions.load(folder, providers, threads)
        self.config = self.sessions.manifest.config
        self.tokenizer = tokenizer or _load_tokenizer(folder, self.config)
        self.sampler = Sampler(seed)
        self._ids = itertools.count()

    @property
    def eos_token_id(self) -> int | None:
        if self.config.eos_token_id is not None:
            return self.config.eos_token_id
        return self.tokenizer.eos_token_id

    @property
    def providers(self) -> list[str]:
        return self.sessions.providers

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[OnnxCompletion]:
        """Generate for every prompt (text or token ids); results in prompt order. Raises
        InvalidRequestError naming the field when a prompt or a parameter breaks a limit."""
        per_prompt = params_per_prompt(params, len(prompts))
        requests = [self._request(p, sp) for p, sp in zip(prompts, per_prompt, strict=True)]
        completions = [OnnxCompletion(list(r.prompt_token_ids)) for r in requests]
        if requests:
            self._run(requests, completions)
        return completions

    def _request(self, prompt: str | Sequence[int], params: SamplingParams) -> Request:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        params.validate(self.config.vocab_size)
        validate_prompt(ids, self.config.max_position, self.config.vocab_size)
        request = Request(f"onnx-{next(self._ids)}", ids, params, self.eos_token_id)
        request.detokenizer = IncrementalDetokenizer(
            self.tokenizer,
            ids,
            params.stop,
            params.skip_special_tokens,
            self.tokenizer.special_token_ids,
        )
        return request

    def _run(self, requests: list[Request], completions: list[OnnxCompletion]) -> None:
        """Prefill every prompt, then decode until every request has finished."""
        ids, lengths = _right_pad([r.prompt_token_ids for r in requests])  # [B, T], [B]
        logits, cache = self.sessions.prefill(ids, lengths)
        last = logits[np.arange(len(requests)), lengths - 1]  # [B, V]
        rows = list(range(len(requests)))  # request of each batch row
        while True:
            alive = self._advance(last, [requests[i] for i in rows], [completions[i] for i in rows])
            keep = [j for j, live in enumerate(alive) if live]
            if not keep:
                return
            rows = [rows[j] for j in keep]
            index = np.asarray(keep)
            lengths = lengths[index]
            cache = [c[index, : int(lengths.max())] for c in cache]
            tokens = np.asarray([[requests[i].all_token_ids[-1]] for i in rows], dtype=np.int64)
            step_logits, cache = self.sessions.decode(tokens, lengths, cache)
            lengths = lengths + 1
            last = step_logits[:, 0]  # [B, V]

    def _advance(
        self, logits: np.ndarray, requests: list[Request], completions: list[OnnxCompletion]
    ) -> list[bool]:
        """Sample one token per row of logits [B, V]; returns which requests go on."""
        out = self.sampler(torch.from_numpy(np.ascontiguousarray(logits)), requests)
        alive = []
        for row, (request, done) in enumerate(zip(requests, completions, strict=True)):
            token = out.token_ids[row]
            request.append_output_token(token)
            done.token_ids.append(token)
            logprob = out.logprobs[row]
            if logprob is not None:
                done.logprobs.append(logprob)
            alive.append(not self._finish_if_done(request, token, done))
        return alive

    def _finish_if_done(self, request: Request, token: int, done: OnnxCompletion) -> bool:
        """Append the token's text; True (and the finish fields set) when the request stops."""
        stop_string = None
        if request.detokenizer is not None:
            update = request.detokenizer.append(token)
            done.text += update.text
            stop_string = update.stop
        status, reason = request.stop_status(token, stop_string, self.config.max_position)
        if status is None:
            return False
        if stop_string is None and request.detokenizer is not None:
            done.text += request.detokenizer.flush()
        done.finish_reason, done.stop_reason = status.value, reason
        return True


def _load_tokenizer(folder: str | Path, config: ModelConfig) -> Tokenizer:
    """The folder's tokenizer.json, else byte-level covering the model's vocab (ids past the
    259 byte-level ones decode as special tokens); special ids from the config when set."""
    return Tokenizer.load(
        folder,
        vocab_size=max(config.vocab_size, BYTE_PAD + 1),
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )


def _right_pad(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> ids [B, T] (zero-padded on the right) and lengths [B], both int64."""
    lengths = np.asarray([len(p) for p in prompts], dtype=np.int64)
    ids = np.zeros((len(prompts), int(lengths.max())), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = prompt
    return ids, lengths
