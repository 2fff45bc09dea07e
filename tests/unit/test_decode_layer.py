"""The one-call decode step and layers (hagmoe/kernels/decode_layer.*): decode steps of a packed
engine against the float64 full forward (float32) and against the per-op path of the same packed
weights (every format), for the top-k family (rope + GQA + RMSNorm, learned positions + LayerNorm
+ biases, a sliding window, feedback) and HAG-MoE's attention router; routing records and
statistics, the forced AVX2 build, and the layers they do not take."""

from __future__ import annotations

import os
import platform
import shutil
from typing import Any

import pytest
import torch

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.kernels import cpu
from hagmoe.kernels.decode_layer import DecodeLayer, DecodeModel
from hagmoe.model import named_config, random_model
from hagmoe.model.config import ModelConfig
from hagmoe.model.model import HagMoEModel
from hagmoe.quantization.format import WeightFormat
from hagmoe.quantization.serving import pack_for_serving

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler on this machine"
)
TOPK = dict(router="linear", feedback_dim=0, num_groups=1, experts_per_group=8)
CONFIGS = {
    "rope-gqa-rmsnorm": named_config(
        "tiny", **TOPK, top_k=2, position="rope", norm="rmsnorm", num_kv_heads=2, attn_bias=False
    ),
    "learned-layernorm-bias": named_config("tiny", **TOPK, top_k=3, normalize_topk=True),
    "sliding-window": named_config(
        "tiny", **TOPK, top_k=2, position="rope", norm="rmsnorm", sliding_window=6
    ),
    "topk-feedback": named_config("tiny", router="linear", top_k=2),
    # HAG-MoE: the attention router (groups, dynamic K) with feedback
    "attention-learned-layernorm": named_config("tiny"),
    "attention-rope-gqa": named_config(
        "tiny", position="rope", norm="rmsnorm", num_kv_heads=2, attn_bias=False
    ),
}
PROMPTS = [[5, 9, 2], [7] * 11, list(range(20, 29))]


FUSIONS = {"model": DecodeModel, "layer": DecodeLayer}  # one call per step / per layer


def packed(
    cfg: ModelConfig, quantization: str | WeightFormat, fusion: str = "model"
) -> HagMoEModel:
    """Packed for serving; fusion "model" (the default), "layer" or "per-op"."""
    fmt = (
        quantization if isinstance(quantization, WeightFormat) else WeightFormat.named(quantization)
    )
    model = pack_for_serving(random_model(cfg, seed=4), fmt)
    assert model.decode_kernel is not None
    assert all(layer.decode_kernel is not None for layer in model.layers)
    if fusion != "model":
        model.decode_kernel = None
    if fusion == "per-op":
        for layer in model.layers:
            layer.decode_kernel = None
    return model


def decode(model: HagMoEModel) -> tuple[dict[str, list[torch.Tensor]], dict[str, list[int]]]:
    """Greedy decode of PROMPTS: each request's logits at every step, and its tokens."""
    engine = EngineCore(model, None, EngineConfig(keep_logits=True, block_size=4))
    params = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True)
    for i, p in enumerate(PROMPTS):
        engine.add_request(f"r{i}", p, params)
    logits: dict[str, list[torch.Tensor]] = {}
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            logits.setdefault(out.request_id, []).append(engine.last_logits[out.request_id])
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
    return logits, tokens


def count_calls(kind: type, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"n": 0}
    original = kind.__call__

    def spy(self: object, *args: Any) -> Any:
        calls["n"] += 1
        return original(self, *args)

    monkeypatch.setattr(kind, "__call__", spy)
    return calls


@pytest.mark.parametrize("fusion", list(FUSIONS))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_float32_decode_layer_matches_float64_forward(
    name: str, fusion: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = CONFIGS[name]
    model64 = random_model(cfg, seed=4, dtype=torch.float64)
    calls = count_calls(FUSIONS[fusion], monkeypatch)
    logits, tokens = decode(packed(cfg, "none", fusion))
    for i, prompt in enumerate(PROMPTS):
        rid = f"r{i}"
        for step, got in enumerate(logits[rid]):
            seq = prompt + tokens[rid][:step]
            ref = model64.forward_full(torch.tensor([seq])).logits[0, -1]
            assert (got.double() - ref).abs().max() / ref.abs().max() < 1e-4, (rid, step)
    per_step = 1 if fusion == "model" else cfg.num_layers
    assert calls["n"] >= 7 * per_step  # every pure decode step (every layer)


@pytest.mark.parametrize("fusion", list(FUSIONS))
@pytest.mark.parametrize("quantization", ["none", "bf16", "int8"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_decode_layer_matches_the_per_op_path(name: str, quantization: str, fusion: str) -> None:
    """Same packed weights, same kernels: the one-call step or layers and the per-op layers
    agree closely."""
    fused, _ = decode(packed(CONFIGS[name], quantization, fusion))
    per_op, _ = decode(packed(CONFIGS[name], quantization, "per-op"))
    for rid, steps in per_op.items():
        for got, ref in zip(fused[rid], steps, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "fmt", [WeightFormat("int8", 32, "bfloat16"), WeightFormat("int8", 64, "float32")], ids=str
)
def test_the_tied_embedding_is_read_from_the_packed_head(fmt: WeightFormat) -> None:
    """The one-call step embeds its rows from the tied head's int8 panels (scales in either
    dtype, groups of either size) as the per-op path does (bf16 and f32: the tests above)."""
    cfg = CONFIGS["attention-learned-layernorm"]
    assert cfg.tie_embeddings and cfg.position == "learned"
    fused, _ = decode(packed(cfg, fmt))
    per_op, _ = decode(packed(cfg, fmt, "per-op"))
    for rid, steps in per_op.items():
        for got, ref in zip(fused[rid], steps, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 only")
@pytest.mark.parametrize("quantization", ["none", "bf16", "int8"])
@pytest.mark.parametrize("name", ["rope-gqa-rmsnorm", "attention-learned-layernorm"])
def test_decode_layer_on_the_forced_avx2_path(
    name: str, quantization: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The AVX2 build (HAGMOE_CPU_ISA=avx2) gives the native build's logits."""
    native, _ = decode(packed(CONFIGS[name], quantization))
    monkeypatch.setenv("HAGMOE_CPU_ISA", "avx2")
    cpu.library.cache_clear()
    try:
        avx2, _ = decode(packed(CONFIGS[name], quantization))
    finally:
        monkeypatch.delenv("HAGMOE_CPU_ISA")
        cpu.library.cache_clear()
    for rid, steps in native.items():
        for got, ref in zip(avx2[rid], steps, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["learned-layernorm-bias", "attention-learned-layernorm"])
def test_routing_records_come_from_the_decode_layer(name: str) -> None:
    """return_routing (and the server's statistics) see the one-call step's and layers'
    choices."""
    decisions = {}
    for fusion in ("model", "layer", "per-op"):
        engine = EngineCore(
            packed(CONFIGS[name], "int8", fusion),
            None,
            EngineConfig(block_size=4, collect_routing_stats=True),
        )
        params = SamplingParams(
            max_new_tokens=6, temperature=0.0, ignore_eos=True, return_routing=True
        )
        engine.add_request("r", PROMPTS[1], params)
        routing = []
        while engine.has_unfinished_requests():
            for out in engine.step():
                routing += out.routing
        decisions[fusion] = routing
    for fusion in FUSIONS:
        assert len(decisions[fusion]) == 6
        for got, ref in zip(decisions[fusion], decisions["per-op"], strict=True):
            for a, b in zip(got, ref, strict=True):
                assert (a.layer, a.group, a.experts, a.k) == (b.layer, b.group, b.experts, b.k)
                assert a.scores == pytest.approx(b.scores, rel=1e-5)


@pytest.mark.parametrize("name", ["learned-layernorm-bias", "attention-learned-layernorm"])
def test_routing_statistics_come_from_the_decode_step(name: str) -> None:
    """The server's per-step routing counts, with no request asking for routing, are the
    per-op path's on every step."""
    counts, entropy = {}, {"model": [], "per-op": []}
    for fusion in ("model", "per-op"):
        engine = EngineCore(
            packed(CONFIGS[name], "int8", fusion),
            None,
            EngineConfig(block_size=4, collect_routing_stats=True),
        )
        params = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
        for i, prompt in enumerate(PROMPTS[:2]):
            engine.add_request(f"r{i}", prompt, params)
        steps = []
        while engine.has_unfinished_requests():
            engine.step()
            stats = engine.last_stats.routing
            assert stats is not None
            steps.append((stats.expert_tokens, stats.group_tokens, stats.k))
            entropy[fusion].append(stats.entropy)
        counts[fusion] = steps
    assert counts["model"] == counts["per-op"]
    for got, ref in zip(entropy["model"], entropy["per-op"], strict=True):
        assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_layers_it_does_not_take_keep_the_per_op_path() -> None:
    """A shared expert and q/k norms are not fused."""
    for cfg in (
        named_config("tiny", **TOPK, shared_expert_size=32),
        named_config("tiny", qk_norm_type="head"),
    ):
        model = pack_for_serving(random_model(cfg, seed=1), WeightFormat.named("none"))
        assert all(layer.decode_kernel is None for layer in model.layers)
        assert model.decode_kernel is None
