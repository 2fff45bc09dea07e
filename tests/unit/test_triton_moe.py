"""The Triton fused MoE (hagmoe/kernels/triton/fused_moe.py) under Triton's interpreter on CPU
float32 tensors, against the Experts and Feedback modules' torch paths: 0..40 pairs per expert,
dynamic K by masking, tokens with no expert, sizes that are no multiple of the tiles."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import pytest
import torch
from torch import Tensor

pytest.importorskip("triton")

from hagmoe.kernels.triton.fused_moe import fused_moe, moe_align_block_size
from hagmoe.kernels.triton.moe_configs import MoeTileConfig, tile_config
from hagmoe.model import named_config
from hagmoe.model.experts import Experts
from hagmoe.model.feedback import Feedback

TILES = MoeTileConfig(16, 16, 16)


def routing(tokens: int, k: int, num_experts: int, seed: int) -> tuple[Tensor, Tensor]:
    """Distinct experts per token, best first: expert 0 for all (crowded), the rest drawn from
    1 .. E-2 (the last expert never chosen); each token keeps 0..k of them (-1 / score 0 past
    its count), all but the last tenth at least one."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.linspace(1.0, 0.5, num_experts - 2)
    rest = [torch.multinomial(weight, k - 1, generator=gen) + 1 for _ in range(tokens)]
    experts = torch.cat((torch.zeros(tokens, 1, dtype=torch.long), torch.stack(rest)), 1)
    scores = torch.rand(tokens, k, generator=gen)
    count = torch.randint(0, k + 1, (tokens,), generator=gen)
    count[: tokens * 9 // 10] = count[: tokens * 9 // 10].clamp_min(1)
    count[: tokens // 2] = k
    keep = torch.arange(k)[None, :] < count[:, None]
    return experts.masked_fill(~keep, -1), scores.masked_fill(~keep, 0.0)


def modules(num_experts: int, ffn: int, hidden: int, seed: int) -> tuple[Experts, Feedback]:
    config = named_config(
        "tiny",
        hidden_size=hidden,
        num_heads=2,
        ffn_size=ffn,
        num_groups=1,
        experts_per_group=num_experts,
        k_max=min(4, num_experts),
        feedback_dim=6,
    )
    experts, feedback = Experts(config), Feedback(config)
    gen = torch.Generator().manual_seed(seed)
    for p in (*experts.parameters(), *feedback.parameters()):
        p.data = torch.randn(p.shape, generator=gen) * 0.3
    return experts, feedback


@pytest.mark.parametrize(
    ("tokens", "k", "num_experts", "ffn", "hidden", "config"),
    [(45, 3, 6, 40, 24, TILES), (9, 4, 5, 16, 32, None), (1, 2, 3, 24, 16, TILES)],
)
def test_fused_moe_matches_torch_experts_and_feedback(
    tokens: int, k: int, num_experts: int, ffn: int, hidden: int, config: MoeTileConfig | None
) -> None:
    experts, feedback = modules(num_experts, ffn, hidden, seed=tokens)
    x = torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(7))
    chosen, scores = routing(tokens, k, num_experts, seed=tokens + k)
    counts = torch.bincount(chosen[chosen >= 0], minlength=num_experts)
    assert counts[-1] == 0 and (tokens < 40 or counts.max() >= 40)
    with torch.no_grad():
        ref = experts(x, chosen, scores) if counts.sum() else torch.zeros_like(x)
        ones = torch.ones_like(x)
        factor = feedback(ones, chosen, scores)  # 1 + gamma tanh(r)
        got = fused_moe(x, chosen, scores, experts.w1, experts.w2, experts.w3, None, config)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        got_fb = fused_moe(x, chosen, scores, experts.w1, experts.w2, experts.w3, factor, config)
        torch.testing.assert_close(got_fb, feedback(ref, chosen, scores), rtol=1e-5, atol=1e-5)
    assert torch.all(got[(chosen < 0).all(1)] == 0)


def test_moe_align_block_size_pads_each_expert_to_whole_tiles() -> None:
    chosen = torch.tensor([[2, 0], [2, -1], [-1, -1], [0, 2]])
    sorted_ids, block_expert, pairs = moe_align_block_size(chosen, 4, 4)
    assert pairs == 8 and sorted_ids.numel() == 20  # P + E * (BM - 1), rounded up to BM
    assert sorted_ids[:8].tolist() == [1, 6, 8, 8, 0, 2, 7, 8]  # expert 0's, then expert 2's
    assert torch.all(sorted_ids[8:] == 8) and block_expert.tolist() == [0, 2, 4, 4, 4]


def test_tile_config_takes_the_nearest_token_count() -> None:
    assert tile_config(64, 1024, 2048, 70).block_size_n == 128
    assert tile_config(64, 1024, 2048, 1).block_size_m == 16
    assert tile_config(3, 5, 7, 1) != tile_config(3, 5, 7, 4096)
