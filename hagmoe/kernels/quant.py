"""The bfloat16 / int8 weight kernels of quant_kernels.c (built into cpu.library()): symmetric
int8 quantisation, the panel layouts and the calls. Activations, accumulation and outputs are
float32.

int8: per output row and per group of `group` inner indices (the last group of a row may be
shorter; group = k: one scale per row), scale = max |w| / 127 over the group, rounded to the
scale dtype first, q = round(w / scale) in [-127, 127], w ~ q * scale.

Legend: n output columns (rows of the weight), k inner size, ng = ceil(k / group) groups, P =
ceil(n / 32) panels, E experts, F expert FFN size, d hidden size, T tokens, K experts a token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hagmoe.kernels import cpu

WEIGHT_CODES = {torch.bfloat16: 1, torch.int8: 2}
SCALE_DTYPES = (torch.float32, torch.bfloat16)
INT8_MAX = 127


def quantize_int8(
    weight: Tensor, group: int, scale_dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """weight [..., n, k] -> q int8 [..., n, k] and scales [..., n, ng] in scale_dtype."""
    if group < 1:
        raise ValueError(f"group size must be >= 1, got {group}")
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale dtype must be float32 or bfloat16, got {scale_dtype}")
    *lead, k = weight.shape
    groups = -(-k // group)
    w = weight.detach().float()
    padded = torch.nn.functional.pad(w, (0, groups * group - k)).view(*lead, groups, group)
    scales = (padded.abs().amax(-1) / INT8_MAX).to(scale_dtype)  # [..., n, ng]
    wide = scales.float().repeat_interleave(group, dim=-1)[..., :k]  # [..., n, k]
    safe = torch.where(wide > 0, wide, torch.ones_like(wide))
    q = torch.round(w / safe).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scales


def dequantize_int8(q: Tensor, scales: Tensor, group: int) -> Tensor:
    """q [..., n, k] int8, scales [..., n, ng] -> float32 [..., n, k] (q * scale)."""
    k = q.shape[-1]
    return q.float() * scales.float().repeat_interleave(group, dim=-1)[..., :k]


def to_panels(weight: Tensor) -> Tensor:
    """weight [n, k] (any dtype) -> panels [P, k, 32] (columns past n are zero)."""
    n, k = weight.shape
    panels = -(-n // cpu.PANEL)
    padded = weight.new_zeros(panels * cpu.PANEL, k)
    padded[:n] = weight
    return padded.view(panels, cpu.PANEL, k).transpose(1, 2).contiguous()


def from_panels(panels: Tensor, n: int) -> Tensor:
    """The inverse of to_panels: panels [P, k, 32] -> weight [n, k]."""
    p, k, _ = panels.shape
    return panels.transpose(1, 2).reshape(p * cpu.PANEL, k)[:n]


def to_expert_panels(a1: Tensor, a2: Tensor, a3: Tensor) -> tuple[Tensor, Tensor]:
    """The MoE kernels' layout of w1 / w2 [E, F, i1] and w3 [E, d, i3] (weights: i1 = d,
    i3 = F; int8 scales: i1 = ceil(d / group), i3 = ceil(F / group)): gate_up [E, F/16, i1, 32]
    (16 rows of w1, then of w2, per inner index) and down [E, d/32, i3, 32]."""
    e, f, i1 = a1.shape
    d, i3 = a3.shape[1:]
    lanes = cpu.LANES
    gate_up = torch.stack(
        (a1.reshape(e, f // lanes, lanes, i1), a2.reshape(e, f // lanes, lanes, i1)), dim=3
    )  # [E, F/16, 16, 2, i1]
    gate_up = gate_up.permute(0, 1, 4, 3, 2).reshape(e, f // lanes, i1, cpu.PANEL)
    down = a3.reshape(e, d // cpu.PANEL, cpu.PANEL, i3).transpose(2, 3)  # [E, d/32, i3, 32]
    return gate_up.contiguous(), down.contiguous()


def from_expert_panels(gate_up: Tensor, down: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The inverse of to_expert_panels -> w1, w2 [E, F, i1], w3 [E, d, i3]."""
    e, f16, i1, _ = gate_up.shape
    pairs = gate_up.reshape(e, f16, i1, 2, cpu.LANES).permute(0, 1, 4, 3, 2)  # [E, F/16, 16, 2, i1]
    a1, a2 = (pairs[:, :, :, half].reshape(e, f16 * cpu.LANES, i1) for half in (0, 1))
    d32, i3 = down.shape[1:3]
    a3 = down.transpose(2, 3).reshape(e, d32 * cpu.PANEL, i3)
    return a1, a2, a3


def _codes(panels: Tensor, scales: Tensor | None) -> tuple[int, int]:
    assert panels.dtype in WEIGHT_CODES and panels.is_contiguous()
    assert (scales is None) == (panels.dtype == torch.bfloat16)
    assert scales is None or (scales.dtype in SCALE_DTYPES and scales.is_contiguous())
    return WEIGHT_CODES[panels.dtype], int(scales is not None and scales.dtype == torch.bfloat16)


def _addr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def linear_q(
    x: Tensor,
    panels: Tensor,
    scales: Tensor | None,
    n: int,
    group: int,
    bias: Tensor | None = None,
) -> Tensor:
    """x [m, k] float32 @ weight [n, k]^T (+ bias [n]) -> [m, n], the weight as bf16 panels
    [P, k, 32] (scales None) or int8 panels with scales [P, ng, 32] (to_panels of quantize_int8)."""
    lib = cpu.library()
    assert lib is not None
    fmt, scale_bf16 = _codes(panels, scales)
    x, bias = x.contiguous(), None if bias is None else bias.contiguous()  # held for the call
    m, k = x.shape
    assert panels.shape[1] == k and x.dtype == torch.float32
    out = x.new_empty(m, n)
    lib.hagmoe_linear_q(
        _addr(x), _addr(panels), _addr(scales), _addr(bias),
        _addr(out), m, k, n, group, fmt, scale_bf16, torch.get_num_threads(),
    )  # fmt: skip
    return out


def moe_swiglu_q(
    x: Tensor,
    experts: Tensor,
    scores: Tensor,
    panels: tuple[Tensor, Tensor],
    scales: tuple[Tensor, Tensor] | None,
    groups: tuple[int, int],
) -> Tensor:
    """sum_k scores[t, k] * E_{experts[t, k]}(x[t]) for x [T, d], experts / scores [T, K]
    (expert -1: none) -> [T, d], the experts as to_expert_panels made them from bf16 weights
    (scales None) or from int8 weights and their scales (groups: over d for w1 / w2, over F
    for w3)."""
    lib = cpu.library()
    assert lib is not None
    gate_up, down = panels
    gu_scales, down_scales = scales if scales is not None else (None, None)
    fmt, scale_bf16 = _codes(gate_up, gu_scales)
    assert down.is_contiguous()
    num_experts, _, d, _ = gate_up.shape
    ffn = down.shape[2]
    tokens, k = experts.shape
    x, experts, scores = x.contiguous(), experts.contiguous(), scores.contiguous()  # held
    out = torch.zeros_like(x)  # [T, d]
    status = lib.hagmoe_moe_swiglu_q(
        _addr(x), _addr(experts), _addr(scores),
        tokens, k, _addr(gate_up), _addr(gu_scales), _addr(down),
        _addr(down_scales), _addr(out), num_experts, d, ffn, *groups, fmt, scale_bf16,
        torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise MemoryError(f"MoE kernel scratch for {tokens} x {k} pairs")
    return out
