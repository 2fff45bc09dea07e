"""MODEL.md's special cases, each as a behavioural test on the real model (float64)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from hagmoe.model import (
    ForwardContext,
    FullOutput,
    HagMoEModel,
    ModelConfig,
    TrainingOptions,
    named_config,
    random_model,
)

EXACT = 1e-12
CAUSAL_TOL = 1e-9
ROUTER_POSITIONS = [
    ("attention", "learned"),
    ("attention", "rope"),
    ("linear", "learned"),
    ("linear", "rope"),
]


def model_for(seed: int = 0, **overrides: Any) -> HagMoEModel:
    return random_model(named_config("tiny", **overrides), seed, dtype=torch.float64)


def random_ids(cfg: ModelConfig, length: int = 10, seed: int = 0, batch: int = 2) -> Tensor:
    gen = torch.Generator().manual_seed(2000 + seed)
    return torch.randint(0, cfg.vocab_size, (batch, length), generator=gen)


def run(model: HagMoEModel, ids: Tensor, **options: Any) -> FullOutput:
    with torch.no_grad():
        return model.forward_full(ids, return_routing=True, **options)


def relative_error(actual: Tensor, expected: Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def set_tensor(model: HagMoEModel, suffix: str, value: float) -> None:
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if name.endswith(suffix):
                tensor.fill_(value)


def routing_lists(out: FullOutput) -> list[tuple[list[int], list[list[int]], list[int]]]:
    return [(r.group.tolist(), r.experts.tolist(), r.k.tolist()) for r in out.routing]


@pytest.mark.parametrize("k", [1, 2, 4])
def test_equal_k_min_and_k_max_fix_k(k: int) -> None:
    model = model_for(k_min=k, k_max=k)
    ids = random_ids(model.config, 12)
    for mu in (-100.0, 0.6, 100.0):
        set_tensor(model, "router.entropy_mean", mu)
        for r in run(model, ids).routing:
            assert r.k.eq(k).all()
            assert (r.experts >= 0).sum(-1).eq(k).all()


@pytest.mark.parametrize(("mu", "expected"), [(-100.0, 4), (100.0, 1)])
def test_entropy_mean_buffer_moves_k(mu: float, expected: int) -> None:
    model = model_for(k_min=1, k_max=4)
    set_tensor(model, "router.entropy_mean", mu)
    for r in run(model, random_ids(model.config, 12)).routing:
        assert r.k.eq(expected).all()


def test_dynamic_k_varies_with_entropy() -> None:
    model = model_for(k_min=1, k_max=4, entropy_alpha=3.0, position="rope")
    ids = random_ids(model.config, 12)
    for r in run(model, ids).routing:
        k, hn = r.k.view(2, 12)[:, 1:].flatten(), r.entropy.view(2, 12)[:, 1:].flatten()
        assert len(set(k.tolist())) >= 2, "K does not vary beyond position 0"
        order = torch.argsort(hn)
        assert (k[order].diff() >= 0).all(), "K is not non-decreasing in Hn"


def test_normalised_entropy_is_causal_and_bounded() -> None:
    model = model_for(position="rope")
    for r in run(model, random_ids(model.config, 12)).routing:
        hn = r.entropy.view(2, 12)
        assert hn[:, 0].eq(0).all()
        assert (hn >= 0).all() and (hn <= 1 + EXACT).all()


def plain_copy(model: HagMoEModel) -> HagMoEModel:
    """The same weights in a model built with feedback_dim = 0."""
    plain = HagMoEModel(model.config.replace(feedback_dim=0)).to(torch.float64).eval()
    state = {k: v for k, v in model.state_dict().items() if ".feedback." not in k}
    plain.load_state_dict(state, strict=True)
    return plain


@pytest.mark.parametrize("router", ["attention", "linear"])
def test_gamma_zero_is_plain_moe(router: str) -> None:
    model = model_for(router=router, feedback_dim=8)
    ids = random_ids(model.config)
    plain = run(plain_copy(model), ids)
    assert relative_error(run(model, ids).logits, plain.logits) > 1e-3
    set_tensor(model, "feedback.gamma", 0.0)
    out = run(model, ids)
    assert relative_error(out.logits, plain.logits) <= EXACT
    assert routing_lists(out) == routing_lists(plain)


def test_single_group_removes_hierarchy() -> None:
    model = model_for(num_groups=1, experts_per_group=4, k_max=4, entropy_alpha=3.0)
    ids = random_ids(model.config, 12)
    out = run(model, ids)
    used = set()
    for r in out.routing:
        assert r.group.eq(0).all()
        assert (r.experts < 4).all()
        used |= set(r.experts[r.experts >= 0].tolist())
    assert used == {0, 1, 2, 3}
    set_tensor(model, "router.coarse.weight", 3.0)
    again = run(model, ids)
    assert torch.equal(again.logits, out.logits)
    assert routing_lists(again) == routing_lists(out)


def test_coarse_gate_matters_with_several_groups() -> None:
    model = model_for(num_groups=2)
    ids = random_ids(model.config, 12)
    before = run(model, ids)
    assert any(len(set(r.group.tolist())) == 2 for r in before.routing)
    with torch.no_grad():
        for layer in model.layers:
            layer.router.coarse.weight.neg_()
    after = run(model, ids)
    assert routing_lists(after) != routing_lists(before)


def test_ties_go_to_the_lowest_index() -> None:
    model = model_for(k_min=2, k_max=2)
    set_tensor(model, "router.coarse.weight", 0.0)
    set_tensor(model, "router.fine.weight", 0.0)
    for r in run(model, random_ids(model.config)).routing:
        assert r.group.eq(0).all()
        assert r.experts.tolist() == [[0, 1]] * 20
        assert torch.allclose(r.scores, torch.full_like(r.scores, 0.25), rtol=0, atol=EXACT)


def test_linear_router_ties_go_to_the_lowest_index() -> None:
    model = model_for(router="linear", top_k=3)
    set_tensor(model, "router.gate.weight", 0.0)
    for r in run(model, random_ids(model.config)).routing:
        assert r.experts.tolist() == [[0, 1, 2]] * 20


def test_scores_are_unnormalised_probabilities() -> None:
    model = model_for(k_min=1, k_max=4, entropy_alpha=3.0)
    with torch.no_grad():
        out = model.forward_full(
            random_ids(model.config, 12), return_routing=True, training=TrainingOptions()
        )
    m = model.config.experts_per_group
    for r in out.routing:
        assert r.expert_logits is not None
        p = torch.softmax(r.expert_logits, dim=-1)
        local = (r.experts % m).clamp_min(0)
        expected = torch.where(r.experts >= 0, p.gather(1, local), torch.zeros_like(r.scores))
        assert torch.allclose(r.scores, expected, rtol=0, atol=EXACT)
        sums = r.scores.sum(-1)
        assert (sums <= 1 + EXACT).all()
        assert (sums[r.k < m] < 1 - 1e-9).all()
        assert (r.scores[:, :-1] >= r.scores[:, 1:]).all()


def test_scores_sum_to_one_when_k_is_m() -> None:
    model = model_for(k_min=4, k_max=4)
    for r in run(model, random_ids(model.config)).routing:
        assert torch.allclose(r.scores.sum(-1), torch.ones(20, dtype=torch.float64), atol=EXACT)


def standard_topk_moe(
    u: Tensor, gate: Tensor, w1: Tensor, w2: Tensor, w3: Tensor, top_k: int, normalize: bool
) -> tuple[Tensor, Tensor]:
    """Switch / Mixtral: softmax gate, top_k, optional renormalisation, SwiGLU experts."""
    probs = torch.softmax(u @ gate.T, dim=-1)
    weights, chosen = torch.topk(probs, top_k, dim=-1)
    if normalize:
        weights = weights / weights.sum(-1, keepdim=True)
    every = torch.einsum(
        "ndf,ntf->tnd",
        w3,
        F.silu(torch.einsum("nfd,td->ntf", w1, u)) * torch.einsum("nfd,td->ntf", w2, u),
    )
    picked = every.gather(1, chosen[..., None].expand(-1, -1, u.shape[-1]))
    return (weights[..., None] * picked).sum(1), chosen


@pytest.mark.parametrize(("top_k", "normalize"), [(1, False), (2, False), (2, True), (3, True)])
def test_linear_router_is_standard_topk_moe(top_k: int, normalize: bool) -> None:
    model = model_for(router="linear", top_k=top_k, normalize_topk=normalize, feedback_dim=0)
    cfg, layer = model.config, model.layers[0]
    x = torch.randn(
        20, cfg.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(4)
    )
    ctx = ForwardContext.dense(2, 10, return_routing=True)
    with torch.no_grad():
        out = layer(x, ctx)
        attn_out, _ = layer.attn(layer.attn_norm(x), ForwardContext.dense(2, 10), 0)
        h = x + attn_out
        moe, chosen = standard_topk_moe(
            layer.moe_norm(h),
            layer.router.gate.weight,
            layer.experts.w1,
            layer.experts.w2,
            layer.experts.w3,
            top_k,
            normalize,
        )
    assert relative_error(out, h + moe) <= EXACT
    assert torch.equal(ctx.routing[0].experts, chosen)


def changed_after(ids: Tensor, cut: int, vocab: int) -> Tensor:
    other = ids.clone()
    other[:, cut + 1 :] = (ids[:, cut + 1 :] + 1 + torch.arange(ids.shape[1] - cut - 1)) % vocab
    return other


@pytest.mark.parametrize(("router", "position"), ROUTER_POSITIONS)
def test_logits_do_not_see_later_tokens(router: str, position: str) -> None:
    model = model_for(router=router, position=position, k_max=4, entropy_alpha=3.0)
    ids = random_ids(model.config, 10)
    full = run(model, ids)
    for cut in (0, 4, 8):
        other = run(model, changed_after(ids, cut, model.config.vocab_size))
        keep = slice(0, cut + 1)
        assert relative_error(other.logits[:, keep], full.logits[:, keep]) <= CAUSAL_TOL
        assert relative_error(other.logits[:, cut + 1 :], full.logits[:, cut + 1 :]) > 1e-3
        for a, b in zip(other.routing, full.routing, strict=True):
            assert torch.equal(
                a.experts.view(2, 10, -1)[:, keep], b.experts.view(2, 10, -1)[:, keep]
            )
            assert torch.equal(a.k.view(2, 10)[:, keep], b.k.view(2, 10)[:, keep])


@pytest.mark.parametrize(("router", "position"), ROUTER_POSITIONS)
def test_prefix_forward_equals_full_forward(router: str, position: str) -> None:
    model = model_for(router=router, position=position, k_max=4, entropy_alpha=3.0)
    ids = random_ids(model.config, 10)
    full = run(model, ids)
    for length in (1, 5):
        prefix = run(model, ids[:, :length])
        assert relative_error(prefix.logits, full.logits[:, :length]) <= CAUSAL_TOL
        for a, b in zip(prefix.routing, full.routing, strict=True):
            assert torch.equal(a.k, b.k.view(2, 10)[:, :length].flatten())
            assert torch.allclose(
                a.entropy, b.entropy.view(2, 10)[:, :length].flatten(), rtol=0, atol=CAUSAL_TOL
            )
