"""The Triton router-decision kernel (hagmoe/kernels/triton/router_decide.py) under Triton's
interpreter on CPU float32 tensors, against AttentionRouter's torch path: ties, position 0,
K from k_min to k_max, a fixed K, one group, token counts that leave padding rows."""

from __future__ import annotations

import math
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import pytest
import torch

pytest.importorskip("triton")

from hagmoe.kernels.triton.router_decide import route_decide
from hagmoe.model import named_config
from hagmoe.model.forward_context import ForwardContext, Segment, TrainingOptions
from hagmoe.model.router import AttentionRouter
from hagmoe.model.routing import LayerRouting


@pytest.mark.parametrize(
    ("tokens", "groups", "per_group", "k_min", "k_max", "k_override"),
    [(37, 3, 5, 1, 4, 4), (37, 3, 5, 1, 4, None), (9, 1, 7, 2, 6, None), (16, 4, 4, 3, 3, None)],
)
def test_route_decide_matches_torch(
    tokens: int, groups: int, per_group: int, k_min: int, k_max: int, k_override: int | None
) -> None:
    config = named_config(
        "tiny",
        num_groups=groups,
        experts_per_group=per_group,
        k_min=k_min,
        k_max=k_max,
        entropy_alpha=40.0,
    )
    router = AttentionRouter(config)
    router.entropy_mean.fill_(0.45)
    gen = torch.Generator().manual_seed(tokens + groups)
    z = torch.randn(tokens, groups * (1 + per_group), generator=gen)
    z[1, 1:groups] = z[1, 0]  # tied groups: the lowest wins
    z[2, groups : groups + 3 * per_group] = 0.5  # tied experts: lower indices first
    positions = torch.randint(0, 200, (tokens,), generator=gen)
    positions[:2] = torch.tensor([0, 1])
    frac = torch.rand(tokens, generator=gen)
    norm = frac.clone()
    for i, k in enumerate(range(k_min, k_max + 1)):  # one token at each K
        gate = 1.0 if k == k_max else (k - k_min + 0.5) / max(k_max - k_min, 1)
        norm[3 + i] = 0.45 + (20.0 if gate == 1.0 else math.log(gate / (1 - gate))) / 40.0
    entropy = norm * torch.log((positions + 1).float())
    training = None if k_override is None else TrainingOptions(k_override=k_override)
    seg = Segment(positions[None, :])
    ctx = ForwardContext(positions=positions, segments=[seg], training=training)
    ref = router._decide(z, entropy, None, ctx)

    got = LayerRouting(*route_decide(
        z, entropy, positions, groups, per_group, k_min, k_max, config.entropy_alpha,
        router.entropy_mean, k_override,
    ))  # fmt: skip
    assert torch.equal(got.group, ref.group) and got.group[1] == 0
    assert torch.equal(got.k, ref.k)
    assert torch.equal(got.experts, ref.experts)
    torch.testing.assert_close(got.scores, ref.scores, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got.entropy, ref.entropy, rtol=1e-6, atol=1e-7)
    if k_override is None and k_min < k_max:
        assert set(got.k.tolist()) == set(range(k_min, k_max + 1))  # every K reached
    assert got.entropy[0] == 0 and math.isfinite(float(got.entropy.max()))
