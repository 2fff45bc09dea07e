"""Weights held only in the CPU kernels' packed form (float32, bfloat16 or int8 panels), for
serving: a module that holds one of these has dropped its unpacked parameter, so packing does
not double the weights. Where the kernels cannot run (autograd, tracing, another device or
dtype, no compiler), the weights are unpacked for that call and torch computes as before.

Legend: m rows, n output columns, k inner size, P = ceil(n / 32) panels, ng groups a row,
T tokens, K experts a token, E experts, F expert FFN size, d hidden size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hagmoe.kernels import cpu, quant
from hagmoe.kernels.tuning import moe_kernel_wins, panels_matmul, tuning
from hagmoe.quantization.format import WeightFormat


def _stored(weight: Tensor, fmt: WeightFormat, group: int) -> tuple[Tensor, Tensor | None]:
    """weight [..., n, k] in the format: (values, int8 scales [..., n, ng] or None)."""
    if fmt.dtype == "int8":
        return quant.quantize_int8(weight, group, fmt.torch_scale_dtype)
    return weight.detach().to(fmt.torch_dtype), None


@dataclass(slots=True, eq=False)
class PackedLinear:
    """A linear weight [n, k] as panels [P, k, 32] of the format (int8: scales [P, ng, 32])."""

    fmt: WeightFormat
    n: int
    k: int
    group: int  # int8: inner indices per scale; else 0
    panels: Tensor
    scales: Tensor | None

    @classmethod
    def from_weight(cls, weight: Tensor, fmt: WeightFormat) -> PackedLinear:
        """Quantise (or round, or copy) weight [n, k] and pack it."""
        k = weight.shape[1]
        group = fmt.group_for(k) if fmt.dtype == "int8" else 0
        return cls.from_stored(fmt, *_stored(weight, fmt, group), group)

    @classmethod
    def from_stored(
        cls, fmt: WeightFormat, values: Tensor, scales: Tensor | None, group: int
    ) -> PackedLinear:
        """Pack values [n, k] already in the format (int8: with scales [n, ng])."""
        n, k = values.shape
        packed_scales = None if scales is None else quant.to_panels(scales)
        return cls(fmt, n, k, group, quant.to_panels(values), packed_scales)

    def stored(self) -> tuple[Tensor, Tensor | None]:
        """The weight as the format stores it: values [n, k] (and int8 scales [n, ng])."""
        scales = None if self.scales is None else quant.from_panels(self.scales, self.n)
        return quant.from_panels(self.panels, self.n), scales

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The weight [n, k] the kernels compute with, in `dtype`."""
        values, scales = self.stored()
        if scales is not None:
            values = quant.dequantize_int8(values, scales, self.group)
        weight = values.to(dtype)
        # one panel packed under inference_mode comes back as a view autograd cannot save
        if weight.is_inference() and not torch.is_inference_mode_enabled():
            weight = weight.clone()
        return weight

    def rows(self, ids: Tensor) -> Tensor:
        """Rows `ids` [T] of the weight [T, k] in float32 (a tied embedding's lookup)."""
        panel, lane = ids // cpu.PANEL, ids % cpu.PANEL
        values = self.panels[panel, :, lane].float()  # [T, k]
        if self.scales is None:
            return values
        scales = self.scales[panel, :, lane].float()  # [T, ng]
        return values * scales.repeat_interleave(self.group, dim=-1)[:, : self.k]

    @property
    def nbytes(self) -> int:
        extra = 0 if self.scales is None else self.scales.nbytes
        return self.panels.nbytes + extra

    def __call__(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """x [..., k] @ weight^T (+ bias [n]) -> [..., n]."""
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.k)
        if not cpu.enabled_for(flat):
            return F.linear(x, self.dequantize(x.dtype), bias)
        if not self.fmt.is_float32:
            out = quant.linear_q(flat, self.panels, self.scales, self.n, self.group, bias)
        elif flat.shape[0] <= tuning().panel_rows:
            out = cpu.linear(flat, self.panels, self.n, bias)
        else:
            out = panels_matmul(flat, self.panels, self.n)
            out = out if bias is None else out + bias
        return out.view(*lead, self.n)


def fuse(parts: Sequence[PackedLinear]) -> PackedLinear | None:
    """One PackedLinear computing `parts` side by side (x @ [w_0; w_1; ...]^T): their panels
    (and scales) concatenated, each part then holding views into them, so the weights stay
    held once. None where the parts differ in format, inner size or group, or a part before
    the last ends inside a panel."""
    first = parts[0]
    same = all((p.fmt, p.k, p.group) == (first.fmt, first.k, first.group) for p in parts)
    if not same or any(p.n % cpu.PANEL for p in parts[:-1]):
        return None
    panels = torch.cat([p.panels for p in parts])  # [sum P, k, 32]
    part_scales = [p.scales for p in parts if p.scales is not None]
    scales = torch.cat(part_scales) if part_scales else None  # [sum P, ng, 32]
    start = 0
    for p in parts:
        end = start + p.panels.shape[0]
        p.panels = panels[start:end]
        p.scales = None if scales is None else scales[start:end]
        start = end
    return PackedLinear(first.fmt, sum(p.n for p in parts), first.k, first.group, panels, scales)


@dataclass(slots=True, eq=False)
class PackedExperts:
    """One layer's SwiGLU experts w1 / w2 [E, F, d], w3 [E, d, F] in the MoE kernels' layout
    (quant.to_expert_panels): gate_up [E, F/16, d, 32], down [E, d/32, F, 32] of the format, and
    for int8 their scales [E, F/16, ceil(d / groups[0]), 32] and [E, d/32, ceil(F / groups[1]), 32]."""

    fmt: WeightFormat
    groups: tuple[int, int]  # int8: inner indices per scale of w1 / w2 (over d), w3 (over F)
    panels: tuple[Tensor, Tensor]
    scales: tuple[Tensor, Tensor] | None

    @staticmethod
    def fits(ffn: int, hidden: int) -> bool:
        """Whether the kernels take experts of FFN size `ffn` and hidden size `hidden`."""
        return ffn % cpu.LANES == 0 and hidden % cpu.PANEL == 0

    @classmethod
    def from_weights(cls, w1: Tensor, w2: Tensor, w3: Tensor, fmt: WeightFormat) -> PackedExperts:
        """Quantise (or round, or copy) the experts and pack them."""
        _, f, d = w1.shape
        groups = (fmt.group_for(d), fmt.group_for(f)) if fmt.dtype == "int8" else (0, 0)
        per_weight = (groups[0], groups[0], groups[1])
        stored = [_stored(w, fmt, g) for w, g in zip((w1, w2, w3), per_weight, strict=True)]
        values = [v for v, _ in stored]
        scales = [s for _, s in stored]
        return cls.from_stored(fmt, values, None if scales[0] is None else scales, groups)

    @classmethod
    def from_stored(
        cls,
        fmt: WeightFormat,
        values: list[Tensor],
        scales: list[Tensor | None] | None,
        groups: tuple[int, int],
    ) -> PackedExperts:
        """Pack w1, w2, w3 already in the format (int8: with scales [E, F, ng_d], [E, F, ng_d],
        [E, d, ng_F])."""
        panels = quant.to_expert_panels(*values)
        if scales is None:
            return cls(fmt, groups, panels, None)
        s1, s2, s3 = scales
        assert s1 is not None and s2 is not None and s3 is not None
        return cls(fmt, groups, panels, quant.to_expert_panels(s1, s2, s3))

    def stored(self) -> tuple[list[Tensor], list[Tensor] | None]:
        """w1, w2, w3 as the format stores them (and their int8 scales)."""
        values = list(quant.from_expert_panels(*self.panels))
        if self.scales is None:
            return values, None
        return values, list(quant.from_expert_panels(*self.scales))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
        """w1, w2 [E, F, d], w3 [E, d, F] as the kernels compute with them, in `dtype`."""
        values, scales = self.stored()
        if scales is None:
            w1, w2, w3 = (v.to(dtype) for v in values)
        else:
            groups = (self.groups[0], self.groups[0], self.groups[1])
            w1, w2, w3 = (
                quant.dequantize_int8(v, s, g).to(dtype)
                for v, s, g in zip(values, scales, groups, strict=True)
            )
        return w1, w2, w3

    @property
    def num_experts(self) -> int:
        return self.panels[0].shape[0]

    @property
    def nbytes(self) -> int:
        tensors = [*self.panels, *(self.scales or ())]
        return sum(t.nbytes for t in tensors)

    def runs(self, x: Tensor, experts: Tensor) -> bool:
        """Whether the kernel serves this call (float32: while experts see few pairs each, up to
        this machine's crossover, tuning)."""
        if not cpu.enabled_for(x):
            return False
        if not self.fmt.is_float32:
            return True
        return moe_kernel_wins(experts, self.num_experts)

    def __call__(self, x: Tensor, experts: Tensor, scores: Tensor) -> Tensor:
        """sum_k scores[t, k] * E_{experts[t, k]}(x[t]) for x [T, d], experts / scores [T, K];
        only where `runs(x, experts)`."""
        if self.fmt.is_float32:
            return cpu.moe_swiglu(x, experts, scores, *self.panels)
        return quant.moe_swiglu_q(x, experts, scores, self.panels, self.scales, self.groups)
