"""bench_serving workloads: random, shared-prefix and Shakespeare (with its fallback)."""

from __future__ import annotations

import pytest

from loadtests import prompts
from loadtests.prompts import ALPHABET, DatasetSpec, make_dataset


def test_random_prompts_have_the_asked_lengths() -> None:
    spec = DatasetSpec("random", 20, input_len=12, output_len=3, output_max=9, seed=5)
    data = make_dataset(spec)
    assert data.source == "random" and len(data.requests) == 20
    assert all(len(r.prompt) == 12 and set(r.prompt) <= set(ALPHABET) for r in data.requests)
    assert all(3 <= r.output_len <= 9 for r in data.requests)
    assert len({r.output_len for r in data.requests}) > 1
    assert make_dataset(spec) == data
    assert make_dataset(DatasetSpec("random", 20, 12, 3, 9, seed=6)) != data


def test_shared_prefix_prompts_share_their_prefixes() -> None:
    spec = DatasetSpec("shared-prefix", 6, input_len=5, output_len=2, prefix_len=40, num_prefixes=2)
    reqs = make_dataset(spec).requests
    assert all(len(r.prompt) == 45 and r.output_len == 2 for r in reqs)
    heads = [r.prompt[:40] for r in reqs]
    assert heads[0::2] == [heads[0]] * 3 and heads[1::2] == [heads[1]] * 3
    assert heads[0] != heads[1] and len({r.prompt for r in reqs}) == 6


def test_shakespeare_passages_and_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "To be, or not to be, that is the question. " * 10
    monkeypatch.setattr(prompts, "shakespeare_text", lambda: text)
    data = make_dataset(DatasetSpec("shakespeare", 4, input_len=30, output_len=2))
    assert data.source == "shakespeare"
    assert all(len(r.prompt) == 30 and r.prompt in text for r in data.requests)
    monkeypatch.setattr(prompts, "shakespeare_text", lambda: None)
    data = make_dataset(DatasetSpec("shakespeare", 4, input_len=30, output_len=2))
    assert data.source == "random (shakespeare unavailable)" and len(data.requests) == 4


@pytest.mark.parametrize(
    "spec",
    [
        DatasetSpec("poems"),
        DatasetSpec(num_requests=0),
        DatasetSpec(output_len=5, output_max=4),
    ],
)
def test_bad_specs_are_refused(spec: DatasetSpec) -> None:
    with pytest.raises(ValueError):
        make_dataset(spec)
