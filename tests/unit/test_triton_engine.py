"""The model's Triton hooks end to end: the engine serving a float32 model on CPU with every
Triton kernel under the interpreter (HAGMOE_TRITON=interpret) gives the full forward's logits
(torch path) within MODEL.md's 1e-4, with chunked prefill, batching and decode steps."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import random
from typing import Any

import pytest
import torch

pytest.importorskip("triton")

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.kernels.triton import dispatch
from hagmoe.model import named_config, random_model


def count_calls(monkeypatch: Any, names: list[str]) -> dict[str, int]:
    calls = dict.fromkeys(names, 0)
    for name in names:
        original = getattr(dispatch, name)

        def spy(*args: Any, _name: str = name, _original: Any = original) -> Any:
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(dispatch, name, spy)
    return calls


@pytest.mark.parametrize(
    "overrides",
    [
        dict(router="attention", position="rope", num_kv_heads=2),
        dict(router="linear", sliding_window=5, shared_expert_size=32, top_k=2),
    ],
)
def test_engine_on_triton_kernels_matches_full_forward(
    monkeypatch: Any, overrides: dict[str, Any]
) -> None:
    model = random_model(named_config("tiny", **overrides), seed=3, dtype=torch.float32)
    for layer in model.layers:
        if layer.feedback is not None:
            layer.feedback.gamma.data.fill_(0.7)
    attention = overrides["router"] == "attention"
    names = ["paged_attention", "moe"] + (["route_sums", "route_decide"] if attention else [])
    calls = count_calls(monkeypatch, names)
    monkeypatch.setenv(dispatch.MODE_ENV, "interpret")
    config = EngineConfig(dtype="float32", keep_logits=True, block_size=4, max_num_batched_tokens=9)
    engine = EngineCore(model, None, config)
    rng = random.Random(0)
    params = SamplingParams(max_new_tokens=3, temperature=0.0, ignore_eos=True)
    prompts = [[rng.randrange(320) for _ in range(n)] for n in (11, 4, 7)]
    reqs = {f"r{i}": engine.add_request(f"r{i}", p, params) for i, p in enumerate(prompts)}
    got: list[tuple[list[int], torch.Tensor]] = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            seq = reqs[out.request_id].all_token_ids[:-1]
            got.append((seq, engine.last_logits[out.request_id].clone()))
    assert len(got) == 9 and all(calls[name] > 0 for name in names), calls
    monkeypatch.setenv(dispatch.MODE_ENV, "0")
    with torch.inference_mode():
        for seq, logits in got:
            ref = model.forward_full(torch.tensor([seq])).logits[0, -1]
            assert (logits - ref).abs().max() / ref.abs().max() < 1e-4
