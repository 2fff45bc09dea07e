"""Sampler: greedy, warpers, seeded reproducibility, distributions, penalties, logprobs."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
import torch

from hagmoe.engine.request import Request
from hagmoe.engine.sampler import Sampler
from hagmoe.engine.sampling_params import SamplingParams


def make_request(
    prompt: list[int] | None = None,
    output: list[int] | None = None,
    eos: int | None = None,
    **params: Any,
) -> Request:
    request = Request("r", prompt or [0], SamplingParams(**params), eos_token_id=eos)
    for token in output or []:
        request.append_output_token(token)
    return request


def chi_square(counts: Counter[int], probs: list[float], draws: int) -> float:
    return sum((counts[i] - draws * p) ** 2 / (draws * p) for i, p in enumerate(probs))


def test_greedy_is_argmax_with_lowest_id_on_ties() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [5.0, 5.0, 5.0, 5.0], [0.0, -1.0, 2.0, 2.0]])
    sampler = Sampler(seed=0)
    fast = sampler(logits, [make_request(temperature=0.0) for _ in range(3)])
    slow = sampler(logits, [make_request(temperature=0.0, logprobs=1) for _ in range(3)])
    assert fast.token_ids == slow.token_ids == [1, 0, 2]
    assert fast.logprobs == [None, None, None]


@pytest.mark.parametrize("warper", [{"top_k": 1}, {"top_p": 1e-6}])
def test_top_k_one_and_tiny_top_p_equal_greedy(warper: dict[str, Any]) -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 100, generator=gen) * 3
    sampler = Sampler(seed=0)
    greedy = sampler(logits, [make_request(temperature=0.0) for _ in range(16)]).token_ids
    for temperature in (0.5, 1.0, 3.0):
        requests = [make_request(temperature=temperature, **warper) for _ in range(16)]
        assert sampler(logits, requests).token_ids == greedy


def test_tiny_top_p_breaks_ties_like_greedy() -> None:
    logits = torch.tensor([[0.0, 2.0, 2.0, 2.0]])
    assert Sampler(seed=0)(logits, [make_request(top_p=1e-6)]).token_ids == [1]


def run_steps(batch_of: Any, steps: int, vocab: int = 50) -> list[int]:
    """Sample `steps` tokens for a seeded request placed in a batch built by batch_of."""
    target = make_request(seed=1234, temperature=1.0, top_k=20, top_p=0.95)
    sampler = Sampler()
    tokens = []
    for step in range(steps):
        row = torch.randn(vocab, generator=torch.Generator().manual_seed(step))
        requests, logits, position = batch_of(target, row, step)
        token = sampler(logits, requests).token_ids[position]
        target.append_output_token(token)
        tokens.append(token)
    return tokens


def test_seeded_sampling_ignores_batch_composition_and_position() -> None:
    def alone(target: Request, row: torch.Tensor, step: int) -> Any:
        return [target], row[None], 0

    def crowded(target: Request, row: torch.Tensor, step: int) -> Any:
        others = [
            make_request(temperature=0.7 + 0.1 * i, top_k=i, output=[i] * step) for i in range(7)
        ]
        position = (3 * step + 1) % 8
        requests = [*others[:position], target, *others[position:]]
        logits = torch.randn(8, row.shape[0])
        logits[position] = row
        return requests, logits, position

    assert run_steps(alone, 12) == run_steps(crowded, 12)


def test_different_seeds_give_different_tokens() -> None:
    logits = torch.zeros(2, 1000)
    sampler = Sampler(seed=0)
    first, second = make_request(seed=1), make_request(seed=2)
    a, b = [], []
    for _ in range(8):
        out = sampler(logits, [first, second]).token_ids
        a.append(out[0])
        b.append(out[1])
    assert a != b


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("seeded", [False, True])
def test_empirical_distribution_matches_tempered_softmax(temperature: float, seeded: bool) -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -2.0])
    draws, calls = 20000, 5
    per_call = draws // calls
    sampler = Sampler(seed=7)
    counts: Counter[int] = Counter()
    for call in range(calls):
        requests = [
            make_request(temperature=temperature, seed=call * per_call + i if seeded else None)
            for i in range(per_call)
        ]
        counts.update(sampler(logits.expand(per_call, -1), requests).token_ids)
    probs = torch.softmax(logits.double() / temperature, dim=-1).tolist()
    assert chi_square(counts, probs, draws) < 25.0  # df = 5: p < 1e-4


def test_lower_temperature_sharpens() -> None:
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5]).expand(4000, -1)
    sampler = Sampler(seed=3)

    def top_share(temperature: float) -> float:
        tokens = sampler(logits, [make_request(temperature=temperature) for _ in range(4000)])
        return tokens.token_ids.count(0) / 4000

    assert top_share(0.25) > top_share(1.0) > top_share(4.0)


LOGITS = [2.0, -1.0, 0.5, -0.25, 3.0, 0.0, -2.0, 1.0]


@pytest.mark.parametrize(
    ("params", "adjust"),
    [
        (
            {"repetition_penalty": 1.5},
            lambda i, x: (x / 1.5 if x > 0 else x * 1.5) if i in {1, 2, 3, 4} else x,
        ),
        ({"frequency_penalty": 0.4}, lambda i, x: x - 0.4 * {3: 2, 4: 1}.get(i, 0)),
        ({"presence_penalty": 0.3}, lambda i, x: x - (0.3 if i in {3, 4} else 0.0)),
        (
            {"repetition_penalty": 0.8, "frequency_penalty": -0.5, "presence_penalty": 0.7},
            lambda i, x: (
                ((x / 0.8 if x > 0 else x * 0.8) if i in {1, 2, 3, 4} else x)
                + 0.5 * {3: 2, 4: 1}.get(i, 0)
                - (0.7 if i in {3, 4} else 0.0)
            ),
        ),
    ],
)
def test_penalties_change_exactly_the_intended_logits(params: dict[str, Any], adjust: Any) -> None:
    request = make_request(
        prompt=[1, 2, 3], output=[3, 4, 3], temperature=0.0, logprobs=8, **params
    )
    logits = torch.tensor([LOGITS])
    before = logits.clone()
    out = Sampler(seed=0)(logits, [request])
    adjusted = [adjust(i, x) for i, x in enumerate(LOGITS)]
    want = torch.log_softmax(torch.tensor(adjusted, dtype=torch.float64), dim=-1).tolist()
    got = out.logprobs[0]
    assert got is not None
    assert got.token_id == max(range(8), key=lambda i: adjusted[i])
    for token, logprob in got.top.items():
        assert logprob == pytest.approx(want[token], abs=1e-5)
    assert torch.equal(logits, before)
    assert request.output_token_ids == [3, 4, 3] and request.all_token_ids == [1, 2, 3, 3, 4, 3]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_min_new_tokens_blocks_eos_and_stop_ids_until_reached(temperature: float) -> None:
    logits = torch.full((1, 6), -5.0)
    logits[0, 5] = 20.0  # EOS
    logits[0, 4] = 19.0  # stop id
    params: dict[str, Any] = {
        "temperature": temperature,
        "min_new_tokens": 3,
        "stop_token_ids": [4],
    }
    sampler = Sampler(seed=0)
    for done in range(3):
        request = make_request(output=[0] * done, eos=5, **params)
        assert sampler(logits, [request]).token_ids[0] not in {4, 5}
    assert sampler(logits, [make_request(output=[0] * 3, eos=5, **params)]).token_ids == [5]
    ignoring = make_request(eos=5, ignore_eos=True, **params)
    assert sampler(logits, [ignoring]).token_ids == [5]


def test_logprobs_are_log_softmax_before_warping_with_sorted_top_n() -> None:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 30, generator=gen)
    requests = [
        make_request(temperature=0.7, top_k=5, logprobs=3),
        make_request(temperature=0.0, logprobs=0),
        make_request(temperature=1.3, top_p=0.8, typical_p=0.9, logprobs=20),
        make_request(temperature=1.0),
    ]
    out = Sampler(seed=0)(logits, requests)
    reference = torch.log_softmax(logits.double(), dim=-1)
    assert out.logprobs[3] is None
    for row, n in enumerate([3, 0, 20]):
        entry = out.logprobs[row]
        assert entry is not None and entry.token_id == out.token_ids[row]
        assert entry.logprob == pytest.approx(reference[row, entry.token_id].item(), abs=1e-5)
        values = list(entry.top.values())
        assert len(entry.top) == n and values == sorted(values, reverse=True)
        assert list(entry.top) == reference[row].topk(n).indices.tolist()


@pytest.mark.parametrize(
    ("mass", "expected"), [(0.1, {1}), (0.3, {1, 2}), (0.5, {0, 1, 2}), (0.9, {0, 1, 2, 3})]
)
def test_typical_p_keeps_the_expected_set(mass: float, expected: set[int]) -> None:
    # entropy 1.333 nats; |-log p - H| = [0.64, 0.28, 0.56, 0.97, 1.66] -> order 1, 2, 0, 3, 4
    logits = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]).log().expand(3000, -1)
    requests = [make_request(typical_p=mass) for _ in range(3000)]
    assert set(Sampler(seed=0)(logits, requests).token_ids) == expected


@pytest.mark.parametrize(("top_p", "expected"), [(0.45, {0}), (0.75, {0, 1}), (0.9, {0, 1, 2})])
def test_top_p_keeps_the_smallest_set_reaching_the_mass(top_p: float, expected: set[int]) -> None:
    logits = torch.tensor([0.5, 0.3, 0.2]).log().expand(2000, -1)
    requests = [make_request(top_p=top_p) for _ in range(2000)]
    assert set(Sampler(seed=0)(logits, requests).token_ids) == expected


def test_top_k_keeps_k_tokens_per_row() -> None:
    logits = torch.tensor([0.0, 3.0, 1.0, 2.0, -1.0]).expand(2000, -1)
    requests = [make_request(top_k=2 if i % 2 else 0) for i in range(2000)]
    tokens = Sampler(seed=0)(logits, requests).token_ids
    assert set(tokens[1::2]) == {1, 3}
    assert set(tokens[0::2]) == {0, 1, 2, 3, 4}


def test_bfloat16_logits_are_accepted() -> None:
    logits = torch.randn(3, 64, generator=torch.Generator().manual_seed(2)).bfloat16()
    sampler = Sampler(seed=0)
    greedy = sampler(logits, [make_request(temperature=0.0) for _ in range(3)])
    assert greedy.token_ids == logits.float().argmax(dim=-1).tolist()
    mixed = [make_request(temperature=0.0, logprobs=2), make_request(seed=1), make_request()]
    out = sampler(logits, mixed)
    assert out.token_ids[0] == greedy.token_ids[0] and all(0 <= t < 64 for t in out.token_ids)
    entry = out.logprobs[0]
    assert entry is not None and math.isfinite(entry.logprob)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_logit_bias_allowed_ids_and_bad_words_constrain_every_draw(temperature: float) -> None:
    logits = torch.tensor([[9.0, 8.0, 7.0, 6.0, 0.0]])
    sampler = Sampler(seed=3)

    def draws(**params: Any) -> set[int]:
        request = make_request(prompt=[1, 2], temperature=temperature, **params)
        return {sampler(logits, [request]).token_ids[0] for _ in range(40)}

    assert draws(logit_bias={4: 100.0}) == {4}
    assert draws(allowed_token_ids=[2, 3], logit_bias={3: 50.0}) == {3}
    assert draws(bad_words_token_ids=[[0], [1]], allowed_token_ids=[0, 1, 2]) == {2}
    # a two-token bad word bans its last token only right after its first: the prompt ends in 2
    assert draws(bad_words_token_ids=[[2, 0]], allowed_token_ids=[0, 1]) == {1}
    assert 0 in draws(bad_words_token_ids=[[1, 0]], allowed_token_ids=[0, 1])


def test_constrained_logprobs_are_the_masked_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    request = make_request(allowed_token_ids=[1, 2], temperature=0.0, logprobs=2)
    out = Sampler()(logits, [request])
    want = torch.log_softmax(torch.tensor([1.0, 0.0]), -1)
    assert out.token_ids == [1] and out.logprobs[0] is not None
    assert out.logprobs[0].logprob == pytest.approx(float(want[0]), abs=1e-6)
    assert list(out.logprobs[0].top) == [1, 2]


def test_min_p_keeps_tokens_above_the_scaled_maximum() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()[None, :]
    sampler = Sampler(seed=0)
    request = make_request(temperature=1.0, min_p=0.25)  # threshold 0.125
    seen = {sampler(logits, [request]).token_ids[0] for _ in range(300)}
    assert seen == {0, 1, 2}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"min_p": 1.5}, "min_p"),
        ({"logit_bias": {3: 101.0}}, "logit_bias"),
        ({"logit_bias": {99: 1.0}}, "logit_bias"),
        ({"allowed_token_ids": [-1]}, "allowed_token_ids"),
        ({"bad_words_token_ids": [[]]}, "bad_words"),
        ({"bad_words_token_ids": [[1, 50]]}, "bad_words"),
    ],
)
def test_constraint_fields_out_of_range_are_refused_by_name(
    params: dict[str, Any], field: str
) -> None:
    from hagmoe.engine.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match=field):
        SamplingParams(**params).validate(vocab_size=10)


@pytest.mark.parametrize("kernels", ["1", "0"])
def test_plain_greedy_logprobs_are_the_chosen_tokens_log_softmax(
    kernels: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Greedy rows asking only the chosen token's logprob (TGI's streams): argmax with the
    lowest id on ties, and its logprob, in the C pass and in torch's."""
    from hagmoe.kernels import cpu

    monkeypatch.setenv("HAGMOE_CPU_KERNELS", kernels)
    cpu.library.cache_clear()
    try:
        gen = torch.Generator().manual_seed(9)
        logits = torch.randn(5, 4099, generator=gen) * 4
        logits[1, [7, 4000]] = 100.0  # a tie
        logits[3] = logits[3].clamp(max=0.0)
        requests = [make_request(temperature=0.0, logprobs=0) for _ in range(4)]
        requests.append(make_request(temperature=0.0))
        out = Sampler(seed=0)(logits, requests)
    finally:
        cpu.library.cache_clear()
    reference = torch.log_softmax(logits.double(), dim=-1)
    assert out.token_ids == logits.argmax(-1).tolist() and out.token_ids[1] == 7
    assert out.logprobs[4] is None
    for row in range(4):
        entry = out.logprobs[row]
        assert entry is not None and entry.token_id == out.token_ids[row] and entry.top == {}
        assert entry.logprob == pytest.approx(reference[row, entry.token_id].item(), abs=1e-5)
