"""loadtests/gguf_export.py: a hagmoe top-k model as GGUF, read back with gguf-py's reader (no
llama.cpp needed: loadtests/gguf_check.py runs the file in llama.cpp), and the bandwidth floor's
byte count of loadtests/bandwidth.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from hagmoe.model import HagMoEModel, Tokenizer, named_config, random_model
from loadtests.bandwidth import (
    add_floor,
    decode_bytes_per_token,
    decode_tokens_per_second,
    weights_per_token,
)
from loadtests.gguf_export import (
    TOPK_OVERRIDES,
    GGUFExportError,
    check_exportable,
    export_gguf,
    gguf_tensors,
    permute_rope,
)
from loadtests.gguf_vocab import byte_to_unicode

Q8_0 = GGMLQuantizationType.Q8_0
BF16 = GGMLQuantizationType.BF16
F32 = GGMLQuantizationType.F32


@pytest.fixture(scope="module")
def model() -> HagMoEModel:
    """tiny as the standard top-k family, with an untied head (as Mixtral)."""
    cfg = named_config("tiny", **TOPK_OVERRIDES, top_k=2, tie_embeddings=False)
    return random_model(cfg, seed=3)


def _field(reader: GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


def _read(reader: GGUFReader) -> dict[str, tuple[GGMLQuantizationType, np.ndarray]]:
    """name -> (type, float32 array in numpy's [rows, cols] order)."""
    out = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # GGUF lists ne0 first
        values = dequantize(t.data, t.tensor_type).reshape(shape)
        out[t.name] = (t.tensor_type, np.asarray(values, dtype=np.float32))
    return out


def _bf16(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(x).to(torch.bfloat16).float().numpy()


@pytest.mark.parametrize("fmt", ["f32", "bf16", "q8_0"])
def test_round_trip(model: HagMoEModel, tmp_path: Path, fmt: str) -> None:
    cfg = model.config
    tokenizer = Tokenizer.byte_level(cfg.vocab_size)
    reader = GGUFReader(export_gguf(model, tokenizer, tmp_path / f"m-{fmt}.gguf", fmt))
    assert _field(reader, "general.architecture") == "llama"
    expected_meta = {
        "llama.block_count": cfg.num_layers,
        "llama.embedding_length": cfg.hidden_size,
        "llama.feed_forward_length": cfg.ffn_size,
        "llama.attention.head_count": cfg.num_heads,
        "llama.attention.head_count_kv": cfg.kv_heads,
        "llama.rope.dimension_count": cfg.hd,
        "llama.expert_count": cfg.num_experts,
        "llama.expert_used_count": cfg.top_k,
        "llama.vocab_size": cfg.vocab_size,
        "tokenizer.ggml.bos_token_id": 256,
        "tokenizer.ggml.eos_token_id": 257,
    }
    for key, value in expected_meta.items():
        assert _field(reader, key) == value, key
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.norm_eps)
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert isinstance(tokens, list) and len(tokens) == cfg.vocab_size
    assert tokens[:256] == [byte_to_unicode()[b] for b in range(256)]
    assert tokens[256:259] == ["<bos>", "<eos>", "<pad>"]

    written = _read(reader)
    source = dict(gguf_tensors(model))
    assert set(written) == set(source)
    assert "output.weight" in written  # the untied head
    for name, want in source.items():
        qtype, got = written[name]
        assert got.shape == want.shape, name
        keep_f32 = want.ndim == 1 or name.endswith(("_norm.weight", "ffn_gate_inp.weight"))
        if fmt == "f32" or keep_f32:
            assert qtype == F32, name
            np.testing.assert_array_equal(got, want, err_msg=name)
        elif fmt == "bf16":
            assert qtype == BF16, name
            np.testing.assert_array_equal(got, _bf16(want), err_msg=name)
        else:
            assert qtype == Q8_0, name
            blocks = want.reshape(-1, 32)
            scale = np.abs(blocks).max(axis=1, keepdims=True) / 127
            bound = scale * (0.5 + 127 * 2.0**-11) + 1e-12  # rounding + the f16 scale's error
            assert np.all(np.abs(got.reshape(-1, 32) - blocks) <= bound), name


def test_tensors_are_the_model_weights(model: HagMoEModel) -> None:
    """Names and layouts: q/k rows permuted per head, the rest as stored."""
    cfg = model.config
    state = model.state_dict()
    out = dict(gguf_tensors(model))
    np.testing.assert_array_equal(out["token_embd.weight"], state["embed.weight"].numpy())
    np.testing.assert_array_equal(
        out["blk.1.ffn_gate_exps.weight"], state["layers.1.experts.w1"].numpy()
    )
    np.testing.assert_array_equal(
        out["blk.1.ffn_down_exps.weight"], state["layers.1.experts.w3"].numpy()
    )
    np.testing.assert_array_equal(
        out["blk.0.ffn_gate_inp.weight"], state["layers.0.router.gate.weight"].numpy()
    )
    q = state["layers.0.attn.q_proj.weight"].numpy()
    hd, half = cfg.hd, cfg.hd // 2
    permuted = out["blk.0.attn_q.weight"]
    for h in range(cfg.num_heads):
        for i in range(half):
            np.testing.assert_array_equal(permuted[h * hd + 2 * i], q[h * hd + i])
            np.testing.assert_array_equal(permuted[h * hd + 2 * i + 1], q[h * hd + half + i])


def test_rope_permutation_turns_rotate_half_into_adjacent_pairs() -> None:
    """Rotating the permuted vector by adjacent pairs = permuting the rotate-half rotation."""
    from hagmoe.model.rope import apply_rope, rope_cos_sin

    heads, hd = 2, 8
    w = torch.randn(heads * hd, 5)
    x = torch.randn(5)
    pos = torch.tensor([7])
    cos, sin = rope_cos_sin(pos, hd, 10000.0, torch.float32)
    half_form = apply_rope((w @ x).view(1, heads, hd), cos, sin).reshape(-1)
    pairs = torch.from_numpy(permute_rope(w.numpy(), heads)) @ x  # adjacent-pair order
    theta = 7 * 10000.0 ** (-torch.arange(0, hd, 2).float() / hd)
    a, b = pairs.view(heads, hd // 2, 2).unbind(-1)
    rotated = torch.stack(
        (a * theta.cos() - b * theta.sin(), a * theta.sin() + b * theta.cos()), -1
    )
    expected = torch.from_numpy(permute_rope(half_form[:, None].numpy(), heads))[:, 0]
    torch.testing.assert_close(rotated.reshape(-1), expected, rtol=1e-5, atol=1e-5)


def test_tied_head_is_token_embd() -> None:
    """A tied head writes no output.weight: llama.cpp then reads token_embd as the head."""
    tied = random_model(named_config("tiny", **TOPK_OVERRIDES), seed=1)
    names = [name for name, _ in gguf_tensors(tied)]
    assert "output.weight" not in names and names[0] == "token_embd.weight"
    assert len(names) == 2 + 10 * tied.config.num_layers


def test_refuses_attention_router(tmp_path: Path) -> None:
    model = random_model("tiny")
    with pytest.raises(GGUFExportError, match="'router'"):
        export_gguf(model, Tokenizer.byte_level(320), tmp_path / "x.gguf", "f32")
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize(
    ("key", "value"), [("normalize_topk", False), ("feedback_dim", 8), ("attn_bias", True)]
)
def test_refuses_other_keys(key: str, value: object) -> None:
    with pytest.raises(GGUFExportError, match=repr(key)):
        check_exportable(named_config("tiny", **{**TOPK_OVERRIDES, key: value}))


def test_decode_bytes_hand_count() -> None:
    """tiny top-k: d 64, 4 heads of 16 (no GQA), 2 layers, F 96, 8 experts, top 2, V 320."""
    cfg = named_config("tiny", **TOPK_OVERRIDES, top_k=2)
    attention = 2 * (4 * 64 * 64)  # q, k, v, o: 64 x 64 each, per layer
    router = 2 * (64 * 8)
    experts = 2 * (2 * 3 * 64 * 96)  # top 2 of gate, up, down
    head = 320 * 64
    assert weights_per_token(cfg) == {
        "attention": attention,
        "router": router,
        "experts": experts,
        "head": head,
    }
    big = attention + experts + head
    assert decode_bytes_per_token(cfg, "f32") == 4 * (big + router)
    assert decode_bytes_per_token(cfg, "bf16") == 2 * big + 4 * router
    assert decode_bytes_per_token(cfg, "q8_0") == pytest.approx(big * 34 / 32 + 4 * router)
    assert decode_bytes_per_token(cfg, "int8") == pytest.approx(big * (1 + 4 / 32) + 4 * router)


def test_floor_fractions_end_to_end_and_of_the_decode() -> None:
    """One stream: tokens over the run's time, and a request's later tokens over the time after
    its first (only where both latencies were measured)."""
    cfg = named_config("tiny", **TOPK_OVERRIDES, top_k=2)
    floor = decode_bytes_per_token(cfg, "f32")  # at 1 byte/s: the floor is 1 / floor tok/s
    served = {"concurrency": 1, "num_requests": 2, "output_tokens": 20, "seconds": 4.0}
    served |= {"tokens_per_second": 5.0, "ttft_median": 0.2, "latency_median": 1.2}
    offline = {**served, "ttft_median": None, "latency_median": None}
    batched = {**served, "concurrency": 8}
    rows = [served, offline, batched]
    assert add_floor(rows, cfg, 1.0, 2)["floor_tps"]["f32"] == 1 / floor
    assert decode_tokens_per_second(served) == pytest.approx(9.0)
    assert served["floor_fraction"] == pytest.approx(5.0 * floor)
    assert served["decode_floor_fraction"] == pytest.approx(9.0 * floor)
    assert "decode_floor_fraction" not in offline and "floor_fraction" in offline
    assert "floor_fraction" not in batched
