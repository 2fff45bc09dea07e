"""The exported graphs against PyTorch: logits of a right-padded prefill and of decode steps
equal forward_full (float32, MODEL.md's 1e-4 relative), the cache equals the engine's expert-aware
cache, and the files pass onnx.checker with dynamic batch and sequence axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from hagmoe.engine.config import EngineConfig  # noqa: E402
from hagmoe.engine.engine_core import EngineCore  # noqa: E402
from hagmoe.engine.sampling_params import SamplingParams  # noqa: E402
from hagmoe.model import HagMoEModel, named_config, random_model  # noqa: E402
from hagmoe.onnx import Manifest, OnnxSessions, export_onnx  # noqa: E402

TOL = 1e-4  # MODEL.md's numerical contract, float32
CACHE_TOL = 1e-5
CONFIGS = {
    "attention-learned": {},
    "attention-rope-gqa-imported": dict(
        position="rope",
        norm="rmsnorm",
        num_kv_heads=2,
        tie_embeddings=False,
        feedback_dim=0,
        attn_bias=False,
        qk_norm_type="projection",
        rope_scaling={"type": "linear", "factor": 2.0},
        shared_expert_size=32,
    ),
    "linear-learned": dict(router="linear", normalize_topk=True),
    "linear-rope-imported": dict(
        router="linear",
        position="rope",
        num_kv_heads=1,
        norm="rmsnorm",
        qk_norm_type="head",
        clip_qkv=1.5,
        sliding_window=4,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position": 128},
        shared_expert_size=32,
        shared_expert_gate=True,
        attn_out_bias=False,
    ),
}  # the "imported" rows add the keys of imported MoE families (MODEL.md's added rows)
LENGTHS = [13, 6, 1, 9]


def _rel(got: np.ndarray, ref: torch.Tensor) -> float:
    want = ref.detach().numpy()
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[HagMoEModel, OnnxSessions, Path]:
    model = random_model(named_config("tiny", **CONFIGS[request.param]), seed=2)
    folder = tmp_path_factory.mktemp(request.param)
    export_onnx(model, folder)
    return model, OnnxSessions.load(folder, ["CPUExecutionProvider"]), folder


def _padded_batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(LENGTHS), max(LENGTHS)), dtype=np.int64)
    for row, n in enumerate(LENGTHS):
        ids[row, :n] = rng.integers(0, 320, n)
    return ids, np.asarray(LENGTHS, dtype=np.int64)


def test_prefill_and_decode_logits_match_forward_full(
    exported: tuple[HagMoEModel, OnnxSessions, Path],
) -> None:
    model, sessions, _ = exported
    ids, lengths = _padded_batch(seed=0)
    logits, cache = sessions.prefill(ids, lengths)
    seqs = [ids[row, :n].tolist() for row, n in enumerate(LENGTHS)]
    for row, seq in enumerate(seqs):
        ref = model.forward_full(torch.tensor([seq])).logits[0]  # [T, V]
        assert _rel(logits[row, : len(seq)], ref) < TOL, row
        assert not logits[row, len(seq) :].any()
    rng = np.random.default_rng(1)
    for _ in range(4):
        tokens = rng.integers(0, 320, (len(seqs), 1))
        step, cache = sessions.decode(tokens, lengths, cache)
        for row, seq in enumerate(seqs):
            seq.append(int(tokens[row, 0]))
            ref = model.forward_full(torch.tensor([seq])).logits[0, -1]
            assert _rel(step[row, 0], ref) < TOL, (row, len(seq))
        lengths = lengths + 1
    assert cache[0].shape[1] == max(LENGTHS) + 4


def test_dynamic_k_is_exercised(exported: tuple[HagMoEModel, OnnxSessions, Path]) -> None:
    model, _, _ = exported
    ids, _ = _padded_batch(seed=0)
    routing = model.forward_full(torch.from_numpy(ids[:1]), return_routing=True).routing
    ks = {int(k) for layer in routing for k in layer.k}
    if model.config.router == "linear":
        assert ks == {model.config.top_k}
    else:
        assert len(ks) >= 2, ks  # the masking up to k_max is what the logits test checks


def test_graphs_pass_checker_with_dynamic_axes(
    exported: tuple[HagMoEModel, OnnxSessions, Path],
) -> None:
    _, _, folder = exported
    manifest = Manifest.load(folder)
    for spec in (manifest.prefill, manifest.decode):
        graph = onnx.load(str(folder / spec.file))
        onnx.checker.check_model(graph)
        dims = {
            i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in graph.graph.input
        }
        assert dims == {t.name: list(t.shape) for t in spec.inputs}
        assert [o.name for o in graph.graph.output] == spec.output_names
    assert manifest.config.to_dict() == exported[0].config.to_dict()
    assert manifest.opset == 17 and manifest.prefill.inputs[0].dynamic_axes == {
        0: "batch",
        1: "seq",
    }


def test_cache_equals_engine_cache(tmp_path: Path) -> None:
    model = random_model(named_config("tiny", num_kv_heads=2, position="rope"), seed=4)
    export_onnx(model, tmp_path)
    sessions = OnnxSessions.load(tmp_path, ["CPUExecutionProvider"])
    engine = EngineCore(model, None, EngineConfig(block_size=4, num_blocks=32, keep_logits=True))
    ids, lengths = _padded_batch(seed=5)
    params = SamplingParams(max_new_tokens=3, temperature=0.0, ignore_eos=True)
    requests = [
        engine.add_request(f"r{row}", ids[row, :n].tolist(), params)
        for row, n in enumerate(LENGTHS)
    ]
    engine.step()  # prefill of every prompt
    _, cache = sessions.prefill(ids, lengths)
    _assert_cache_rows(engine, model, requests, cache, [range(n) for n in LENGTHS])
    tokens = np.asarray([[r.output_token_ids[0]] for r in requests])
    engine.step()  # one decode step each
    _, cache = sessions.decode(tokens, lengths, cache)
    _assert_cache_rows(engine, model, requests, cache, [range(n, n + 1) for n in LENGTHS])


def _assert_cache_rows(
    engine: EngineCore,
    model: HagMoEModel,
    requests: list,
    cache: list[np.ndarray],
    positions: list[range],
) -> None:
    """ONNX cache rows (key, value, routing per layer) equal the engine's at the same positions."""
    size = engine.config.block_size
    width = model.config.kv_heads * model.config.hd
    for layer in range(model.config.num_layers):
        kv, rv = engine.runner.kv_caches[layer]
        key, value, routing = cache[3 * layer : 3 * layer + 3]
        for row, (request, pos) in enumerate(zip(requests, positions, strict=True)):
            table = torch.tensor(request.block_table)
            p = torch.tensor(list(pos))
            slots = table[p // size] * size + p % size
            got_kv = np.concatenate(
                (key[row, pos].reshape(len(pos), -1), value[row, pos].reshape(len(pos), -1)), 1
            )
            assert _rel(got_kv, kv[slots]) < CACHE_TOL
            assert _rel(routing[row, pos], rv[slots]) < CACHE_TOL
            assert got_kv.shape[1] == 2 * width and routing.shape[2] == rv.shape[1]
