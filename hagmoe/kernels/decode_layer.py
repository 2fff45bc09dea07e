"""One call per decoder layer, or per model, for decode steps of the standard top-k family
(decode_layer.c): the packed weights are described once, in C structs that keep their
addresses, and each step passes its rows' positions and cache slots once for all layers.

Legend: B decode rows (one per sequence), d hidden size, hd head dim, nb blocks per sequence,
K experts per token, L layers, V vocab.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch
from torch import Tensor

from hagmoe.kernels import cpu
from hagmoe.kernels.packed import PackedExperts, PackedLinear
from hagmoe.kernels.tuning import tuning

_P, _I64, _I32, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float
FORMAT_CODES = {"float32": 0, "bfloat16": 1, "int8": 2}


class _Weight(ctypes.Structure):
    _fields_ = [
        ("panels", _P), ("scales", _P), ("bias", _P), ("n", _I64), ("k", _I64),
        ("group", _I64), ("fmt", _I32), ("scale_bf16", _I32),
    ]  # fmt: skip


class _Experts(ctypes.Structure):
    _fields_ = [
        ("gate_up", _P), ("gate_up_scales", _P), ("down", _P), ("down_scales", _P),
        ("experts", _I64), ("d", _I64), ("F", _I64), ("group_d", _I64), ("group_F", _I64),
        ("fmt", _I32), ("scale_bf16", _I32),
    ]  # fmt: skip


class _Layer(ctypes.Structure):
    _fields_ = [
        ("attn_norm_w", _P), ("attn_norm_b", _P), ("moe_norm_w", _P), ("moe_norm_b", _P),
        ("qkv", _Weight), ("o", _Weight), ("gate", _Weight), ("experts", _Experts),
        ("heads", _I64), ("kv_heads", _I64), ("hd", _I64), ("top_k", _I64), ("window", _I64),
        ("norm_eps", _F32), ("normalize_topk", _I32), ("rope", _I32),
    ]  # fmt: skip


class _Model(ctypes.Structure):
    _fields_ = [
        ("layers", _P), ("num_layers", _I64), ("norm_w", _P), ("norm_b", _P), ("head", _Weight),
        ("norm_eps", _F32),
    ]  # fmt: skip


class _Rows(ctypes.Structure):
    _fields_ = [
        ("cos", _P), ("sin", _P), ("slot_mapping", _P), ("block_table", _P), ("query_pos", _P),
        ("batch", _I64), ("blocks_per_seq", _I64), ("block_size", _I64), ("threads", _I32),
    ]  # fmt: skip


def _addr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _scale_bf16(scales: Tensor | None) -> int:
    return int(scales is not None and scales.dtype == torch.bfloat16)


def _weight(w: PackedLinear, bias: Tensor | None) -> _Weight:
    return _Weight(
        _addr(w.panels), _addr(w.scales), _addr(bias), w.n, w.k, w.group,
        FORMAT_CODES[w.fmt.dtype], _scale_bf16(w.scales),
    )  # fmt: skip


def _experts(e: PackedExperts, d: int, ffn: int) -> _Experts:
    gate_up, down = e.panels
    gu_scales, down_scales = e.scales if e.scales is not None else (None, None)
    return _Experts(
        _addr(gate_up), _addr(gu_scales), _addr(down), _addr(down_scales), e.num_experts, d,
        ffn, *e.groups, FORMAT_CODES[e.fmt.dtype], _scale_bf16(gu_scales),
    )  # fmt: skip


@dataclass(slots=True)
class DecodeRows:
    """A decode step's rows for every layer: positions' cos / sin [B, hd] (None without rope),
    slot_mapping [B], block_table [B, nb], query_pos [B] (the tensors stay referenced here)."""

    tensors: tuple[Tensor | None, ...]
    struct: _Rows

    @classmethod
    def build(
        cls,
        rope: tuple[Tensor, Tensor] | None,
        slot_mapping: Tensor,
        block_table: Tensor,
        query_pos: Tensor,
        block_size: int,
    ) -> DecodeRows:
        cos, sin = (t.contiguous() for t in rope) if rope is not None else (None, None)
        tensors = (cos, sin, slot_mapping.contiguous(), block_table.contiguous(),
                   query_pos.reshape(-1).contiguous())  # fmt: skip
        struct = _Rows(
            *(_addr(t) for t in tensors), block_table.shape[0], block_table.shape[1], block_size,
            torch.get_num_threads(),
        )  # fmt: skip
        return cls(tensors, struct)


@dataclass(slots=True, eq=False)
class TopkDecodeLayer:
    """A top-k decoder layer's weights for hagmoe_topk_decode_layer; it holds the tensors whose
    addresses the struct keeps (norm weights and biases, the packed q/k/v, o, gate, experts)."""

    tensors: tuple[object, ...]
    struct: _Layer
    top_k: int
    float32: bool  # the weights' format

    @classmethod
    def build(
        cls,
        norms: tuple[tuple[Tensor, Tensor | None], tuple[Tensor, Tensor | None]],
        qkv: tuple[PackedLinear, Tensor | None],
        o_proj: tuple[PackedLinear, Tensor | None],
        gate: PackedLinear,
        experts: PackedExperts,
        sizes: tuple[int, int, int, int, int],
        norm_eps: float,
        normalize_topk: bool,
        rope: bool,
    ) -> TopkDecodeLayer:
        """sizes: heads, kv_heads, head_dim, top_k, sliding window (0: none); norms (weight,
        bias or None for RMSNorm) before attention and before the experts."""
        (attn_w, attn_b), (moe_w, moe_b) = norms
        heads, kv_heads, hd, top_k, window = sizes
        d, ffn = o_proj[0].n, experts.panels[1].shape[2]
        struct = _Layer(
            _addr(attn_w), _addr(attn_b), _addr(moe_w), _addr(moe_b), _weight(*qkv),
            _weight(*o_proj), _weight(gate, None), _experts(experts, d, ffn), heads, kv_heads,
            hd, top_k, window, norm_eps, int(normalize_topk), int(rope),
        )  # fmt: skip
        tensors = (attn_w, attn_b, moe_w, moe_b, qkv, o_proj, gate, experts)
        return cls(tensors, struct, top_k, qkv[0].fmt.is_float32)

    def takes(self, rows: int) -> bool:
        """Whether a decode step of `rows` rows runs here (float32 weights: while the kernels
        beat MKL on this machine, tuning)."""
        return not self.float32 or rows <= tuning().panel_rows

    def __call__(self, x: Tensor, rows: DecodeRows, cache: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, d] -> the layer's output [B, d] (a new tensor), the chosen experts and their
        scores [B, K]; each row's K, V written into cache at its slot."""
        lib = cpu.library()
        assert lib is not None and cache.is_contiguous() and cache.dtype == torch.float32
        x = x.contiguous()
        b = x.shape[0]
        out, scores = x.new_empty(x.shape), x.new_empty(b, self.top_k)
        chosen = torch.empty(b, self.top_k, dtype=torch.int64)
        status = lib.hagmoe_topk_decode_layer(
            ctypes.byref(self.struct), ctypes.byref(rows.struct), x.data_ptr(), out.data_ptr(),
            cache.data_ptr(), chosen.data_ptr(), scores.data_ptr(),
        )  # fmt: skip
        if status != 0:
            raise MemoryError(f"decode layer scratch for {b} rows")
        return out, chosen, scores


@dataclass(slots=True, eq=False)
class TopkDecodeModel:
    """Every layer of a top-k model, its final norm and its head for hagmoe_topk_decode_model;
    it holds what the struct's addresses point to (the layers' array and the tensors)."""

    layers: tuple[TopkDecodeLayer, ...]
    tensors: tuple[object, ...]
    structs: ctypes.Array[_Layer]
    struct: _Model
    vocab: int

    @classmethod
    def build(
        cls,
        layers: tuple[TopkDecodeLayer, ...],
        norm: tuple[Tensor, Tensor | None],
        head: PackedLinear,
        norm_eps: float,
    ) -> TopkDecodeModel:
        """norm: the final norm's weight and bias (None for RMSNorm); head: the packed [V, d]."""
        structs = (_Layer * len(layers))(*(layer.struct for layer in layers))
        struct = _Model(
            ctypes.addressof(structs), len(layers), _addr(norm[0]), _addr(norm[1]),
            _weight(head, None), norm_eps,
        )  # fmt: skip
        return cls(layers, (*norm, head), structs, struct, head.n)

    def takes(self, rows: int) -> bool:
        """Whether a decode step of `rows` rows runs here (TopkDecodeLayer.takes)."""
        return self.layers[0].takes(rows)

    def __call__(
        self, x: Tensor, rows: DecodeRows, caches: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, d] embedded rows (contiguous, overwritten) -> logits [B, V], every layer's
        chosen experts and scores [L, B, K]; each layer's K, V written into its cache
        (caches[l]) at the rows' slots."""
        lib = cpu.library()
        assert lib is not None and len(caches) == len(self.layers)
        assert x.is_contiguous() and x.dtype == torch.float32
        assert all(c.is_contiguous() and c.dtype == torch.float32 for c in caches)
        b, k = x.shape[0], self.layers[0].top_k
        logits = x.new_empty(b, self.vocab)
        scores = x.new_empty(len(self.layers), b, k)
        chosen = torch.empty(len(self.layers), b, k, dtype=torch.int64)
        addresses = (_P * len(caches))(*(c.data_ptr() for c in caches))
        status = lib.hagmoe_topk_decode_model(
            ctypes.byref(self.struct), ctypes.byref(rows.struct), x.data_ptr(), addresses,
            logits.data_ptr(), chosen.data_ptr(), scores.data_ptr(),
        )  # fmt: skip
        if status != 0:
            raise MemoryError(f"decode model scratch for {b} rows")
        return logits, chosen, scores
