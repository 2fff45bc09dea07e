"""One layer's routing decisions for a step's tokens (T flat tokens, K = max experts per token)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(slots=True)
class LayerRouting:
    """What a layer decided for each token; masked expert slots hold expert -1 and score 0."""

    group: Tensor  # [T] chosen group g* (-1 for the linear router)
    experts: Tensor  # [T, K] global expert ids n = g*M + m, best first; -1 beyond the token's K
    scores: Tensor  # [T, K] s_k (0 beyond the token's K)
    k: Tensor  # [T] experts used by each token
    entropy: Tensor  # [T] normalised coarse entropy Hn (0 for the linear router)
    # Training objective only (ForwardContext.training):
    group_logits: Tensor | None = None  # [T, G] z_g
    expert_logits: Tensor | None = (
        None  # [T, M] z_e in the chosen group ([T, N] gate logits, linear)
    )
    divergence: Tensor | None = None  # [T] KL(a_c[i] || a_f[i])
