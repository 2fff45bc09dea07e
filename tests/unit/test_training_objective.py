"""The training objective: each term on hand-made routing with a known value, and the whole
objective on the real model (terms, weights, masks, gradients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hagmoe.model import HagMoEModel, TrainingOptions, named_config, random_model
from hagmoe.training.objective import (
    LossWeights,
    divergence_loss,
    expert_balance,
    gamma_penalty,
    group_balance,
    lm_loss,
    objective,
    switch_balance,
    z_loss,
)

TINY = dict(hidden_size=32, ffn_size=32, max_position=64)


def test_group_balance_is_one_when_balanced() -> None:
    group = torch.tensor([0, 1, 0, 1])
    assert group_balance(group, torch.zeros(4, 2), 2).item() == pytest.approx(1.0)


@pytest.mark.parametrize("num_groups", [2, 4])
def test_group_balance_is_g_when_all_tokens_on_one_sure_group(num_groups: int) -> None:
    logits = torch.full((6, num_groups), -50.0)
    logits[:, 1] = 50.0
    group = torch.ones(6, dtype=torch.long)
    assert group_balance(group, logits, num_groups).item() == pytest.approx(num_groups)


def test_group_balance_hand_computed() -> None:
    # f = [3/4, 1/4]; every row softmax([log 3, 0]) = [3/4, 1/4] -> 2 * (9/16 + 1/16) = 1.25
    group = torch.tensor([0, 0, 0, 1])
    logits = torch.tensor([[math.log(3.0), 0.0]]).expand(4, 2)
    assert group_balance(group, logits, 2).item() == pytest.approx(1.25)


def test_expert_balance_is_one_when_balanced_inside_each_group() -> None:
    group = torch.tensor([0, 0, 1, 1])
    experts = torch.tensor([[0, -1], [1, -1], [2, -1], [3, -1]])  # global ids g*M + m, M = 2
    assert expert_balance(group, experts, torch.zeros(4, 2), 2).item() == pytest.approx(1.0)


def test_expert_balance_averages_groups_and_skips_empty_ones() -> None:
    sure = torch.tensor([[50.0, -50.0]])
    # Group 0 collapsed on its expert 0 (term M = 2), group 1 without tokens (left out).
    group = torch.zeros(3, dtype=torch.long)
    experts = torch.tensor([[0], [0], [0]])
    assert expert_balance(group, experts, sure.expand(3, 2), 2).item() == pytest.approx(2.0)
    # Group 0 balanced (1), group 1 collapsed (2) -> mean 1.5.
    group = torch.tensor([0, 0, 1, 1])
    experts = torch.tensor([[0], [1], [2], [2]])
    logits = torch.cat((torch.zeros(2, 2), sure.expand(2, 2)))
    assert expert_balance(group, experts, logits, 2).item() == pytest.approx(1.5)


def test_expert_balance_counts_every_assignment_of_dynamic_k() -> None:
    # One group, M = 4: assignments {0, 1} and {0} -> f = [2/3, 1/3, 0, 0]; P = uniform 1/4.
    group = torch.zeros(2, dtype=torch.long)
    experts = torch.tensor([[0, 1], [0, -1]])
    expected = 4 * (2 / 3 * 0.25 + 1 / 3 * 0.25)
    assert expert_balance(group, experts, torch.zeros(2, 4), 1).item() == pytest.approx(expected)


def test_switch_balance_known_values() -> None:
    experts = torch.tensor([[0, 1], [2, 3]])
    assert switch_balance(experts, torch.zeros(2, 4)).item() == pytest.approx(1.0)
    sure = torch.tensor([[50.0, -50.0, -50.0, -50.0]]).expand(3, 4)
    assert switch_balance(torch.zeros(3, 1, dtype=torch.long), sure).item() == pytest.approx(4.0)


def test_z_loss_known_values() -> None:
    assert z_loss(torch.zeros(3, 4)).item() == pytest.approx(math.log(4.0) ** 2)
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # lse = log 4, log 2
    expected = (math.log(4.0) ** 2 + math.log(2.0) ** 2) / 2
    assert z_loss(logits).item() == pytest.approx(expected)


def test_divergence_loss_is_minus_the_mean_kl() -> None:
    assert divergence_loss(torch.tensor([0.0, 0.2, 0.4])).item() == pytest.approx(-0.2)


def test_divergence_loss_caps_each_token() -> None:
    kl = torch.tensor([0.5, 3.0, 50.0], requires_grad=True)
    loss = divergence_loss(kl, cap=1.0)
    assert loss.item() == pytest.approx(-(0.5 + 1.0 + 1.0) / 3)
    loss.backward()
    assert kl.grad is not None and kl.grad.tolist() == pytest.approx([-1 / 3, 0.0, 0.0])


def test_model_divergence_is_zero_when_coarse_and_fine_heads_agree() -> None:
    cfg = named_config("tiny", **TINY)
    model = random_model(cfg, seed=3)
    c, hd = cfg.coarse_heads, cfg.hd
    assert cfg.num_heads == 2 * c and cfg.kv_heads == cfg.num_heads
    with torch.no_grad():
        for layer in model.layers:
            for proj in (layer.attn.q_proj, layer.attn.k_proj):
                proj.weight[c * hd :] = proj.weight[: c * hd]
                proj.bias[c * hd :] = proj.bias[: c * hd]
    ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    out = model.forward_full(ids, training=TrainingOptions())
    for r in out.routing:
        assert r.divergence is not None
        assert r.divergence.abs().max().item() < 1e-6
    unchanged = random_model(cfg, seed=3).forward_full(ids, training=TrainingOptions())
    assert unchanged.routing[0].divergence is not None
    assert unchanged.routing[0].divergence.view(2, 12)[:, 1:].min().item() > 0


def test_gamma_penalty_sums_squares_over_layers() -> None:
    model = random_model(named_config("tiny", **TINY), seed=0)
    with torch.no_grad():
        for layer, value in zip(model.layers, (0.5, -2.0), strict=True):
            assert layer.feedback is not None
            layer.feedback.gamma.fill_(value)
    assert gamma_penalty(model).item() == pytest.approx(0.25 + 4.0)
    no_feedback = random_model(named_config("tiny", feedback_dim=0, **TINY), seed=0)
    assert gamma_penalty(no_feedback).item() == 0.0


def test_lm_loss_ignores_masked_positions() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen)
    targets = torch.randint(0, 7, (2, 5), generator=gen)
    valid = torch.tensor([[True] * 5, [True, True, False, False, False]])
    expected = F.cross_entropy(logits[valid], targets[valid])
    assert lm_loss(logits, targets, valid).item() == pytest.approx(expected.item())
    assert lm_loss(logits, targets).item() == pytest.approx(
        F.cross_entropy(logits.flatten(0, 1), targets.flatten()).item()
    )


def _model(router: str, seed: int = 0) -> HagMoEModel:
    extra = {"router": "linear", "top_k": 2} if router == "linear" else {}
    return random_model(named_config("tiny", **TINY, **extra), seed=seed).train()


def _batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(5))
    return ids[:, :-1], ids[:, 1:]


def test_objective_attention_terms_and_total() -> None:
    model = _model("attention")
    inputs, targets = _batch(model.config.vocab_size)
    out = model.forward_full(inputs, training=TrainingOptions())
    w = LossWeights(group=0.1, expert=0.2, div=0.3, gamma=0.4, z=0.05)
    terms = objective(model, out, targets, w)
    g = model.config.num_groups
    per_layer = [
        (
            group_balance(r.group, r.group_logits, g),
            expert_balance(r.group, r.experts, r.expert_logits, g),
            divergence_loss(r.divergence),
            z_loss(r.group_logits) + z_loss(r.expert_logits),
        )
        for r in out.routing
        if r.group_logits is not None and r.expert_logits is not None and r.divergence is not None
    ]
    assert len(per_layer) == model.config.num_layers
    for i, name in enumerate(("group", "expert", "div", "z")):
        mean = sum(p[i].item() for p in per_layer) / len(per_layer)
        assert getattr(terms, name).item() == pytest.approx(mean, rel=1e-6)
    assert terms.lm.item() == pytest.approx(lm_loss(out.logits, targets).item())
    assert terms.gamma.item() == pytest.approx(gamma_penalty(model).item())
    weighted = 0.1 * terms.group + 0.2 * terms.expert + 0.3 * terms.div
    expected = terms.lm + weighted + 0.4 * terms.gamma + 0.05 * terms.z
    assert terms.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms.div.item() < 0 and terms.group.item() >= 1.0 - 1e-6


def test_objective_gradients_are_finite_and_reach_routers_and_attention() -> None:
    model = _model("attention")
    inputs, targets = _batch(model.config.vocab_size)
    out = model.forward_full(inputs, training=TrainingOptions())
    only_div = objective(model, out, targets, LossWeights(div=1.0))
    (only_div.total - only_div.lm).backward()
    q = model.layers[0].attn.q_proj.weight.grad
    assert q is not None and torch.isfinite(q).all() and q.abs().sum() > 0
    model.zero_grad()
    out = model.forward_full(inputs, training=TrainingOptions())
    terms = objective(model, out, targets, LossWeights(1.0, 1.0, 1.0, 1.0, 1.0))
    terms.total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    router = model.layers[0].router
    assert router.coarse.weight.grad is not None and router.coarse.weight.grad.abs().sum() > 0


def test_objective_linear_router_uses_switch_balance_and_gate_z_loss() -> None:
    model = _model("linear")
    inputs, targets = _batch(model.config.vocab_size)
    out = model.forward_full(inputs, training=TrainingOptions())
    terms = objective(model, out, targets, LossWeights(1.0, 1.0, 1.0, 0.0, 1.0))
    gates = [r.expert_logits for r in out.routing]
    assert all(g is not None and g.shape[-1] == model.config.num_experts for g in gates)
    balance = [switch_balance(r.experts, g) for r, g in zip(out.routing, gates, strict=True)]
    zs = [z_loss(g) for g in gates if g is not None]
    assert terms.group.item() == 0.0 and terms.div.item() == 0.0
    assert terms.expert.item() == pytest.approx(sum(b.item() for b in balance) / len(balance))
    assert terms.z.item() == pytest.approx(sum(z.item() for z in zs) / len(zs))


def test_objective_mask_drops_tokens_from_every_term() -> None:
    model = _model("attention")
    inputs, targets = _batch(model.config.vocab_size)
    out = model.forward_full(inputs, training=TrainingOptions())
    valid = torch.ones_like(targets, dtype=torch.bool)
    valid[1, 4:] = False
    masked = objective(model, out, targets, LossWeights(), valid)
    flat = valid.reshape(-1)
    layer_groups = [
        group_balance(x.group[flat], x.group_logits[flat], model.config.num_groups)
        for x in out.routing
        if x.group_logits is not None
    ]
    assert masked.group.item() == pytest.approx(sum(v.item() for v in layer_groups) / 2)
    assert masked.lm.item() == pytest.approx(lm_loss(out.logits, targets, valid).item())
    assert masked.lm.item() != pytest.approx(
        objective(model, out, targets, LossWeights()).lm.item()
    )


def test_objective_requires_aux_outputs() -> None:
    model = _model("attention")
    inputs, targets = _batch(model.config.vocab_size)
    with pytest.raises(ValueError, match="TrainingOptions"):
        objective(model, model.forward_full(inputs), targets, LossWeights())
    with pytest.raises(ValueError, match="TrainingOptions"):
        objective(model, model.forward_full(inputs, return_routing=True), targets, LossWeights())
