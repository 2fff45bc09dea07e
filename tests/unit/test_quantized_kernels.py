"""The bf16 / int8 weight kernels (hagmoe/kernels/quant*.py, quant_kernels.c) against float64
references of the same quantised weights, on the build's instruction set and on the forced
AVX2 path; in-place packing for serving; the engine round trip with --quantization."""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from test_cpu_kernels import experts, moe_reference, random_routing

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.llm import LLM
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.errors import ConfigError
from hagmoe.kernels import cpu, quant
from hagmoe.kernels.packed import PackedExperts, PackedLinear
from hagmoe.model import named_config, random_model
from hagmoe.model.checkpoint import save_model
from hagmoe.quantization.format import WeightFormat
from hagmoe.quantization.serving import pack_for_serving, weight_bytes

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler on this machine"
)
ISAS = ["native"] + (["avx2"] if platform.machine() in ("x86_64", "AMD64") else [])
FORMATS = [
    WeightFormat("bfloat16"),
    WeightFormat("int8", 32, "float32"),
    WeightFormat("int8", 64, "bfloat16"),
    WeightFormat("int8", 0, "float32"),
]


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The kernels built for one instruction set (HAGMOE_CPU_ISA), restored afterwards."""
    monkeypatch.setenv("HAGMOE_CPU_ISA", request.param)
    cpu.library.cache_clear()
    assert cpu.library() is not None
    with torch.inference_mode():
        yield request.param
    monkeypatch.delenv("HAGMOE_CPU_ISA")
    cpu.library.cache_clear()


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f.dtype}-{f.group_size}-{f.scale_dtype}")
def test_linear_formats_match_float64(isa: str, fmt: WeightFormat) -> None:
    """37 columns (a partial panel), 100 inputs (a partial group), 1..40 rows, with a bias."""
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(37, 100, generator=g), torch.randn(37, generator=g)
    packed = PackedLinear.from_weight(w, fmt)
    ref_w = packed.dequantize(torch.float64)
    assert rel_err(ref_w, w.double()) < (1e-2 if fmt.dtype == "int8" else 4e-3)
    for rows in (1, 2, 5, 11, 12, 13, 25, 40):
        x = torch.randn(rows, 100, generator=g)
        got = packed(x, b)
        assert rel_err(got, F.linear(x.double(), ref_w, b.double())) < 1e-5, rows
    ids = torch.tensor([0, 36, 5, 31, 32])
    assert torch.equal(packed.rows(ids), packed.dequantize()[ids])


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f.dtype}-{f.group_size}-{f.scale_dtype}")
def test_linear_row_alone_is_its_row_in_a_batch(isa: str, fmt: WeightFormat) -> None:
    """677 columns (22 panels, the last partial): a single row takes the panels two at a time,
    yet gets exactly the values its row gets in batches of 2..13 rows (batch-invariant)."""
    g = torch.Generator().manual_seed(5)
    w, b = torch.randn(677, 100, generator=g), torch.randn(677, generator=g)
    packed = PackedLinear.from_weight(w, fmt)
    x = torch.randn(13, 100, generator=g)
    alone = torch.cat([packed(x[i : i + 1], b) for i in range(13)])
    ref = F.linear(x.double(), packed.dequantize(torch.float64), b.double())
    assert rel_err(alone, ref) < 1e-5
    for rows in (2, 5, 13):
        assert torch.equal(packed(x[:rows], b), alone[:rows]), rows


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f.dtype}-{f.group_size}-{f.scale_dtype}")
@pytest.mark.parametrize(("num_tokens", "k", "f", "d"), [(1, 1, 48, 32), (13, 3, 48, 96)])
def test_expert_formats_match_float64(
    isa: str, fmt: WeightFormat, num_tokens: int, k: int, f: int, d: int
) -> None:
    """Experts with 0 to ~5 pairs; F = 48 is a partial group of 32 and of 64."""
    w = experts(8, f, d, seed=num_tokens)
    x = torch.randn(num_tokens, d, generator=torch.Generator().manual_seed(1))
    chosen, scores = random_routing(num_tokens, 8, k, seed=num_tokens)
    packed = PackedExperts.from_weights(*w, fmt)
    ref = moe_reference(x, chosen, scores, list(packed.dequantize(torch.float64)))
    assert packed.runs(x, chosen)
    got = packed(x, chosen, scores)
    assert (got.double() - ref).abs().max() < 1e-5


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f.dtype}-{f.group_size}-{f.scale_dtype}")
def test_expert_token_alone_is_its_row_in_a_batch(isa: str, fmt: WeightFormat) -> None:
    """F 528, d 512 (33 gate/up and 16 down panels): a token alone (every expert one pair: two
    panels at a time) gets exactly its row of a batch that shares its experts."""
    w = experts(4, 528, 512, seed=2)
    x = torch.randn(5, 512, generator=torch.Generator().manual_seed(1))
    chosen, scores = random_routing(5, 4, 2, seed=3)
    packed = PackedExperts.from_weights(*w, fmt)
    alone = torch.cat(
        [packed(x[t : t + 1], chosen[t : t + 1], scores[t : t + 1]) for t in range(5)]
    )
    ref = moe_reference(x, chosen, scores, list(packed.dequantize(torch.float64)))
    assert (alone.double() - ref).abs().max() < 1e-5
    assert torch.equal(packed(x, chosen, scores), alone)


def test_layouts_round_trip() -> None:
    w = experts(4, 32, 64, seed=0)
    assert all(
        torch.equal(a, b)
        for a, b in zip(quant.from_expert_panels(*quant.to_expert_panels(*w)), w, strict=True)
    )
    m = torch.randn(45, 17)
    assert torch.equal(quant.from_panels(quant.to_panels(m), 45), m)


def test_int8_quantisation_is_symmetric_per_group() -> None:
    w = torch.tensor([[1.0, -2.0, 0.5, 0.0, 0.0, 0.0]])
    q, s = quant.quantize_int8(w, 3)
    assert torch.allclose(s, torch.tensor([[2.0 / 127, 0.0]]))
    assert q.tolist() == [[64, -127, 32, 0, 0, 0]]


def test_unknown_isa_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAGMOE_CPU_ISA", "sse2")
    with pytest.raises(ConfigError, match="HAGMOE_CPU_ISA"):
        cpu.build_flags()


@pytest.mark.parametrize("name", ["none", "bf16", "int8"])
def test_packing_in_place_holds_the_weights_once(name: str) -> None:
    model = random_model(named_config("tiny"), seed=2)
    before = weight_bytes(model)
    ids = torch.arange(1, 20)[None]
    with torch.inference_mode():
        ref = model.forward_full(ids).logits
        pack_for_serving(model, WeightFormat.named(name))
        got = model.forward_full(ids).logits
    assert model.embed.weight is None
    assert weight_bytes(model) <= before * {"none": 1.0, "bf16": 0.55, "int8": 0.4}[name]
    assert rel_err(got, ref.double()) < {"none": 1e-5, "bf16": 0.05, "int8": 0.1}[name]
    with torch.enable_grad():  # autograd: the torch path over unpacked weights
        again = model.forward_full(ids).logits
    assert rel_err(again.detach(), got.double()) < 1e-4


@pytest.mark.parametrize("name", ["none", "bf16", "int8"])
def test_fused_projections_hold_the_weights_once(name: str) -> None:
    """q/k/v packed into one call: the modules' panels are views of the fused ones, and the
    logits are those of three separate calls (rope and GQA on; learned positions, biases)."""
    for cfg in (named_config("tiny", num_kv_heads=2, position="rope"), named_config("tiny")):
        model = random_model(cfg, seed=3)
        ids = torch.arange(1, 20)[None]
        with torch.inference_mode():
            pack_for_serving(model, WeightFormat.named(name))
            fused = model.forward_full(ids).logits
            for layer in model.layers:
                attn = layer.attn
                assert attn.qkv is not None and attn.q_proj.packed is not None
                storage = attn.qkv.panels.untyped_storage().data_ptr()
                for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                    assert proj.packed.panels.untyped_storage().data_ptr() == storage
                attn.qkv = None
            separate = model.forward_full(ids).logits
        torch.testing.assert_close(fused, separate, rtol=1e-5, atol=1e-5)


def test_quantised_engine_round_trip(tmp_path: os.PathLike[str]) -> None:
    """save -> LLM(folder, quantization) -> greedy tokens; int8 agrees with f32 on most."""
    model = random_model(named_config("tiny"), seed=5)
    save_model(model, tmp_path)
    params = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
    prompts = [[5, 9, 2], list(range(20, 31))]
    outs = {}
    for name in ("none", "bf16", "int8"):
        config = EngineConfig(block_size=4, num_blocks=64, quantization=name)
        llm = LLM(tmp_path, config=config)
        assert llm.engine.runner.model.head_packed is not None
        outs[name] = [c.token_ids for c in llm.generate(prompts, params)]
    for name in ("bf16", "int8"):
        same = sum(
            a == b
            for x, y in zip(outs[name], outs["none"], strict=True)
            for a, b in zip(x, y, strict=True)
        )
        assert same >= 0.5 * 24, (name, outs)
    with pytest.raises(ConfigError, match="quantization"):
        EngineConfig(quantization="int4").resolve(model.config)
