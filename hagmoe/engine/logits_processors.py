"""Per-request logit constraints applied before sampling and logprobs: OpenAI's `logit_bias`,
vLLM's `allowed_token_ids` and `bad_words` (as token-id sequences), and the token bitmask of a
request's grammar (structured_output.py).

Legend: B rows in the batch, V vocabulary, R constrained rows, W = ceil(V / 32) mask words.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hagmoe.engine.request import Request

_NEG_INF = float("-inf")


def has_constraints(request: Request) -> bool:
    p = request.sampling_params
    return bool(p.logit_bias or p.allowed_token_ids or p.bad_words_token_ids)


def apply_constraints(x: Tensor, requests: Sequence[Request]) -> Tensor:
    """Add each row's logit_bias, then send to -inf tokens outside allowed_token_ids and the
    last token of every bad word whose other tokens end the row's sequence; x [B, V]."""
    rows, cols, bias = [], [], []
    banned_rows, banned_cols = [], []
    for i, r in enumerate(requests):
        p = r.sampling_params
        for token, value in p.logit_bias.items():
            rows.append(i)
            cols.append(token)
            bias.append(value)
        banned = _banned_bad_words(r)
        banned_rows.extend([i] * len(banned))
        banned_cols.extend(banned)
    if rows:
        index = (torch.tensor(rows, device=x.device), torch.tensor(cols, device=x.device))
        x = x.index_put(index, torch.tensor(bias, dtype=x.dtype, device=x.device), accumulate=True)
    x = _keep_allowed(x, requests)
    if banned_rows:
        index = (
            torch.tensor(banned_rows, device=x.device),
            torch.tensor(banned_cols, device=x.device),
        )
        x = x.index_put(index, torch.tensor(_NEG_INF, device=x.device))
    return x


def _keep_allowed(x: Tensor, requests: Sequence[Request]) -> Tensor:
    allowed = [(i, r.sampling_params.allowed_token_ids) for i, r in enumerate(requests)]
    allowed = [(i, ids) for i, ids in allowed if ids]
    if not allowed:
        return x
    keep = torch.ones_like(x, dtype=torch.bool)  # [B, V]
    for i, ids in allowed:
        keep[i] = False
        keep[i, torch.tensor(ids, device=x.device)] = True
    return x.masked_fill(~keep, _NEG_INF)


def _banned_bad_words(request: Request) -> list[int]:
    """A bad word's last token is banned when its earlier tokens end the sequence so far."""
    seq = request.all_token_ids
    banned = []
    for word in request.sampling_params.bad_words_token_ids:
        prefix = word[:-1]
        if not prefix or seq[len(seq) - len(prefix) :] == prefix:
            banned.append(word[-1])
    return banned


def has_grammar(request: Request) -> bool:
    return request.grammar is not None


def apply_grammars(x: Tensor, requests: Sequence[Request]) -> Tensor:
    """Send every token the row's matcher refuses to -inf; x [B, V] (a copy is returned)."""
    import llguidance.torch as llg_torch

    rows = [i for i, r in enumerate(requests) if r.grammar is not None]
    if not rows:
        return x
    vocab = x.shape[-1]
    bitmask = llg_torch.allocate_token_bitmask(len(rows), vocab)  # [R, W]
    for j, i in enumerate(rows):
        llg_torch.fill_next_token_bitmask(requests[i].grammar, bitmask, j)
    index = torch.tensor(rows, device=x.device)
    constrained = x.index_select(0, index).float().cpu()  # [R, V]
    llg_torch.apply_token_bitmask_inplace(constrained, bitmask)
    return x.index_copy(0, index, constrained.to(x.device, x.dtype))
