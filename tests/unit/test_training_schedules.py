"""Schedules: learning rate, lam ramps, K warm-up, curriculum phases and the mu_H running mean."""

from __future__ import annotations

import itertools

import pytest
import torch

from hagmoe.model import LayerRouting, TrainingOptions, named_config, random_model
from hagmoe.training.config import ObjectiveConfig, OptimizerConfig, Phase
from hagmoe.training.schedules import (
    k_override_at,
    loss_weights,
    lr_at,
    phase_at,
    ramp,
    scored_positions,
    update_entropy_means,
)

TINY = dict(hidden_size=32, ffn_size=32, max_position=64)


def test_lr_warms_up_linearly_then_decays_by_cosine_to_min_lr() -> None:
    opt = OptimizerConfig(lr=1.0, min_lr=0.1, warmup_steps=4)
    steps = 14
    lrs = [lr_at(s, opt, steps) for s in range(steps)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert lr_at(8, OptimizerConfig(lr=1.0, min_lr=0.0, warmup_steps=4), 13) == pytest.approx(0.5)
    assert all(a >= b for a, b in itertools.pairwise(lrs[3:]))
    assert lr_at(100, opt, steps) == pytest.approx(0.1)


def test_lr_without_warmup_starts_at_peak() -> None:
    opt = OptimizerConfig(lr=2.0, min_lr=0.0, warmup_steps=0)
    assert lr_at(0, opt, 11) == pytest.approx(2.0)
    assert lr_at(5, opt, 11) == pytest.approx(1.0)
    assert lr_at(10, opt, 11) == pytest.approx(0.0)


def test_every_lam_ramps_linearly_from_zero() -> None:
    obj = ObjectiveConfig(
        lam_group=1.0, lam_expert=2.0, lam_div=3.0, lam_gamma=4.0, lam_z=5.0, ramp_steps=10
    )
    zero = loss_weights(0, obj)
    assert (zero.group, zero.expert, zero.div, zero.gamma, zero.z) == (0, 0, 0, 0, 0)
    half = loss_weights(5, obj)
    assert (half.group, half.expert, half.div, half.gamma, half.z) == pytest.approx(
        (0.5, 1.0, 1.5, 2.0, 2.5)
    )
    full = loss_weights(25, obj)
    assert (full.group, full.expert, full.div, full.gamma, full.z) == pytest.approx(
        (1.0, 2.0, 3.0, 4.0, 5.0)
    )
    assert ramp(3, 0) == 1.0 and ramp(0, 4) == 0.0 and ramp(1, 4) == 0.25 and ramp(9, 4) == 1.0


def test_k_warmup_holds_k_at_k_min_then_releases_it() -> None:
    cfg = named_config("tiny", **TINY)
    assert [k_override_at(s, cfg, 3) for s in range(5)] == [1, 1, 1, None, None]
    assert k_override_at(0, cfg.replace(k_min=2), 3) == 2
    linear = cfg.replace(router="linear")
    assert k_override_at(0, linear, 3) is None
    model = random_model(cfg, seed=0)
    ids = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    dynamic = model.forward_full(ids, return_routing=True)
    held = model.forward_full(
        ids, return_routing=True, training=TrainingOptions(k_override=k_override_at(0, cfg, 3))
    )
    assert any(int(r.k.max()) > cfg.k_min for r in dynamic.routing)
    for r in held.routing:
        assert (r.k == cfg.k_min).all()
        assert ((r.experts >= 0).sum(-1) == cfg.k_min).all()


def test_curriculum_phases_by_step() -> None:
    phases = [Phase(3, 16), Phase(6, 32, batch_size=2), Phase(9, 64)]
    assert [phase_at(s, phases).seq_len for s in range(11)] == [16] * 3 + [32] * 3 + [64] * 5
    assert phase_at(4, phases).batch_size == 2


def _routing(entropy: list[float]) -> LayerRouting:
    t = len(entropy)
    return LayerRouting(
        group=torch.zeros(t, dtype=torch.long),
        experts=torch.zeros(t, 1, dtype=torch.long),
        scores=torch.ones(t, 1),
        k=torch.ones(t, dtype=torch.long),
        entropy=torch.tensor(entropy),
    )


def test_mu_h_starts_at_the_first_batch_mean_then_moves_with_momentum() -> None:
    model = random_model(named_config("tiny", **TINY), seed=0)
    mask = scored_positions(2, 3)  # positions 0, 1, 2 twice; position 0 excluded
    assert mask.tolist() == [False, True, True, False, True, True]
    first = [_routing([0.0, 0.2, 0.4, 0.0, 0.6, 0.8]), _routing([0.0, 1.0, 1.0, 0.0, 1.0, 1.0])]
    values = update_entropy_means(model, first, mask, 0.99, initialise=True)
    assert values == pytest.approx([0.5, 1.0])
    second = [_routing([0.0, 0.9, 0.9, 0.0, 0.9, 0.9]), _routing([0.0, 0.0, 0.0, 0.0, 0.0, 0.0])]
    values = update_entropy_means(model, second, mask, 0.99, initialise=False)
    assert values == pytest.approx([0.99 * 0.5 + 0.01 * 0.9, 0.99 * 1.0])
    buffers = [float(layer.router.entropy_mean) for layer in model.layers]
    assert buffers == pytest.approx(values)
    assert "layers.0.router.entropy_mean" in model.state_dict()


def test_mu_h_skips_linear_router_layers() -> None:
    model = random_model(named_config("tiny", router="linear", **TINY), seed=0)
    routing = [_routing([0.0, 0.5]), _routing([0.0, 0.5])]
    assert update_entropy_means(model, routing, scored_positions(1, 2), 0.99, True) == []


def test_unigram_bits_per_byte_on_a_hand_made_case() -> None:
    import numpy as np

    from hagmoe.training.evaluation import unigram_bits_per_byte

    train = np.array([0, 0, 1])  # add-one counts 3, 2, 1 of 6 over a vocab of 3
    val = np.array([2, 0, 1])  # targets 0 and 1: -log2(3/6) - log2(2/6) bits
    token_bytes = np.array([1, 2, 4])
    expected = (1.0 + np.log2(3.0)) / 3  # over 1 + 2 bytes
    assert unigram_bits_per_byte(train, val, token_bytes, 3) == pytest.approx(expected)
