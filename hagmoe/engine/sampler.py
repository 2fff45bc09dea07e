"""Turns one row of logits per request into its next token, with vLLM / TGI semantics.

Shape legend: B = rows in the batch, S = rows that sample (not greedy), L = rows that asked for
logprobs, V = vocabulary, K = the largest top_k in force, N = the largest top-n of logprobs,
P = (row, token) pairs gathered from the requests' token lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hagmoe.engine.logits_processors import (
    apply_constraints,
    apply_grammars,
    has_constraints,
    has_grammar,
)
from hagmoe.engine.request import Request, TokenLogprob
from hagmoe.kernels import cpu

_NEG_INF = float("-inf")


@dataclass(slots=True)
class SamplerOutput:
    """One token per request, in batch order, and its logprobs where the request asked."""

    token_ids: list[int]
    logprobs: list[TokenLogprob | None]


class Sampler:
    """Penalties, min-tokens masking and logit constraints (bias, allowed ids, bad words), then
    greedy argmax or temperature/top-k/top-p/typical/min-p sampling, vectorised over the batch.

    Seeded requests draw their randomness (one uniform per step) from `request.generator`, so a
    seeded request samples the same tokens whatever else is in the batch and wherever its row is;
    the other rows share one engine generator seeded with `seed` (non-deterministic if None).
    """

    def __init__(self, seed: int | None = None) -> None:
        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)

    def __call__(self, logits: Tensor, requests: Sequence[Request]) -> SamplerOutput:
        """Pick the next token of each request from `logits` [B, V] (float32 or bfloat16).

        Logprobs (requests with `sampling_params.logprobs` set) are log_softmax of the logits
        after penalties, min-tokens masking and the logit constraints but BEFORE temperature,
        top-k, top-p, typical-p and min-p: the model's distribution, not the sampling one. The
        requests are not mutated; only the generators of seeded, non-greedy requests advance
        (one draw per call).
        """
        if logits.dim() != 2 or logits.shape[0] != len(requests):
            raise ValueError(f"logits {tuple(logits.shape)} do not match {len(requests)} requests")
        if not requests:
            return SamplerOutput([], [])
        if all(_is_plain_greedy(r) for r in requests):
            return _plain_greedy(logits, requests)
        x = logits.float()  # [B, V]
        x = _apply_penalties(x, requests)
        x = _mask_min_tokens(x, requests)
        if any(has_constraints(r) for r in requests):
            x = apply_constraints(x, requests)
        if any(has_grammar(r) for r in requests):
            x = apply_grammars(x, requests)
        chosen = x.argmax(dim=-1)  # [B]
        rows = [i for i, r in enumerate(requests) if not r.sampling_params.greedy]
        if rows:
            index = torch.tensor(rows, device=x.device)  # [S]
            sampled = self._sample(x.index_select(0, index), [requests[i] for i in rows])
            chosen = chosen.index_copy(0, index, sampled)
        token_ids: list[int] = chosen.tolist()
        return SamplerOutput(token_ids, _logprobs(x, token_ids, requests))

    def _sample(self, x: Tensor, requests: Sequence[Request]) -> Tensor:
        """Warp `x` [S, V] row by row and draw one token per row; returns [S] (int64)."""
        params = [r.sampling_params for r in requests]
        device = x.device
        temperature = torch.tensor([p.temperature for p in params], device=device)  # [S]
        x = x / temperature.unsqueeze(1)
        if any(p.top_k > 0 for p in params):
            x = _top_k(x, [p.top_k for p in params])
        if any(p.top_p < 1.0 for p in params):
            x = _top_p(x, torch.tensor([p.top_p for p in params], device=device))
        if any(p.typical_p < 1.0 for p in params):
            x = _typical_p(x, torch.tensor([p.typical_p for p in params], device=device))
        if any(p.min_p > 0.0 for p in params):
            x = _min_p(x, torch.tensor([p.min_p for p in params], device=device))
        probs = torch.softmax(x, dim=-1)  # [S, V]
        return _inverse_cdf(probs, self._uniforms(requests).to(device))

    def _uniforms(self, requests: Sequence[Request]) -> Tensor:
        """One U[0, 1) per row (float64, CPU) from the row's own generator or the shared one."""
        uniforms = torch.rand(len(requests), generator=self._generator, dtype=torch.float64)  # [S]
        for row, request in enumerate(requests):
            if request.generator is not None:
                uniforms[row] = torch.rand((), generator=request.generator, dtype=torch.float64)
        return uniforms


def _plain_greedy(logits: Tensor, requests: Sequence[Request]) -> SamplerOutput:
    """Argmax of each row of logits [B, V], and where asked the chosen token's logprob (its
    logit minus the row's logsumexp; no alternatives)."""
    # not cpu.enabled_for: the sampler is never traced nor differentiated, and each check it
    # skips is one more cold call after a decode step
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and cpu.library():
        token_ids, logprob = cpu.greedy_logprob(logits)  # S, 32 rows: 71 us; torch argmax 95
    elif not any(r.sampling_params.logprobs is not None for r in requests):
        return SamplerOutput(logits.argmax(dim=-1).tolist(), [None] * len(requests))
    else:
        best, ids = logits.max(dim=-1)  # [B]: the first maximum, as argmax
        token_ids = ids.tolist()
        logprob = (best.float() - torch.logsumexp(logits.float(), dim=-1)).tolist()  # [B]
    return SamplerOutput(
        token_ids,
        [
            TokenLogprob(t, lp, {}) if r.sampling_params.logprobs is not None else None
            for t, lp, r in zip(token_ids, logprob, requests, strict=True)
        ],
    )


def _is_plain_greedy(request: Request) -> bool:
    """Greedy with nothing to apply first and no logprob alternatives asked."""
    p = request.sampling_params
    return (
        p.greedy
        and not p.logprobs
        and not _has_penalty(request)
        and not _min_tokens_active(request)
        and not has_constraints(request)
        and not has_grammar(request)
    )


def _has_penalty(request: Request) -> bool:
    p = request.sampling_params
    return p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0


def _min_tokens_active(request: Request) -> bool:
    return len(request.output_token_ids) < request.sampling_params.min_new_tokens


def _flat_index(
    token_lists: list[list[int]], rows: list[int], device: torch.device
) -> tuple[Tensor, Tensor]:
    """(row, token) index pairs [P] for scatter: every token of token_lists[j] paired with rows[j]."""
    lengths = torch.tensor([len(t) for t in token_lists])
    row_index = torch.repeat_interleave(torch.tensor(rows), lengths)
    tokens = torch.tensor([t for ts in token_lists for t in ts], dtype=torch.long)
    return row_index.to(device), tokens.to(device)


def _apply_penalties(x: Tensor, requests: Sequence[Request]) -> Tensor:
    """Repetition (CTRL, prompt + output), then frequency and presence (OpenAI, output)."""
    rep_rows = [i for i, r in enumerate(requests) if r.sampling_params.repetition_penalty != 1.0]
    if rep_rows:
        seen = _flat_index([requests[i].all_token_ids for i in rep_rows], rep_rows, x.device)
        mask = torch.zeros_like(x, dtype=torch.bool).index_put_(
            seen, torch.ones((), dtype=torch.bool, device=x.device)
        )  # [B, V]
        penalty = _column(x, [r.sampling_params.repetition_penalty for r in requests])
        scaled = torch.where(x > 0, x / penalty, x * penalty)
        x = torch.where(mask, scaled, x)
    out_rows = [
        i
        for i, r in enumerate(requests)
        if r.sampling_params.frequency_penalty != 0.0 or r.sampling_params.presence_penalty != 0.0
    ]
    if out_rows:
        seen = _flat_index([requests[i].output_token_ids for i in out_rows], out_rows, x.device)
        ones = torch.ones(seen[0].shape[0], device=x.device)  # [P]
        counts = torch.zeros_like(x).index_put_(seen, ones, accumulate=True)  # [B, V]
        frequency = _column(x, [r.sampling_params.frequency_penalty for r in requests])
        presence = _column(x, [r.sampling_params.presence_penalty for r in requests])
        x = x - frequency * counts - presence * (counts > 0).float()
    return x


def _column(x: Tensor, values: list[float]) -> Tensor:
    """A per-row parameter as a [B, 1] float32 column on x's device."""
    return torch.tensor(values, dtype=torch.float32, device=x.device)[:, None]


def _mask_min_tokens(x: Tensor, requests: Sequence[Request]) -> Tensor:
    """EOS (unless ignore_eos) and stop_token_ids to -inf while output < min_new_tokens."""
    rows: list[int] = []
    cols: list[int] = []
    for i, r in enumerate(requests):
        if not _min_tokens_active(r):
            continue
        banned = list(r.sampling_params.stop_token_ids)
        if r.eos_token_id is not None and not r.sampling_params.ignore_eos:
            banned.append(r.eos_token_id)
        rows.extend([i] * len(banned))
        cols.extend(banned)
    if not rows:
        return x
    index = (torch.tensor(rows, device=x.device), torch.tensor(cols, device=x.device))
    return x.index_put(index, torch.tensor(_NEG_INF, device=x.device))


def _top_k(x: Tensor, ks: list[int]) -> Tensor:
    """Keep each row's k largest logits (ties with the k-th kept); k = 0 or >= V is off."""
    vocab = x.shape[-1]
    active = [0 < k < vocab for k in ks]
    k_max = max(k for k, on in zip(ks, active, strict=True) if on) if any(active) else 0
    if k_max == 0:
        return x
    top = torch.topk(x, k_max, dim=-1).values  # [S, K]
    kth = torch.tensor(
        [k - 1 if on else 0 for k, on in zip(ks, active, strict=True)], device=x.device
    )
    threshold = top.gather(1, kth[:, None])  # [S, 1]
    on = torch.tensor(active, device=x.device)[:, None]  # [S, 1]
    return x.masked_fill(on & (x < threshold), _NEG_INF)


def _top_p(x: Tensor, top_p: Tensor) -> Tensor:
    """Keep the smallest prefix of tokens (by probability) whose mass reaches top_p [S]."""
    probs = torch.softmax(x, dim=-1)  # [S, V]
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)  # [S, V]
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # [S, V]
    drop_sorted = (mass_before >= top_p[:, None]) & (top_p < 1.0)[:, None]
    drop_sorted[:, 0] = False
    return x.masked_fill(drop_sorted.scatter(1, order, drop_sorted), _NEG_INF)


def _typical_p(x: Tensor, mass: Tensor) -> Tensor:
    """Locally typical sampling (HF TypicalLogitsWarper) with per-row mass [S]."""
    logp = torch.log_softmax(x, dim=-1)  # [S, V]
    p = logp.exp()
    entropy = -(logp * p).nansum(dim=-1, keepdim=True)  # [S, 1]
    surprise_gap = (-logp - entropy).abs()  # [S, V]
    sorted_gap, order = torch.sort(surprise_gap, dim=-1, stable=True)  # [S, V]
    cumulative = p.gather(1, order).cumsum(dim=-1)  # [S, V]
    last = (cumulative < mass[:, None]).sum(dim=-1, keepdim=True).clamp(max=x.shape[-1] - 1)
    drop_sorted = (sorted_gap > sorted_gap.gather(1, last)) & (mass < 1.0)[:, None]
    drop_sorted[:, 0] = False
    return x.masked_fill(drop_sorted.scatter(1, order, drop_sorted), _NEG_INF)


def _min_p(x: Tensor, min_p: Tensor) -> Tensor:
    """Drop tokens less likely than min_p [S] times the row's most likely token."""
    probs = torch.softmax(x, dim=-1)  # [S, V]
    threshold = min_p[:, None] * probs.max(dim=-1, keepdim=True).values  # [S, 1]
    return x.masked_fill(probs < threshold, _NEG_INF)


def _inverse_cdf(probs: Tensor, uniforms: Tensor) -> Tensor:
    """Token whose CDF interval holds u * total, per row; never a zero-probability token."""
    cdf = probs.double().cumsum(dim=-1)  # [S, V]
    total = cdf[:, -1:]  # [S, 1]
    target = torch.minimum(
        uniforms[:, None] * total, torch.nextafter(total, torch.zeros_like(total))
    )
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)


def _logprobs(
    x: Tensor, token_ids: list[int], requests: Sequence[Request]
) -> list[TokenLogprob | None]:
    """The chosen token's logprob and top-n alternatives for rows that asked, from x [B, V]."""
    out: list[TokenLogprob | None] = [None] * len(requests)
    rows = [i for i, r in enumerate(requests) if r.sampling_params.logprobs is not None]
    if not rows:
        return out
    index = torch.tensor(rows, device=x.device)  # [L]
    found = token_logprobs(
        x.index_select(0, index),
        [token_ids[i] for i in rows],
        [requests[i].sampling_params.logprobs or 0 for i in rows],
    )
    for i, logprob in zip(rows, found, strict=True):
        out[i] = logprob
    return out


def token_logprobs(logits: Tensor, targets: list[int], top_n: list[int]) -> list[TokenLogprob]:
    """Row i's logprob of targets[i] and its top_n[i] alternatives, from logits [R, V]."""
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
    target_ids = torch.tensor(targets, device=logits.device)  # [R]
    chosen = logp.gather(1, target_ids[:, None]).squeeze(1).tolist()
    wanted = [min(n, logits.shape[-1]) for n in top_n]
    values: list[list[float]] = [[] for _ in targets]
    ids: list[list[int]] = [[] for _ in targets]
    if max(wanted, default=0) > 0:
        top_values, top_ids = torch.topk(logp, max(wanted), dim=-1)  # [R, N]
        values, ids = top_values.tolist(), top_ids.tolist()
    return [
        TokenLogprob(t, c, dict(zip(ids[j][:n], values[j][:n], strict=True)))
        for j, (t, c, n) in enumerate(zip(targets, chosen, wanted, strict=True))
    ]
