"""Where the model's layers take the Triton kernels, and the calls they make.

The kernels serve tensors on CUDA, for serving only (autograd off, no training context, not
being compiled), where triton imports; HAGMOE_TRITON=0 turns them off and
HAGMOE_TRITON=interpret lets them take CPU tensors too (tests, with TRITON_INTERPRET=1).
Everywhere else the layers keep their torch and CPU-kernel paths, which stay the references.
triton and the kernel modules are imported on first use only: a CPU server never needs them.

Legend: T flat tokens, B sequences, Q query rows, H query heads, hd head dim, d hidden size,
G groups, N experts.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from torch import nn

    from hagmoe.kernels.cpu import RouterSizes

MODE_ENV = "HAGMOE_TRITON"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.cache
def triton_imports() -> bool:
    """Whether triton imports here (tried once, on the first tensor the kernels could take)."""
    try:
        importlib.import_module("triton")
    except Exception:  # absent, or an install that cannot load (no driver libraries)
        return False
    return True


def enabled_for(x: Tensor) -> bool:
    """Whether the Triton kernels serve computations on x (see the module's docstring)."""
    mode = os.environ.get(MODE_ENV, "1")
    on_device = x.is_cuda or (mode == "interpret" and x.device.type == "cpu")
    return (
        mode != "0"
        and on_device
        and x.dtype in DTYPES
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and triton_imports()
    )


@dataclass(slots=True)
class PagedQueries:
    """What the router's pass over the keys needs from the attention's first pass."""

    q: Tensor  # [B, Q, H, hd]
    lse: Tensor  # [B, Q, H] f32 each head's log-sum-exp
    num_kv_heads: int
    window: int | None
    coarse_heads: int


def attends(q: Tensor, paged: bool, training: bool) -> bool:
    """Whether `paged_attention` serves a segment's q [B, Q, H, hd]: paged mode, serving."""
    return paged and not training and enabled_for(q)


def paged_attention(
    q: Tensor,
    kv_cache: Tensor,
    block_table: Tensor,
    query_pos: Tensor,
    valid: Tensor | None,
    block_size: int,
    num_kv_heads: int,
    window: int | None,
    coarse_heads: int | None,
) -> tuple[PagedQueries | None, Tensor]:
    """q [B, Q, H, hd] against the layer's paged K/V in place (kv_cache [num_slots, 2*Hkv*hd])
    -> out [B, Q, H*hd], and for the attention router (coarse_heads given) what `route_sums`
    needs."""
    from hagmoe.kernels.triton import paged_attention as kernels

    out, lse = kernels.paged_attention(
        q, kv_cache, block_table, query_pos, valid, block_size, num_kv_heads, window
    )
    if coarse_heads is None:
        return None, out
    return PagedQueries(q, lse, num_kv_heads, window, coarse_heads), out


def route_sums(
    paged: PagedQueries,
    kv_cache: Tensor,
    rv_cache: Tensor,
    block_table: Tensor,
    query_pos: Tensor,
    valid: Tensor | None,
    block_size: int,
    groups: int,
) -> tuple[Tensor, Tensor]:
    """A segment's router sums z [B, Q, G+N] and coarse entropy [B, Q] (f32), once the step's
    routing values are in rv_cache [num_slots, G+N]."""
    from hagmoe.kernels.triton import paged_attention as kernels

    return kernels.route_sums(
        paged.q, paged.lse, kv_cache, rv_cache, block_table, query_pos, valid, block_size,
        paged.num_kv_heads, paged.window, paged.coarse_heads, groups,
    )  # fmt: skip


def route_decide(
    z: Tensor,
    entropy: Tensor,
    positions: Tensor,
    sizes: RouterSizes,
    entropy_mean: Tensor,
    k_override: int | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """AttentionRouter's decisions from z [T, G+N], the coarse entropy [T] and positions [T]:
    group, experts, scores, k and the normalised entropy (LayerRouting's order)."""
    from hagmoe.kernels.triton.router_decide import route_decide as kernel

    return kernel(
        z, entropy, positions, sizes.num_groups, sizes.experts_per_group, sizes.k_min,
        sizes.k_max, sizes.entropy_alpha, entropy_mean.to(z.device), k_override,
    )  # fmt: skip


def moe_enabled_for(u: Tensor, experts: nn.Module) -> bool:
    """Whether `moe` serves u [T, d]: the kernels run and the experts hold plain stacked
    weights w1 / w2 / w3 on u's device (not the CPU kernels' packed forms)."""
    w1 = getattr(experts, "w1", None)
    return (
        enabled_for(u)
        and getattr(experts, "packed", None) is None
        and isinstance(w1, Tensor)
        and w1.device == u.device
        and w1.dtype in DTYPES
    )


def moe(
    u: Tensor,
    experts: Tensor,
    scores: Tensor,
    weights: nn.Module,
    shared: Callable[[Tensor], Tensor] | None,
    feedback: Callable[[Tensor, Tensor, Tensor], Tensor] | None,
) -> Tensor:
    """The layer's MoE output o [T, d] after feedback, as DecoderLayer computes it, for
    experts / scores [T, K]: the routed experts (`weights`' w1, w2, w3) and the feedback factor
    1 + gamma tanh(r) = feedback(1, experts, scores) in the fused kernel, the shared expert
    (when any) scaled by the same factor."""
    from hagmoe.kernels.triton.fused_moe import fused_moe

    factor = None if feedback is None else feedback(torch.ones_like(u), experts, scores)
    w1, w2, w3 = (getattr(weights, name) for name in ("w1", "w2", "w3"))
    o = fused_moe(u, experts, scores, w1, w2, w3, factor)
    if shared is not None:
        side = shared(u)
        o = o + (side if factor is None else side * factor)
    return o
