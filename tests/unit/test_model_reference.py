"""The model agrees with the naive float64 reference written from MODEL.md (tests/unit/reference.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from reference import RefRouting, checkpoint_tensors, reference_layer, reference_model
from torch import Tensor

from hagmoe.model import (
    ForwardContext,
    HagMoEModel,
    LayerRouting,
    ModelConfig,
    named_config,
    random_model,
)

LOGIT_TOL = 1e-6
VALUE_TOL = 1e-9

CASES: dict[str, dict[str, Any]] = {
    "attention-learned-layernorm": {},
    "attention-rope-rmsnorm-gqa-untied-nobias": dict(
        position="rope", norm="rmsnorm", num_kv_heads=2, tie_embeddings=False, attn_bias=False
    ),
    "attention-rope-mqa-nofeedback-headdim8": dict(
        position="rope", num_kv_heads=1, feedback_dim=0, head_dim=8, num_coarse_heads=1
    ),
    "attention-learned-rmsnorm-g3m3-untied": dict(
        norm="rmsnorm",
        num_groups=3,
        experts_per_group=3,
        k_min=2,
        k_max=3,
        num_coarse_heads=3,
        entropy_alpha=3.0,
        tie_embeddings=False,
    ),
    "attention-rope-dynamic-k": dict(position="rope", k_max=4, entropy_alpha=3.0),
    "linear-learned-layernorm-normalised": dict(router="linear", top_k=2, normalize_topk=True),
    "linear-rope-rmsnorm-gqa-nofeedback-untied": dict(
        router="linear",
        position="rope",
        norm="rmsnorm",
        num_kv_heads=2,
        feedback_dim=0,
        attn_bias=False,
        top_k=3,
        tie_embeddings=False,
    ),
    "linear-learned-gqa-top1-untied": dict(
        router="linear", num_kv_heads=2, top_k=1, tie_embeddings=False
    ),
}
SEEDS = {0: 7, 1: 11}


def random_ids(cfg: ModelConfig, length: int, seed: int, batch: int = 2) -> Tensor:
    gen = torch.Generator().manual_seed(1000 + seed)
    return torch.randint(0, cfg.vocab_size, (batch, length), generator=gen)


def relative_error(actual: Tensor, expected: Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def assert_routing_matches(got: LayerRouting, ref: RefRouting, where: str) -> None:
    experts = got.experts.tolist()
    scores = got.scores.tolist()
    assert got.k.tolist() == ref.k, f"{where}: K"
    assert got.group.tolist() == ref.group, f"{where}: group"
    for t, (row, srow) in enumerate(zip(experts, scores, strict=True)):
        k = ref.k[t]
        assert row[:k] == ref.experts[t], f"{where}: experts of token {t}"
        assert all(e == -1 for e in row[k:]), f"{where}: slots beyond K of token {t}"
        assert all(s == 0.0 for s in srow[k:]), f"{where}: scores beyond K of token {t}"
        assert srow[:k] == pytest.approx(ref.scores[t], abs=VALUE_TOL), f"{where}: scores {t}"
    assert got.entropy.tolist() == pytest.approx(ref.entropy, abs=VALUE_TOL), f"{where}: Hn"


def make_model(case: str, seed: int) -> HagMoEModel:
    return random_model(named_config("tiny", **CASES[case]), seed, dtype=torch.float64)


@pytest.mark.parametrize("seed", sorted(SEEDS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_full_model_matches_reference(case: str, seed: int) -> None:
    model = make_model(case, seed)
    ids = random_ids(model.config, SEEDS[seed], seed)
    with torch.no_grad():
        out = model.forward_full(ids, return_routing=True)
    ref_logits, ref_routing = reference_model(ids, checkpoint_tensors(model), model.config)
    assert relative_error(out.logits, ref_logits) <= LOGIT_TOL
    assert len(out.routing) == len(ref_routing) == model.config.num_layers
    for layer, (got, ref) in enumerate(zip(out.routing, ref_routing, strict=True)):
        assert_routing_matches(got, ref, f"{case} layer {layer}")


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize(
    "case", ["attention-rope-rmsnorm-gqa-untied-nobias", "linear-learned-layernorm-normalised"]
)
def test_one_layer_matches_reference(case: str, layer: int) -> None:
    model = make_model(case, 3)
    cfg = model.config
    x = torch.randn(
        2, 9, cfg.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
    )
    ctx = ForwardContext.dense(2, 9, return_routing=True)
    with torch.no_grad():
        got = model.layers[layer](x.reshape(-1, cfg.hidden_size), ctx).view_as(x)
    expected, ref_routing = reference_layer(x, checkpoint_tensors(model), layer, cfg)
    assert relative_error(got, expected) <= LOGIT_TOL
    assert_routing_matches(ctx.routing[0], ref_routing, f"{case} layer {layer}")


def inert(cfg: ModelConfig, name: str) -> bool:
    """k_proj.bias adds q_i . b_k to every score of row i, which softmax ignores without rope."""
    return cfg.position == "learned" and name.endswith("k_proj.bias")


def perturb_(tensor: Tensor, name: str) -> None:
    if name.endswith("entropy_mean"):
        tensor.fill_(-100.0)
    else:
        gen = torch.Generator().manual_seed(9)
        tensor.add_(0.2 * torch.randn(tensor.shape, dtype=tensor.dtype, generator=gen))


@pytest.mark.parametrize(
    "case",
    [
        "attention-learned-rmsnorm-g3m3-untied",
        "linear-learned-gqa-top1-untied",
        "attention-rope-dynamic-k",
    ],
)
def test_every_tensor_is_checked(case: str) -> None:
    model = make_model(case, 0)
    ids = random_ids(model.config, 8, 0)
    ref_logits, _ = reference_model(ids, checkpoint_tensors(model), model.config)
    for name, tensor in model.state_dict(keep_vars=True).items():
        if inert(model.config, name):
            continue
        saved = tensor.detach().clone()
        with torch.no_grad():
            perturb_(tensor, name)
            logits = model.forward_full(ids).logits
            tensor.copy_(saved)
        assert relative_error(logits, ref_logits) > 100 * LOGIT_TOL, f"{name} goes unchecked"


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """MODEL.md's checkpoint table for this config."""
    d, h, hkv, hd = cfg.hidden_size, cfg.num_heads, cfg.kv_heads, cfg.hd
    g, m, n = cfg.num_groups, cfg.experts_per_group, cfg.num_experts
    f, r = cfg.ffn_size, cfg.feedback
    names: dict[str, tuple[int, ...]] = {"embed.weight": (cfg.vocab_size, d)}
    if cfg.position == "learned":
        names["pos_embed.weight"] = (cfg.max_position, d)

    def norm(prefix: str) -> None:
        names[f"{prefix}.weight"] = (d,)
        if cfg.norm == "layernorm":
            names[f"{prefix}.bias"] = (d,)

    for layer in range(cfg.num_layers):
        p = f"layers.{layer}"
        norm(f"{p}.attn_norm")
        for proj, out_dim, in_dim in (
            ("q", h * hd, d),
            ("k", hkv * hd, d),
            ("v", hkv * hd, d),
            ("o", d, h * hd),
        ):
            names[f"{p}.attn.{proj}_proj.weight"] = (out_dim, in_dim)
            if cfg.attn_bias:
                names[f"{p}.attn.{proj}_proj.bias"] = (out_dim,)
        norm(f"{p}.moe_norm")
        if cfg.router == "attention":
            names[f"{p}.router.coarse.weight"] = (g, d)
            names[f"{p}.router.fine.weight"] = (g, m, d)
            names[f"{p}.router.entropy_mean"] = ()
        else:
            names[f"{p}.router.gate.weight"] = (n, d)
        names.update(
            {
                f"{p}.experts.w1": (n, f, d),
                f"{p}.experts.w2": (n, f, d),
                f"{p}.experts.w3": (n, d, f),
            }
        )
        if r > 0:
            names.update(
                {
                    f"{p}.feedback.expert_embed": (n, r),
                    f"{p}.feedback.proj.weight": (d, r),
                    f"{p}.feedback.gamma": (1,),
                }
            )
    norm("final_norm")
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = (cfg.vocab_size, d)
    return names


@pytest.mark.parametrize("case", sorted(CASES))
def test_state_dict_names_follow_model_md(case: str) -> None:
    cfg = named_config("tiny", **CASES[case])
    model = HagMoEModel(cfg)
    got = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    expected = expected_tensors(cfg)
    assert sorted(set(got) - set(expected)) == [], "names not in MODEL.md's table"
    assert sorted(set(expected) - set(got)) == [], "MODEL.md names missing from the model"
    assert got == expected
